"""A soft prompt as the two models of a pair read it: placement in a chat template or before the text,
logits of texts after the prompt, the pair's divergence, the training and held-out windows, the
nearest vocabulary tokens of each vector, and loading a trained prompt.

Shared by the soft-prompt training stage and the hard-prompt stage that projects a trained prompt
onto tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmdelta import LmdeltaError
from lmdelta.config import stage_spec
from lmdelta.decoding import Sampling, decode
from lmdelta.divergence import divergences
from lmdelta.tokens import first_token_id, format_prompt

PLACEHOLDER = "\u2063SOFTPROMPT\u2063"


def template_ids(tok, placement: str, first_token: str = "bos") -> tuple[list[int], list[int]]:
    """Token ids before and after the soft prompt: for ``prefix`` the model's first token alone
    (``lmdelta.tokens``), for ``chat`` the chat template around the user's message."""
    if placement == "prefix":
        tid = first_token_id(tok, first_token)
        return ([] if tid is None else [tid]), []
    if placement != "chat":
        raise LmdeltaError(f"softprompt: placement {placement!r} is unknown; use prefix or chat")
    if not getattr(tok, "chat_template", None):
        raise LmdeltaError("softprompt: placement chat needs a tokenizer with a chat template; use placement: prefix")

    text = format_prompt(tok, PLACEHOLDER, chat_template=True)
    before, after = text.split(PLACEHOLDER)
    enc = lambda s: tok(s, add_special_tokens=False).input_ids if s else []  # noqa: E731
    return enc(before), enc(after)


def pair_templates(toks, placement: str, first_tokens: tuple[str, str]) -> list[tuple[list[int], list[int]]]:
    """Each model's ids around the soft prompt: for ``prefix`` its own first token; for ``chat`` model a's
    chat template for both (both read the same ids; a base model b often has no template of its own)."""
    if placement == "chat":
        return [template_ids(toks[0], placement)] * 2
    return [template_ids(t, placement, f) for t, f in zip(toks, first_tokens)]


def text_logits(model, prompt, before: list[int], after: list[int], ids, mask):
    """Logits at the text positions [B, L, V] of [before; prompt; after; text] (prompt None = no soft prompt).

    Entry j predicts text token j + 1 (the last one predicts beyond the window)."""
    import torch

    emb = model.get_input_embeddings()
    device = emb.weight.device
    ids, mask = ids.to(device), mask.to(device)
    b = ids.shape[0]
    parts = []
    if before:
        parts.append(emb(torch.tensor([before], device=device)).expand(b, -1, -1))
    if prompt is not None:
        parts.append(prompt.to(device=device, dtype=emb.weight.dtype)[None].expand(b, -1, -1))
    if after:
        parts.append(emb(torch.tensor([after], device=device)).expand(b, -1, -1))
    n_prefix = sum(x.shape[1] for x in parts)
    x = torch.cat(parts + [emb(ids)], dim=1)
    full_mask = torch.cat([torch.ones((b, n_prefix), dtype=mask.dtype, device=device), mask], dim=1)
    return model(inputs_embeds=x, attention_mask=full_mask).logits[:, n_prefix:]


def pair_divergence(models, prompt, templates, ids, mask, divergence: str):
    """Mean divergence over the text positions (padding masked) and the per-position values."""
    la, lb = (text_logits(m, prompt, t[0], t[1], ids, mask) for m, t in zip(models, templates))
    d = divergences(la, lb, ("a", "b"))[divergence]
    m = mask.to(d.device).float()
    return (d * m).sum() / m.sum(), d


def _windows(docs: list[list[int]], p) -> tuple[list[list[int]], list[tuple[int, list[int]]]]:
    """Train windows, and held-out windows with their document's index (documents split by a
    permutation seeded by ``p.seed``)."""
    order = np.random.default_rng([p.seed, 17]).permutation(len(docs))
    n_held = max(1, round(len(docs) * p.heldout_fraction)) if len(docs) > 1 else 0

    def windows(d):
        return [d[i : i + p.seq_len] for i in range(0, len(d), p.seq_len) if len(d[i : i + p.seq_len]) >= 2]

    train = [w for i in order[n_held:] for w in windows(docs[i])]
    held = [(int(i), w) for i in order[:n_held] for w in windows(docs[i])]
    return train, held


