"""Two models side by side: the checks a pair must pass, texts decoded from the pair with per-token
divergences (contrastive decoding and plain sampling from one side), and prompts scored by the
divergence of the continuations they elicit.

Divergences are in nats: ``kl_a_b`` = KL(P_a ‖ P_b), ``kl_b_a`` and ``js``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lmdelta import LmdeltaError
from lmdelta.decoding import Combination, Sampling, decode_combined
from lmdelta.divergence import divergences
from lmdelta.generation import check_context
from lmdelta.models import check_embeddings_in_memory, input_device, left_pad, load_model, pad_id, read_fingerprint
from lmdelta.seqdiv import SequenceDivergence, prompt_divergences, same_tokenizer
from lmdelta.tokens import TextFormat, cut_at_eos, encode_prompt, eos_ids

log = logging.getLogger(__name__)

DIVERGENCES = ("kl_a_b", "kl_b_a", "js")
Scorer = Callable[[list[dict], int], dict[str, dict]]  # ([{"id", "prompt"}], seed) -> {id: scores}


@dataclass(frozen=True)
class PairDecoding:
    """How texts are decoded from a pair: ``weights`` on the two models' logits (or log-probabilities,
    ``space``) with an optional plausibility cut on model a (contrastive decoding), or (1, 0) / (0, 1)
    to sample from one side; ``samples`` texts per prompt, seeded per batch."""

    weights: tuple[float, float]
    space: str
    plausibility_alpha: float | None
    samples: int
    max_new_tokens: int
    temperature: float | None
    top_p: float
    top_k: int
    seed: int
    batch_size: int
    include_prompt: bool = False


def record_pair(prov, model_dirs) -> None:
    """The pair's models as the provenance inputs ``model_a`` and ``model_b``: folder and weights digest."""
    for side, d in zip(("a", "b"), model_dirs):
        prov.inputs[f"model_{side}"] = {"path": str(d), "fingerprint": read_fingerprint(d)["digest"]}


def load_pair(model_dirs, load_options) -> tuple[list, list]:
    """([model a, model b], [tokenizer a, tokenizer b]), each model loaded with its own options."""
    loaded = [load_model(d, **o) for d, o in zip(model_dirs, load_options)]
    return [m for m, _ in loaded], [t for _, t in loaded]


def check_same_tokenizer(tok_a, tok_b, pair: str, stage: str = "this stage") -> None:
    """Refuse a pair with two tokenizers in a stage that compares next-token distributions."""
    if not same_tokenizer(tok_a, tok_b):
        raise LmdeltaError(
            f"pairs.{pair}: the two models have different tokenizers, and {stage} compares their next-token "
            "distributions over one vocabulary, which two tokenizers do not share (no exact mapping exists); "
            "pair models that share a tokenizer here. Across tokenizers use the search, the hard prompts "
            "(pairs.<name>.soft_prompts_from), the comparator and results/textscores/"
        )


