"""The decoding engine: batched, KV-cached, seeded next-token choice, for one model or several combined.

One loop serves every stage that generates (completions, the planted check, contrastive decoding).
Several models are combined at each step (``Combination``): in logit space the scores are
Σ w_i log p_i (contrastive decoding: weights (1, -1) score log p_tuned − log p_base); in probability
space log Σ w_i p_i (a mixture). An optional plausibility mask keeps only the tokens with
p_expert >= alpha · max p_expert. Each model reads its own prompt (its own format) and keeps its own
KV cache; the chosen token is appended for all. Models must share a tokenizer; output layers of
different sizes are combined on their common leading rows. Why not ``model.generate``: on a CPU its per-step overhead and ``torch.multinomial`` over a
50k vocabulary cost about a third of each step (measured on SmolLM2, batch 40); here the prompt's
logits are computed for its last position only, and sampling is an inverse-CDF draw
(``searchsorted`` on the cumulative distribution) from a seeded ``torch.Generator``.

Sampling rules, applied in this order to the next-token logits (float32): divide by ``temperature``;
keep the ``top_k`` largest (0 = all); keep the smallest set of most probable tokens whose
probability reaches ``top_p`` (1.0 = all; the most probable token is always kept); draw from the
renormalised distribution. ``temperature=None`` is greedy (argmax, ties to the lowest id).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    """``temperature=None`` means greedy decoding (then top_p and top_k do not apply)."""

    temperature: float | None = None
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut

    def __post_init__(self):
        from . import LmdeltaError

        if self.temperature is not None and not self.temperature > 0:
            raise LmdeltaError(f"sampling: temperature {self.temperature} must be > 0; use None for greedy decoding")
        if not 0 < self.top_p <= 1:
            raise LmdeltaError(f"sampling: top_p {self.top_p} must be in (0, 1]; 1.0 disables it")
        if self.top_k < 0:
            raise LmdeltaError(f"sampling: top_k {self.top_k} must be >= 0; 0 disables it")


def filter_logits(z, sampling: Sampling):
    """Temperature, top-k and top-p applied to [B, V] float32 logits; removed tokens get -inf."""
    import torch

    z = z / sampling.temperature
    if sampling.top_k and sampling.top_k < z.shape[-1]:
        kth = torch.topk(z, sampling.top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        probs = torch.softmax(sorted_z, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the more probable tokens
        remove_sorted = before >= sampling.top_p
        remove_sorted[:, 0] = False
        remove = torch.zeros_like(remove_sorted).scatter(1, order, remove_sorted)
        z = z.masked_fill(remove, float("-inf"))
    return z


def choose(logits, sampling: Sampling, generator):
    """Next token per row of [B, V] logits."""
    import torch

    z = logits.float()
    if sampling.temperature is None:
        return z.argmax(dim=-1)
    probs = torch.softmax(filter_logits(z, sampling), dim=-1)
    cdf = torch.cumsum(probs, dim=-1)
    u = torch.rand((z.shape[0], 1), generator=generator, device=z.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp(max=z.shape[-1] - 1)


@dataclass(frozen=True)
class Combination:
    """How several models' next-token distributions make one score (see the module docstring)."""

    weights: tuple[float, ...]
    space: str = "logit"  # logit | prob
    plausibility_alpha: float | None = None
    expert: int = 0


def combine(logits: list, comb: Combination):
    """Combined next-token scores [B, V] (float32; masked tokens -inf) from each model's logits."""
    import torch

    if len(logits) != len(comb.weights):
        raise ValueError(f"{len(logits)} models but {len(comb.weights)} weights")
    v = min(z.shape[-1] for z in logits)
    logp = [torch.log_softmax(z[..., :v].float(), dim=-1) for z in logits]
    if comb.space == "logit":
        scores = sum(w * lp for w, lp in zip(comb.weights, logp))
    elif comb.space == "prob":
        if any(w < 0 for w in comb.weights):
            raise ValueError("probability-space weights must be >= 0")
        scores = torch.logsumexp(torch.stack([lp + math.log(w) for w, lp in zip(comb.weights, logp) if w > 0]), dim=0)
    else:
        raise ValueError(f"space {comb.space!r}: use logit or prob")
    if comb.plausibility_alpha is not None:
        expert = logp[comb.expert]
        keep = expert >= expert.max(dim=-1, keepdim=True).values + math.log(comb.plausibility_alpha)
        scores = scores.masked_fill(~keep, float("-inf"))
    return scores