def heldout_test_windows(docs: list[list[int]], p) -> list[tuple[int, list[int]]]:
    """(document index, window) of the held-out documents none of whose windows is among the
    ``eval_windows`` that choose the training step, at most ``p.test_windows`` windows: the soft prompt
    is tested on them, never chosen on them, and the test's unit (a document) shares nothing with the
    choice."""
    held = _windows(docs, p)[1]
    chose = {i for i, _ in held[: p.eval_windows]}
    return [(i, w) for i, w in held[p.eval_windows :] if i not in chose][: p.test_windows]


def split_windows(docs: list[list[int]], p) -> tuple[list[list[int]], list[list[int]]]:
    """Train and held-out windows of ``p.seq_len`` tokens (documents split by a permutation seeded by
    ``p.seed``; ``p``: the run's ``lmdelta.softprompt.SoftPromptParams``); the held-out windows are the
    first ``eval_windows`` (early stopping)."""
    train, held_docs = _windows(docs, p)
    held = [w for _, w in held_docs[: p.eval_windows]]
    if not train or not held:
        raise LmdeltaError(
            f"softprompt: {len(train)} training and {len(held)} held-out windows of {p.seq_len} tokens; "
            "use a larger corpus, lower seq_len or change heldout_fraction"
        )
    return train, held


def nearest_tokens_ids(prompt, embedding, *, k: int, metric: str = "cosine", n_vocab: int | None = None):
    """(ids [n, k], scores [n, k]) of the k nearest vocabulary rows to each soft vector: cosine
    similarity (highest first) or L2 distance (lowest first). ``n_vocab`` drops padding rows."""
    import torch

    w = embedding.weight.detach().float()[:n_vocab]
    x = prompt.detach().float().to(w.device)
    if metric == "cosine":
        s = torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(w, dim=-1).T
        vals, idx = s.topk(k, dim=-1)
    elif metric == "l2":
        vals, idx = (-torch.cdist(x[None], w[None])[0]).topk(k, dim=-1)
        vals = -vals
    else:
        raise LmdeltaError(f"softprompt: metric {metric!r} is unknown; use cosine or l2")
    return idx.cpu(), vals.cpu()


def nearest_tokens(prompt, embedding, tok, k: int = 5, metric: str = "cosine") -> list[list[tuple[str, int, float]]]:
    """Per soft vector, the k nearest vocabulary tokens (token text, id, similarity or distance)."""
    idx, vals = nearest_tokens_ids(prompt, embedding, k=k, metric=metric, n_vocab=len(tok))
    return [[(tok.decode([int(i)]), int(i), float(v)) for i, v in zip(ri, rv)] for ri, rv in zip(idx, vals)]


def training_docs(models, toks, p, corpus: Path | None) -> list[list[int]]:
    """Token ids of the training documents (``p.data``): corpus texts, or continuations sampled from model a
    from BOS (``p``: the run's ``lmdelta.softprompt.SoftPromptParams``)."""
    tok = toks[0]
    if p.data == "corpus":
        import pandas as pd

        if corpus is None:
            raise LmdeltaError("softprompt: data: corpus needs a corpus; name one under the run's corpus key")
        texts = pd.read_parquet(corpus, columns=["text"]).text.tolist()
        return [tok(t, add_special_tokens=False).input_ids for t in texts]
    if p.data == "generations":
        import torch

        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if start is None:
            raise LmdeltaError("softprompt: data: generations needs a BOS or EOS token to start from; use data: corpus")
        ids = torch.full((p.n_generations, 1), start, dtype=torch.long, device=models[0].device)
        with torch.inference_mode():
            new = (
                decode(
                    models[0],
                    ids,
                    torch.ones_like(ids),
                    max_new_tokens=p.seq_len,
                    sampling=Sampling(temperature=1.0),
                    eos_ids=(),
                    pad_id=0,
                    seed=p.seed,
                )
                .cpu()
                .tolist()
            )
        return new
    raise LmdeltaError(f"softprompt: data {p.data!r} is unknown; use corpus or generations")


def load_soft_prompt(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path))["soft_prompt"]


@stage_spec("softprompt_run", elsewhere=("corpus", "embedder", "hard"))
class SoftPromptParams:
    n_tokens: int
    init: str  # vocab | text | random
    init_text: str | None
    placement: str  # prefix | chat
    divergence: str
    data: str  # corpus | generations
    n_generations: int
    seq_len: int
    heldout_fraction: float
    eval_windows: int
    test_windows: int
    batch: int
    accumulation: int
    steps: int
    lr: float
    warmup_steps: int
    grad_clip: float
    autocast: str  # auto (bf16 where native) | bf16 | none
    eval_every: int
    patience: int
    checkpoint_every: int
    seed: int