def generate_pair(models, toks, prompts: list[dict], p: PairDecoding, *, formats: list[dict]) -> list[dict]:
    """Contrastive texts with per-token divergences, logprobs and top tokens; one dict per text."""
    import torch

    # each prompt encoded once per model; every one checked against the context before decoding anything
    fmts = [f if isinstance(f, TextFormat) else TextFormat.from_dict(f) for f in formats]
    encoded = [[encode_prompt(tok, q["prompt"], fmt) for q in prompts] for tok, fmt in zip(toks, fmts)]
    for model, tok, seqs in zip(models, toks, encoded):
        check_context(model, seqs, p.max_new_tokens, tok)
    device = input_device(models[0])
    eos = eos_ids(*zip(models, toks))  # a text ends at an EOS id either model declares
    pad = pad_id(toks[0])
    comb = Combination(weights=tuple(p.weights), space=p.space, plausibility_alpha=p.plausibility_alpha, expert=0)
    sampling = Sampling(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k)
    jobs = [(i, s) for i in range(len(prompts)) for s in range(p.samples)]
    results = []
    for b in range(0, len(jobs), p.batch_size):
        chunk = jobs[b : b + p.batch_size]
        inputs = []
        for seqs in encoded:
            ids, mask = left_pad([seqs[i] for i, _ in chunk], pad)
            inputs.append((ids.to(device), mask.to(device)))
        prompt_div = _prompt_divergences(models, inputs) if p.include_prompt else None
        steps: list[dict] = []

        def record(step, logits, chosen, steps=steps):  # this batch's list, bound now
            d = divergences(logits[0], logits[1], ("a", "b"))
            lp = [torch.log_softmax(z.float(), -1) for z in logits]
            top = [torch.topk(x, 3, dim=-1) for x in lp]
            steps.append(
                {
                    **{k: v.cpu().numpy() for k, v in d.items()},
                    "lp_a": lp[0].gather(1, chosen[:, None])[:, 0].cpu().numpy(),
                    # chosen tokens come from the rows both models share, so they index either model
                    "lp_b": lp[1].gather(1, chosen[:, None])[:, 0].cpu().numpy(),
                    "top_a": (top[0].indices.cpu().numpy(), top[0].values.exp().cpu().numpy()),
                    "top_b": (top[1].indices.cpu().numpy(), top[1].values.exp().cpu().numpy()),
                }
            )

        seed = p.seed + b
        with torch.inference_mode():
            new = (
                decode_combined(
                    models,
                    inputs,
                    comb=comb,
                    max_new_tokens=p.max_new_tokens,
                    sampling=sampling,
                    eos_ids=eos,
                    pad_id=pad,
                    seed=seed,
                    on_step=record,
                )
                .cpu()
                .tolist()
            )
        for r, ((i, s), row) in enumerate(zip(chunk, new)):
            q = prompts[i]
            n, _ = cut_at_eos(row, eos)
            tokens = [toks[0].decode([t]) for t in row[:n]]
            rec = {
                "prompt_id": q["id"],
                "sample": s,
                "prompt": q["prompt"],
                "seed": seed,
                "n_tokens": n,
                "text": toks[0].decode(row[:n], skip_special_tokens=True),
                "tokens": tokens,
            }
            for k in DIVERGENCES:
                rec[k] = [float(steps[t][k][r]) for t in range(n)]
                rec[f"mean_{k}"] = float(np.mean(rec[k])) if n else math.nan
            if prompt_div is not None:
                ids, mask = inputs[0][0][r].cpu(), inputs[0][1][r].cpu()
                real = [int(i) for i, k in zip(ids.tolist(), mask.tolist()) if k]
                rec["prompt_tokens"] = [toks[0].decode([t]) for t in real]
                for k in DIVERGENCES:
                    rec[f"prompt_{k}"] = (
                        [float("nan")] + prompt_div[k][r][-(len(real) - 1) :].tolist()
                        if len(real) > 1
                        else [float("nan")]
                    )
            for m in ("a", "b"):
                lps = [float(steps[t][f"lp_{m}"][r]) for t in range(n)]
                rec[f"ppl_{m}"] = float(math.exp(-np.mean(lps))) if n else math.nan
                rec[f"top_{m}"] = [
                    "  ".join(
                        f"{toks[0].decode([int(i)])!r} {v:.2f}"
                        for i, v in zip(steps[t][f"top_{m}"][0][r], steps[t][f"top_{m}"][1][r])
                    )
                    for t in range(n)
                ]
            results.append(rec)
    return results


