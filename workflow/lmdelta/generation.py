"""Batched, seeded text generation from a loaded model: prompt formatting, batching, decoding to text.

Every number-changing choice is an explicit argument: greedy or sampled, temperature, top_p, top_k
(never a library's hidden default: the model's generation_config is not consulted), max_new_tokens,
seed, and whether prompts go through the tokenizer's chat template. The token loop itself is
``lmdelta.decoding``.
"""

from __future__ import annotations

from lmdelta import LmdeltaError
from lmdelta.decoding import Sampling, decode
from lmdelta.models import pad_id

__all__ = ["Sampling", "format_prompt", "generate_texts"]


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


def check_context(model, tokenizer, texts: list[str], max_new_tokens: int) -> None:
    """Refuse, before any generation, a prompt that leaves no room for max_new_tokens in the model's context."""
    ctx = getattr(model.config, "max_position_embeddings", None)
    if ctx is None or not texts:
        return
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    worst = max(range(len(texts)), key=lengths.__getitem__, default=None)
    if worst is not None and lengths[worst] + max_new_tokens > ctx:
        raise LmdeltaError(f"a prompt of {lengths[worst]} tokens plus max_new_tokens {max_new_tokens} exceeds the model's context "
                           f"of {ctx} positions (prompt starts {texts[worst][:40]!r}); lower max_new_tokens or shorten the prompt")


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
    (``eos`` or ``length``). Left padding, one KV cache per batch; batch b is seeded ``seed + b``."""
    import torch

    check_context(model, tokenizer, texts, max_new_tokens)
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = pad_id(tokenizer)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[dict] = []
    try:
        for b in range(0, len(texts), batch_size):
            enc = tokenizer(texts[b:b + batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.inference_mode():
                new = decode(model, enc.input_ids, enc.attention_mask, max_new_tokens=max_new_tokens, sampling=sampling,
                             eos_id=eos, pad_id=pad, seed=seed + b).cpu()
            for row in new.tolist():
                n = row.index(eos) + 1 if eos in row else len(row)
                out.append({
                    "text": tokenizer.decode(row[:n], skip_special_tokens=True),
                    "n_tokens": n,
                    "finish_reason": "eos" if eos in row[:n] else "length",
                })
    finally:
        tokenizer.padding_side = side
    return out
