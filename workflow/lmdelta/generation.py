"""Batched, seeded text generation from a loaded model: batching, decoding to text.

Every number-changing choice is an explicit argument: greedy or sampled, temperature, top_p, top_k
(never a library's hidden default: the model's generation_config is consulted for its EOS ids only),
max_new_tokens, seed. Prompts arrive as token ids, made by ``lmdelta.tokens.prompt_ids`` (format and
first token); batches are left-padded with ``models.pad_id`` (any id: padded positions are masked), so
a tokenizer without a pad token generates exactly as it would one prompt at a time. The token loop
itself is ``lmdelta.decoding``.
"""

from __future__ import annotations

from lmdelta import LmdeltaError
from lmdelta.decoding import Sampling, decode
from lmdelta.models import input_device, left_pad, pad_id
from lmdelta.tokens import TextFormat, cut_at_eos, eos_ids, format_prompt, prompt_ids

__all__ = ["Sampling", "TextFormat", "format_prompt", "generate_texts", "prompt_ids"]


def check_context(model, seqs: list[list[int]], max_new_tokens: int, tokenizer=None) -> None:
    """Refuse, before any generation, a prompt that leaves no room for max_new_tokens in the model's context."""
    ctx = getattr(model.config, "max_position_embeddings", None)
    if ctx is None or not seqs:
        return
    worst = max(range(len(seqs)), key=lambda i: len(seqs[i]))
    if len(seqs[worst]) + max_new_tokens > ctx:
        start = repr(tokenizer.decode(seqs[worst][:12])) if tokenizer is not None else f"prompt {worst}"
        raise LmdeltaError(
            f"a prompt of {len(seqs[worst])} tokens plus max_new_tokens {max_new_tokens} exceeds the model's context "
            f"of {ctx} positions (prompt starts {start}); lower max_new_tokens or shorten the prompt"
        )


def generate_texts(
    model,
    tokenizer,
    seqs: list[list[int]],
    *,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    seed: int = 0,
    batch_size: int = 16,
) -> list[dict]:
    """Continue each prompt (token ids); return dicts with ``text``, ``n_tokens``, ``finish_reason``
    (``eos`` or ``length``) and the new ``ids``. Left padding, one KV cache per batch; batch b is seeded ``seed + b``.
    Generation stops at every EOS id the model declares (``lmdelta.tokens.eos_ids``)."""
    import torch

    check_context(model, seqs, max_new_tokens, tokenizer)
    device = input_device(model)
    eos = eos_ids((model, tokenizer))
    pad = pad_id(tokenizer)
    out: list[dict] = []
    for b in range(0, len(seqs), batch_size):
        ids, mask = left_pad(seqs[b : b + batch_size], pad)
        with torch.inference_mode():
            new = decode(
                model,
                ids.to(device),
                mask.to(device),
                max_new_tokens=max_new_tokens,
                sampling=sampling,
                eos_ids=eos,
                pad_id=pad,
                seed=seed + b,
            ).cpu()
        for row in new.tolist():
            n, stopped = cut_at_eos(row, eos)
            out.append(
                {
                    "text": tokenizer.decode(row[:n], skip_special_tokens=True),
                    "n_tokens": n,
                    "finish_reason": "eos" if stopped else "length",
                    "ids": row[:n],  # the EOS id included when it stopped
                }
            )
    return out