def _prompt_divergences(models, inputs) -> dict:
    """Teacher-forced divergences on the prompt: entry j of a row predicts prompt token j + 1."""
    import torch

    (ids_a, mask_a), (ids_b, mask_b) = inputs
    if not (torch.equal(ids_a, ids_b) and torch.equal(mask_a, mask_b)):
        raise LmdeltaError(
            "contrastive: include_prompt needs both models to read the same prompt ids; "
            "give both models the same prompt format (chat_template / prompt_format)"
        )
    pos = (mask_a.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = [m(input_ids=ids_a, attention_mask=mask_a, position_ids=pos).logits[:, :-1] for m in models]
    return {k: v.float().cpu().numpy() for k, v in divergences(logits[0], logits[1], ("a", "b")).items()}


def check_compatible(models, toks, pair: str) -> None:
    """Soft prompts live in one embedding space: same hidden size and tokenizer."""
    check_same_tokenizer(toks[0], toks[1], pair, "soft-prompt training")
    for m in models:
        check_embeddings_in_memory(m, "a soft prompt")
    ha, hb = (m.get_input_embeddings().weight.shape[1] for m in models)
    if ha != hb:
        raise LmdeltaError(
            f"pairs.{pair}: hidden sizes differ ({ha} vs {hb}); a soft prompt needs one embedding space: "
            "pair models of the same architecture and size"
        )


def pool_scores(old: dict, new: dict) -> dict:
    """One prompt's scores over the samples of both scorings: each divergence the sample-weighted mean
    (and, for the sequence estimate, its per-continuation mean, and their standard errors as those of a
    weighted mean of two independent estimates). The example (of the first scoring) is kept."""
    n0, n1 = int(old["n_samples"]), int(new["n_samples"])
    keys = [k for d in DIVERGENCES for k in (d, f"{d}_seq") if k in old and k in new]
    mean = {k: (n0 * old[k] + n1 * new[k]) / (n0 + n1) for k in keys}
    se = {
        f"{k}_se": math.hypot(n0 * old[f"{k}_se"], n1 * new[f"{k}_se"]) / (n0 + n1)
        for k in keys
        if f"{k}_se" in old and f"{k}_se" in new
    }
    return {**old, **mean, **se, "n_samples": n0 + n1}


def normalise(prompt: str) -> str:
    """The deduplication key: case-folded, spaces collapsed, outer quotes and final punctuation removed."""
    key = " ".join(prompt.casefold().split())
    return key.strip("\"'`“”‘’ ").rstrip(".?!;: ")


def pair_scorer(
    models,
    toks,
    formats: list[dict],
    *,
    divergence: str,
    sample_from: str,
    samples: int,
    max_new_tokens: int,
    temperature: float | None,
    top_p: float,
    top_k: int,
    batch_size: int,
) -> Scorer:
    """A scorer of prompts: ``samples`` continuations of each prompt sampled from one model of the pair
    (``sample_from``), the per-token divergences averaged over each continuation, then over its samples;
    the example is the continuation with the highest ``divergence``.

    A pair whose tokenizers differ has no per-token divergence: it is scored by the tokenizer-free
    sequence estimate (``lmdelta.seqdiv``: nats per byte, with Monte-Carlo standard errors), which
    samples from the side(s) the divergence needs and only at temperature 1 with no top-p / top-k."""
    if not same_tokenizer(toks[0], toks[1]):
        return sequence_scorer(
            models,
            toks,
            formats,
            divergence=divergence,
            samples=samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            batch_size=batch_size,
        )
    weights = (1.0, 0.0) if sample_from == "a" else (0.0, 1.0)

    def score(items: list[dict], seed: int) -> dict[str, dict]:
        p = PairDecoding(
            weights=weights,
            space="logit",
            plausibility_alpha=None,
            samples=samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            batch_size=batch_size,
        )
        records = generate_pair(
            models, toks, [{"id": x["id"], "prompt": x["prompt"]} for x in items], p, formats=formats
        )
        by_id: dict[str, list[dict]] = {}
        for rec in records:
            by_id.setdefault(rec["prompt_id"], []).append(rec)
        out = {}
        for pid, recs in by_id.items():
            best = max(recs, key=lambda r: r[f"mean_{divergence}"])
            out[pid] = {
                **{k: float(np.nanmean([r[f"mean_{k}"] for r in recs])) for k in DIVERGENCES},
                "example": best["text"],
                "n_samples": len(recs),
            }
        return out

    return score


def divergence_method(toks) -> dict[str, str]:
    """How a pair's divergences are measured (recorded in provenance): per token along the sampled
    continuations when the pair shares a tokenizer, else by sequence log-ratios per byte."""
    if same_tokenizer(toks[0], toks[1]):
        return {"divergence_method": "token", "divergence_units": "nats per token"}
    return {
        "divergence_method": "sequence",
        "divergence_units": "nats per byte",
        # each model's probability of one tokenization of the text, not of the text: a few percent off,
        # either way, against the exact divergence (bench/seqdiv_bias.py, docs/tokenizers.md)
        "divergence_estimate": "approximation",
    }


def sequence_scorer(
    models,
    toks,
    formats,
    *,
    divergence: str,
    samples: int,
    max_new_tokens: int,
    temperature,
    top_p: float,
    top_k: int,
    batch_size: int,
) -> Scorer:
    """The scorer of ``pair_scorer`` for a pair with two tokenizers (``lmdelta.seqdiv``)."""
    if temperature != 1.0 or top_p != 1.0 or top_k != 0:
        raise LmdeltaError(
            "the two models have different tokenizers, so prompts are scored by sequence log-ratios, which need "
            f"samples of the models themselves: set temperature 1.0, top_p 1.0, top_k 0 (got {temperature}, {top_p}, {top_k})"
        )
    if divergence == "js":
        log.warning(
            "divergence js across tokenizers: the JS of whole texts of two families sits near its bound ln 2 and "
            "ranks little; kl_a_b or kl_b_a rank prompts (docs/tokenizers.md)"
        )
    p = SequenceDivergence(samples=samples, max_new_tokens=max_new_tokens, batch_size=batch_size)

    def score(items: list[dict], seed: int) -> dict[str, dict]:
        est = prompt_divergences(
            models, toks, formats, [x["prompt"] for x in items], p, divergence=divergence, seed=seed
        )
        return {x["id"]: {k: v for k, v in e.items() if k != "records"} for x, e in zip(items, est)}

    return score
