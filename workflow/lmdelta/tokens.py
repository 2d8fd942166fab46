"""How text becomes token ids, the same way in every stage that scores or generates.

**Prompt formatting** (``format_prompt``): a model's ``prompt_format`` string wins; else its chat
template (with a generation prompt) when ``chat_template`` is on and the tokenizer has one; else the
raw prompt. A guide (assistant prefix) is appended.

**First token** (``models.<name>.first_token``, one setting per model for scored documents and
generated continuations alike; ``first_token_id``):

- ``bos``: the tokenizer's BOS token, or its EOS token when it has no BOS (lm-evaluation-harness's
  prefix rule: GPT-2, Pythia and Qwen2.5 start a document with ``<|endoftext|>``);
- ``eos``: the EOS token; ``none``: nothing (the first token of a scored document is then not scored);
- the text of one token, e.g. ``"<|endoftext|>"``, for a model whose declared BOS is not a document
  start (SmolLM2-Instruct declares its chat-turn opener ``<|im_start|>`` as BOS).

``encode`` applies it: the token is prepended to plain text (a document, a raw prompt, a
``prompt_format`` prompt) unless the text's own ids already start with it, and never to text written
by a chat template, which is the model's own declaration of its input (Llama-2/3, Mistral and Gemma
templates write BOS themselves; ChatML templates write none). Texts are always tokenised with
``add_special_tokens=False``, so the tokenizer never adds a second BOS of its own; a sequence that
would start with two BOS ids is refused.

**Stopping** (``eos_ids``): generation stops at every EOS id the model declares, the tokenizer's and
those of ``generation_config.eos_token_id`` (a list for Llama-3-Instruct and Gemma-3: end of text and
end of turn).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lmdelta import LmdeltaError

FIRST_TOKEN_POLICIES = ("bos", "eos", "none")


@dataclass(frozen=True)
class TextFormat:
    """How one model reads a prompt and where its sequences start (``models.<name>`` keys)."""

    chat_template: bool = True
    fmt: str | None = None  # prompt_format
    first_token: str = "bos"

    @classmethod
    def from_dict(cls, d: dict | None) -> TextFormat:
        d = d or {}
        return cls(
            chat_template=d.get("chat_template", True), fmt=d.get("fmt"), first_token=d.get("first_token", "bos")
        )

    def templated(self, tokenizer) -> bool:
        """Whether prompts go through the tokenizer's chat template."""
        return self.fmt is None and self.chat_template and bool(getattr(tokenizer, "chat_template", None))


def first_token_id(tokenizer, policy: str) -> int | None:
    """The id that starts every plain-text sequence of a model under ``policy`` (see the module docstring)."""
    if policy == "none":
        return None
    if policy == "bos" and tokenizer.bos_token_id is not None:
        return tokenizer.bos_token_id
    if policy in ("bos", "eos"):
        if tokenizer.eos_token_id is None:
            raise LmdeltaError(
                f"first_token is {policy!r} but the tokenizer has no BOS or EOS token; set the model's "
                "first_token: none (the first token is then not scored) or name a token"
            )
        return tokenizer.eos_token_id
    tid = tokenizer.convert_tokens_to_ids(policy)
    if tid is None or tid == tokenizer.unk_token_id and policy != tokenizer.unk_token:
        raise LmdeltaError(
            f"first_token {policy!r} is not a token of this tokenizer; use bos, eos, none or one of its "
            f"special tokens ({', '.join(tokenizer.all_special_tokens[:6])})"
        )
    return int(tid)


def format_prompt(tokenizer, prompt: str, *, chat_template: bool, guide: str = "", fmt: str | None = None) -> str:
    """The text fed to the model (see the module docstring)."""
    if fmt is not None:
        return fmt.format(prompt=prompt, guide=guide)
    if chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = prompt
    return text + guide


def encode(tokenizer, text: str, *, prefix: int | None, templated: bool = False) -> list[int]:
    """Token ids of ``text`` with the first-token rule applied (see the module docstring)."""
    ids = list(tokenizer(text, add_special_tokens=False).input_ids) if text else []
    if prefix is not None and not templated and (not ids or ids[0] != prefix):
        ids = [prefix] + ids
    check_single_bos(tokenizer, ids)
    return ids


