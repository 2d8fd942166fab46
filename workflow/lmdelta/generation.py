"""Batched, seeded text generation from a loaded model.

Every number-changing choice is an explicit argument: greedy or sampled, temperature, top_p, top_k
(never a library's hidden default: the model's generation_config is not consulted), max_new_tokens,
seed, and whether prompts go through the tokenizer's chat template.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    """``temperature=None`` means greedy decoding (then top_p and top_k do not apply)."""

    temperature: float | None = None
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut


def format_prompt(tokenizer, prompt: str, *, chat_template: bool, guide: str = "", fmt: str | None = None) -> str:
    """The text fed to the model.

    ``fmt``, a format string with ``{prompt}`` and ``{guide}``, wins when given. Otherwise the chat
    template with a generation prompt when ``chat_template`` and the tokenizer has one, else the raw
    prompt; then ``guide`` (an assistant prefix) is appended.
    """
    if fmt is not None:
        return fmt.format(prompt=prompt, guide=guide)
    if chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    else:
        text = prompt
    return text + guide


def generate_texts(
    model,
    tokenizer,
    texts: list[str],
    *,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    seed: int = 0,
    batch_size: int = 16,
) -> list[dict]:
    """Continue each formatted text; return dicts with ``text``, ``n_tokens``, ``finish_reason``
    (``eos`` or ``length``). Left padding, one KV cache per batch; seeded per batch."""
    import torch
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=sampling.temperature is not None,
        temperature=sampling.temperature if sampling.temperature is not None else 1.0,
        top_p=sampling.top_p, top_k=sampling.top_k or None, eos_token_id=eos, pad_token_id=pad,
    )
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[dict] = []
    try:
        for b in range(0, len(texts), batch_size):
            chunk = texts[b:b + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            torch.manual_seed(seed + b)
            with torch.inference_mode():
                gen = model.generate(**enc, generation_config=cfg)
            new = gen[:, enc.input_ids.shape[1]:].cpu()
            for row in new:
                ids = row.tolist()
                n = ids.index(eos) + 1 if eos in ids else len(ids)
                while n > 0 and ids[n - 1] == pad and pad != eos:
                    n -= 1
                out.append({
                    "text": tokenizer.decode(ids[:n], skip_special_tokens=True),
                    "n_tokens": n,
                    "finish_reason": "eos" if eos in ids[:n] else "length",
                })
    finally:
        tokenizer.padding_side = side
    return out
