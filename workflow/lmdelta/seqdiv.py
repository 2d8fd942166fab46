"""Tokenizer-free divergence between two models: sequence log-ratios of sampled continuations.

For a prompt c, KL(P_a ‖ P_b) over continuations is E_{x ~ p_a(.|c)}[log p_a(x|c) − log p_b(x|c)]. It is
estimated from ``samples`` continuations x sampled from a (temperature 1, no top-p or top-k: the
estimate needs samples of p_a itself), each scored by both models, each reading the prompt in its own
format and the continuation under its own tokenizer. ``kl_b_a`` samples from b; ``js`` uses both sample
sets: JS = ½ E_a[log p_a − log m] + ½ E_b[log p_b − log m] with m = ½ (p_a + p_b) of the sequence.

What a continuation is: up to ``max_new_tokens`` tokens of the sampling model, cut at its first EOS
(then the EOS is scored too: the other model scores its own first EOS id after the text). When the two
tokenizers are the same, the other model scores the very sampled ids, and the estimate is exact in
expectation: by the chain rule (the stopping rule is a stopping time) it equals the sum over positions
of the per-token KL along a's samples, which ``tests/test_seqdiv.py`` checks.

Across tokenizers it is an approximation (provenance ``divergence_estimate: approximation``):

- each model's term is the probability of one tokenization of the text (the sampled ids; the other
  model's own tokenization of the text), not of the text, which sums over every tokenization. Both
  fall short of it: the other model's shortfall raises the KL, the sampler's lowers it. Measured
  against the exact divergence of tiny models whose texts can be enumerated (tests/enumerable.py,
  bench/seqdiv_bias.py): a few percent, either way (docs/tokenizers.md).
- a text cut at ``max_new_tokens`` may end inside one of the other tokenizer's tokens (its
  tokenization of the longer text merges across the cut). The sampler draws ``LOOKAHEAD`` more tokens
  and the text is cut back to the last offset where a token of both tokenizations of the longer text
  ends (``shared_cut``): both models score the same text, and neither a token it would not have read.

JS of whole texts is bounded by ln 2 per continuation and sits near it as soon as two models put
nearly disjoint mass on long texts (two families always do): across tokenizers rank by a KL.

Units: ``kl_a_b`` etc. are nats per byte of continuation text (the mean log-ratio over the mean UTF-8
length, as bits per byte is; JS's two halves summed over both sample sets' bytes, a ratio of sums),
comparable whatever the tokenizers; ``*_seq`` are nats per continuation; ``*_se`` are Monte-Carlo
standard errors (delta method for the ratio); ``n_samples`` per side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lmdelta.decoding import Sampling, sub_seed
from lmdelta.generation import check_context, generate_texts
from lmdelta.models import pad_id
from lmdelta.scoring import score_sequences
from lmdelta.tokens import TextFormat, encode_prompt, eos_ids

SIDES = {"kl_a_b": ("a",), "kl_b_a": ("b",), "js": ("a", "b")}
LOOKAHEAD = 8  # tokens sampled past a cut text's end, across tokenizers (shared_cut)


@dataclass(frozen=True)
class SequenceDivergence:
    """How continuations are sampled for the estimate (temperature 1, untruncated: fixed by the method)."""

    samples: int
    max_new_tokens: int
    batch_size: int


def same_tokenizer(tok_a, tok_b) -> bool:
    return tok_a.get_vocab() == tok_b.get_vocab()


def sequence_logprobs(
    model, tok, prompts: list[list[int]], conts: list[list[int]], *, batch_tokens: int = 4096
) -> np.ndarray:
    """log p(cont | prompt) per item (nats, float64): teacher-forced through ``score_sequences``."""
    seqs = [list(p) + list(c) for p, c in zip(prompts, conts)]
    longest = max((len(s) for s in seqs), default=2)
    scores = score_sequences(
        model,
        seqs,
        max_length=longest,
        stride=longest,
        batch_tokens=max(batch_tokens, longest),
        pad_token_id=pad_id(tok),
    )
    # scores[i].logprob[j] is id j + 1 of the sequence: the continuation starts at id len(prompt)
    return np.array([float(np.sum(sc.logprob[len(p) - 1 :], dtype=np.float64)) for sc, p in zip(scores, prompts)])


def token_ends(tok, ids: list[int], text: str) -> dict[int, int]:
    """Where in ``text`` a prefix of ``ids`` ends: character offset -> the fewest tokens that spell
    ``text`` up to it (0 -> 0). A prefix that does not decode to a prefix of the text ends nowhere, nor
    does one that ends in U+FFFD (a byte token inside a character decodes to it)."""
    out = {0: 0}
    for k in range(1, len(ids) + 1):
        t = tok.decode(ids[:k], skip_special_tokens=True)
        if text.startswith(t) and not t.endswith("\ufffd"):
            out.setdefault(len(t), k)
    return out


def shared_cut(tok, ids: list[int], tok_other, text: str, limit: int) -> tuple[str, list[int], list[int]]:
    """A text cut at ``max_new_tokens`` may end inside one of the other tokenizer's tokens (its
    tokenization of the longer text would merge across the cut), which that model would then score as
    complete. ``ids`` and ``text`` run past the cut (``LOOKAHEAD`` more tokens): the text is cut at the
    last offset up to ``limit`` (the cut's) where a token of both tokenizations of the longer text ends.
    Returns the cut text, the sampled ids that spell it, and the other tokenizer's tokens of it (a prefix
    of its tokenization of the longer text): both models score the same text."""
    theirs = tok_other(text, add_special_tokens=False).input_ids
    mine, other = token_ends(tok, ids, text), token_ends(tok_other, theirs, text)
    cut = max(c for c in set(mine) & set(other) if c <= limit)
    return text[:cut], list(ids[: mine[cut]]), list(theirs[: other[cut]])


def sample_and_score(
    models, toks, formats, prompts: list[str], side: int, p: SequenceDivergence, *, seed: int
) -> list[dict]:
    """``p.samples`` continuations of each prompt sampled from model ``side``, scored by both models:
    one dict per continuation with ``side``, ``prompt`` (index), ``sample``, ``text``, ``n_bytes``,
    ``lp_a``, ``lp_b`` (nats). Batch b is seeded ``seed + b`` (``generate_texts``)."""
    fmts = [f if isinstance(f, TextFormat) else TextFormat.from_dict(f) for f in formats]
    encoded = [[encode_prompt(tok, q, fmt) for q in prompts] for tok, fmt in zip(toks, fmts)]
    other = 1 - side
    shared = same_tokenizer(toks[0], toks[1])
    for model, tok, seqs in zip(models, toks, encoded):
        check_context(model, seqs, p.max_new_tokens + (0 if shared else LOOKAHEAD), tok)
    jobs = [i for i in range(len(prompts)) for _ in range(p.samples)]
    outs = generate_texts(
        models[side],
        toks[side],
        [encoded[side][i] for i in jobs],
        # across tokenizers, LOOKAHEAD tokens more show where the other tokenizer's tokens end at the cut
        max_new_tokens=p.max_new_tokens + (0 if shared else LOOKAHEAD),
        sampling=Sampling(temperature=1.0),
        seed=seed,
        batch_size=p.batch_size,
    )
    other_eos = eos_ids((models[other], toks[other]))
    texts = [o["text"] for o in outs]
    conts = {side: [o["ids"] for o in outs]}
    if shared:
        conts[other] = conts[side]
    else:
        conts[other] = []
        for k, o in enumerate(outs):
            if o["finish_reason"] == "eos" and o["n_tokens"] <= p.max_new_tokens:
                # a whole text: the other model scores it and its own EOS
                theirs = toks[other](o["text"], add_special_tokens=False).input_ids + list(other_eos[:1])
            else:  # cut at max_new_tokens or before, where a token of each tokenization ends
                texts[k], conts[side][k], theirs = shared_cut(
                    toks[side],
                    o["ids"],
                    toks[other],
                    o["text"],
                    len(toks[side].decode(o["ids"][: p.max_new_tokens], skip_special_tokens=True)),
                )
            conts[other].append(theirs)
    lp = {m: sequence_logprobs(models[m], toks[m], [encoded[m][i] for i in jobs], conts[m]) for m in (side, other)}
    return [
        {
            "side": "ab"[side],
            "prompt": i,
            "sample": k % p.samples,
            "text": texts[k],
            "n_bytes": len(texts[k].encode("utf-8")),
            "lp_a": float(lp[0][k]),
            "lp_b": float(lp[1][k]),
        }
        for k, (i, o) in enumerate(zip(jobs, outs))
    ]


def _ratio(num: np.ndarray, den: np.ndarray) -> tuple[float, float, float, float]:
    """(mean per byte, its MC standard error by the delta method, mean per sequence, its standard error)."""
    n = len(num)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean_seq = float(num.mean())
    se_seq = float(num.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    if den.mean() <= 0:
        return math.nan, math.nan, mean_seq, se_seq
    r = mean_seq / float(den.mean())
    se = float((num - r * den).std(ddof=1) / math.sqrt(n) / den.mean()) if n > 1 else math.nan
    return r, se, mean_seq, se_seq


def _two_sample_ratio(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """(E_a num + E_b num) / (E_a den + E_b den) from two independent samples, and its standard error
    (delta method)."""
    den = float(a[1].mean() + b[1].mean())
    if den <= 0:
        return math.nan, math.nan
    r = float(a[0].mean() + b[0].mean()) / den
    if min(len(a[0]), len(b[0])) < 2:
        return r, math.nan
    var = sum(float((num - r * d).var(ddof=1)) / len(num) for num, d in (a, b))
    return r, math.sqrt(var) / den


def estimates(from_a: list[dict], from_b: list[dict]) -> dict[str, float]:
    """The divergences of one prompt from its continuations sampled from a and from b (either may be
    empty: then the divergences that need it are NaN)."""
    out: dict[str, float] = {}
    la = np.array([[r["lp_a"], r["lp_b"], r["n_bytes"]] for r in from_a], np.float64).reshape(-1, 3)
    lb = np.array([[r["lp_a"], r["lp_b"], r["n_bytes"]] for r in from_b], np.float64).reshape(-1, 3)
    for name, num, den in (
        ("kl_a_b", la[:, 0] - la[:, 1], la[:, 2]),
        ("kl_b_a", lb[:, 1] - lb[:, 0], lb[:, 2]),
    ):
        out[name], out[f"{name}_se"], out[f"{name}_seq"], out[f"{name}_seq_se"] = _ratio(num, den)
    if len(la) and len(lb):
        # log p - log m on each side; the two halves are independent samples
        ha = la[:, 0] - (np.logaddexp(la[:, 0], la[:, 1]) - math.log(2))
        hb = lb[:, 1] - (np.logaddexp(lb[:, 0], lb[:, 1]) - math.log(2))
        _, _, qa, qsa = _ratio(ha, la[:, 2])
        _, _, qb, qsb = _ratio(hb, lb[:, 2])
        out["js_seq"], out["js_seq_se"] = 0.5 * (qa + qb), 0.5 * math.hypot(qsa, qsb)
        # per byte: the ratio of the two halves' sums, ½(E_a h + E_b h) / ½(E_a bytes + E_b bytes), not the
        # mean of two ratios with different denominators
        out["js"], out["js_se"] = _two_sample_ratio((ha, la[:, 2]), (hb, lb[:, 2]))
    else:
        out.update(js=math.nan, js_se=math.nan, js_seq=math.nan, js_seq_se=math.nan)
    out["n_samples"] = max(len(la), len(lb))
    return out


def prompt_divergences(
    models, toks, formats, prompts: list[str], p: SequenceDivergence, *, divergence: str, seed: int
) -> list[dict]:
    """Per prompt: ``estimates`` from the sides ``divergence`` needs (a for kl_a_b, b for kl_b_a, both
    for js), plus ``example`` (the continuation with the largest log-ratio) and ``records``."""
    recs = {
        s: sample_and_score(models, toks, formats, prompts, k, p, seed=sub_seed(seed, k))
        if s in SIDES[divergence]
        else []
        for k, s in enumerate("ab")
    }
    out = []
    for i in range(len(prompts)):
        ra = [r for r in recs["a"] if r["prompt"] == i]
        rb = [r for r in recs["b"] if r["prompt"] == i]
        # the example: the continuation its own model finds most likely relative to the other, per byte
        best = max(
            ra + rb, key=lambda r: (r["lp_a"] - r["lp_b"]) * (1 if r["side"] == "a" else -1) / max(r["n_bytes"], 1)
        )
        out.append({**estimates(ra, rb), "example": best["text"], "records": ra + rb})
    return out