def check_single_bos(tokenizer, ids: list[int]) -> None:
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        raise LmdeltaError(
            f"a sequence starts with two BOS tokens ({tokenizer.bos_token!r}); the prompt or the prompt_format "
            "already writes BOS: remove it from the text"
        )


def prompt_ids(
    tokenizer, prompt: str, fmt: TextFormat, *, guide: str = "", chat_prompt: str | None = None
) -> list[int]:
    """Ids of a prompt as the model reads it: formatted, then the first-token rule. ``chat_prompt``, when
    given, replaces the prompt for a model that reads a chat template (e.g. an instruction to continue
    a text that a base model reads bare)."""
    if chat_prompt is not None and fmt.templated(tokenizer):
        prompt = chat_prompt
    text = format_prompt(tokenizer, prompt, chat_template=fmt.chat_template, guide=guide, fmt=fmt.fmt)
    return encode(
        tokenizer, text, prefix=first_token_id(tokenizer, fmt.first_token), templated=fmt.templated(tokenizer)
    )


def eos_ids(*pairs) -> tuple[int, ...]:
    """Every EOS id declared by the (model, tokenizer) pairs given: tokenizers' and generation configs'."""
    out: list[int] = []

    def add(x):
        if x is None:
            return
        for i in x if isinstance(x, Iterable) and not isinstance(x, str) else [x]:
            if i is not None and int(i) not in out:
                out.append(int(i))

    for model, tok in pairs:
        add(tok.eos_token_id)
        gc = getattr(model, "generation_config", None)
        add(getattr(gc, "eos_token_id", None) if gc is not None else None)
    return tuple(out)


def cut_at_eos(row: list[int], eos: tuple[int, ...]) -> tuple[int, bool]:
    """(length up to and including the first EOS id, whether one was found)."""
    for i, t in enumerate(row):
        if t in eos:
            return i + 1, True
    return len(row), False


def word_ids(tokenizer, ids: list[int]) -> list[int]:
    """The word (0, 1, ...) each token of ``ids`` belongs to, words being the whitespace-separated
    pieces of the decoded text, whatever the tokenizer (byte-level BPE's "Ġ", SentencePiece's "▁").

    Rule: a token belongs to the word that holds its first non-whitespace character; a token of
    whitespace only belongs to the next word (the space before a word starts it, as in GPT-2's
    tokens), or to the last word at the end of the text. So word sums of per-token values equal the
    text's sum, and no token is lost or counted twice. The text is decoded once and re-encoded with
    character offsets; if the re-encoding differs (a non-canonical tokenization), each token's own
    piece is used instead: a piece that starts with whitespace or "▁" starts a word.
    """
    import re

    ids = [int(i) for i in ids]
    if not ids:
        return []
    text = tokenizer.decode(ids)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc.input_ids) == ids:
        ends = [m.end() for m in re.finditer(r"\S+", text)]
        out = []
        for start, stop in enc.offset_mapping:
            piece = text[start:stop]
            lead = len(piece) - len(piece.lstrip())
            pos = start + lead if lead < len(piece) else stop  # whitespace only: the next word
            w = next((k for k, e in enumerate(ends) if pos < e), len(ends) - 1)
            out.append(max(w, 0))
        return out
    out, word = [], -1
    for i, t in enumerate(ids):
        raw = tokenizer.convert_ids_to_tokens(t)
        if i == 0 or raw.startswith("\u2581") or tokenizer.decode([t])[:1].isspace():
            word += 1
        out.append(word)
    return out


def prefix_token(tokenizer, policy: str) -> tuple[int | None, str | None]:
    """The id prepended to every document under the model's first-token policy and its text
    (``lmdelta.tokens.first_token_id``; (None, None) for ``none``)."""
    tid = first_token_id(tokenizer, policy)
    return (None, None) if tid is None else (tid, tokenizer.convert_ids_to_tokens(tid))


def encode_prompt(tok, prompt: str, fmt) -> list[int]:
    """A prompt's ids as the model reads it (``lmdelta.tokens``); an empty prompt (unconditional) is the
    model's first token alone (its BOS, else EOS, when its first_token is none)."""
    if prompt:
        return prompt_ids(tok, prompt, fmt)
    start = first_token_id(tok, fmt.first_token if fmt.first_token != "none" else "bos")
    if start is None:
        raise LmdeltaError(
            "contrastive: an empty prompt needs a BOS or EOS token, and the tokenizer has neither; give prompts"
        )
    return [start]