def accepts_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def cache_arg(model) -> str:
    """transformers >= 5.24 names the KV cache ``cache`` (``past_key_values`` is deprecated); a model with
    its own code (trust_remote_code) may still take the old name."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(out):
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def _prefill(model, ids, mask, embeds=None):
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    extra = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    first = {"input_ids": ids} if embeds is None else {"inputs_embeds": embeds}
    out = model(**first, attention_mask=mask, position_ids=pos, use_cache=True, **extra)
    return cache_of(out), out.logits[:, -1], mask, pos


def decode_combined(
    models: list,
    inputs: list[tuple],
    *,
    comb: Combination | None,
    max_new_tokens: int,
    sampling: Sampling,
    eos_ids: tuple[int, ...] = (),
    pad_id: int,
    seed: int,
    on_step=None,
    suppress: tuple[int, ...] = (),
    sync_every: int | None = None,
):
    """Continue a left-padded batch with one or several models; return the new ids [B, n].

    ``inputs`` holds one (input_ids, attention_mask) per model (each model's own prompt format), or
    (None, attention_mask, inputs_embeds) to start from embeddings (a soft prompt).
    ``comb`` None means a single model sampled from its own logits. ``on_step(step, logits, chosen)``
    is called with each model's next-token logits (the distributions that predict token ``step``)
    and the tokens chosen from them, e.g. to record divergences and each model's logprob.
    ``suppress``: token ids never chosen (e.g. EOS, to get texts of full length). A row is finished
    at the first of ``eos_ids`` it chooses (padded with ``pad_id`` after it).

    Whether every row has finished is a read from the device, which makes the host wait for the GPU;
    it is asked only every ``sync_every`` steps (default 8 on a GPU; 1 on a CPU, where nothing waits
    and extra steps would only cost, and with ``on_step``, whose caller records every step), and the
    steps decoded after the last row finished are cut off, so the result is the same for any
    ``sync_every``.
    """
    import torch

    device = inputs[0][1].device
    gen = torch.Generator(device=device).manual_seed(seed)
    states = [_prefill(m, *inp) for m, inp in zip(models, inputs)]
    cache_args = [cache_arg(m) for m in models]
    finished = torch.zeros(inputs[0][1].shape[0], dtype=torch.bool, device=device)
    stop = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)
    new, all_done = [], []
    every = sync_every or (1 if on_step is not None or device.type == "cpu" else 8)  # a CPU does not wait
    for step in range(max_new_tokens):
        logits = [st[1] for st in states]
        scores = logits[0] if comb is None else combine(logits, comb)
        if suppress:
            scores = scores.float().index_fill(-1, torch.tensor(suppress, device=scores.device), float("-inf"))
        nxt = choose(scores, sampling, gen)
        nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
        if on_step is not None:
            on_step(step, logits, nxt)
        new.append(nxt)
        if len(stop):
            finished |= torch.isin(nxt, stop)
        all_done.append(finished.all())
        if len(new) == max_new_tokens or ((step + 1) % every == 0 and all_done[-1]):
            break
        for i, (model, (past, _, mask, pos)) in enumerate(zip(models, states)):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
            out = model(
                input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, use_cache=True, **{cache_args[i]: past}
            )
            states[i] = (cache_of(out), out.logits[:, -1], mask, pos)
    if not new:
        return inputs[0][1][:, :0]
    done = torch.stack(all_done).nonzero()  # one read: the first step after which every row had finished
    n = int(done[0, 0]) + 1 if len(done) else len(new)
    return torch.stack(new[:n], dim=1)


def decode(
    model,
    input_ids,
    attention_mask,
    *,
    max_new_tokens: int,
    sampling: Sampling,
    eos_ids: tuple[int, ...],
    pad_id: int,
    seed: int,
    sync_every: int | None = None,
):
    """One model: continue a left-padded batch; return the new ids [B, n <= max_new_tokens] (pad after EOS)."""
    return decode_combined(
        [model],
        [(input_ids, attention_mask)],
        comb=None,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        eos_ids=eos_ids,
        pad_id=pad_id,
        seed=seed,
        sync_every=sync_every,
    )


def sub_seed(seed: int, *path: int) -> int:
    """A seed for one step of a run, derived from the run's seed (independent streams per step)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])
