"""A pair whose divergence over texts can be computed exactly: two tiny random models over the alphabet
{a, b} with different tokenizers (A: a, b, ab; B: a, b, ba, aa) and a strong end-of-text token, so
that every text up to ``max_chars`` characters and every tokenization of it can be enumerated. Used by
tests/test_seqdiv.py and bench/seqdiv_bias.py to measure the sequence estimator's bias across
tokenizers (lmdelta.seqdiv) against the exact answer."""

from __future__ import annotations

import math

import numpy as np

VOCABS = {
    "A": (["<s>", "</s>", "a", "b", "ab"], [("a", "b")]),
    "B": (["<s>", "</s>", "a", "b", "ba", "aa"], [("b", "a"), ("a", "a")]),
}


def tokenizer(name: str):
    """A fast tokenizer of the alphabet {a, b}: BPE with the merges of ``VOCABS[name]``, tokens joined
    with nothing between them, BOS <s> and EOS </s>."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab, merges = VOCABS[name]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(vocab)}, merges))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def model(name: str, *, seed: int, eos_logit: float = 2.0, sharpness: float = 10.0):
    """A random 2-layer GPT-2 over ``VOCABS[name]`` whose end-of-text logit is raised by about
    ``eos_logit`` (texts of a few tokens) and whose other logits are spread by ``sharpness``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    n = len(VOCABS[name][0])
    m = GPT2LMHeadModel(
        GPT2Config(vocab_size=n, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=1,
                   pad_token_id=1, tie_word_embeddings=False)
    )  # fmt: skip
    with torch.no_grad():
        m.lm_head.weight.mul_(sharpness)
        m.lm_head.weight[:, 0] = 0.0
        m.transformer.ln_f.bias[0] = 1.0
        m.lm_head.weight[1, 0] = eos_logit
        m.lm_head.weight[0, :] = -1e4 / 32  # never BOS
    return m.eval()


def token_tree(m, tok, max_chars: int) -> dict[tuple[int, ...], tuple[float, float]]:
    """Every token sequence (after BOS, without EOS) whose text has at most ``max_chars`` characters:
    its log-probability as a prefix and the log-probability that EOS follows it (nats)."""
    import torch

    content = [i for i in range(len(tok)) if i not in (tok.bos_token_id, tok.eos_token_id)]
    length = {i: len(tok.convert_ids_to_tokens(i)) for i in content}
    out: dict[tuple[int, ...], tuple[float, float]] = {}
    level = {(): 0.0}
    while level:
        seqs = list(level)
        ids = torch.tensor([[tok.bos_token_id, *s] for s in seqs])
        with torch.no_grad():
            lp = torch.log_softmax(m(ids).logits[:, -1].double(), -1).numpy()
        nxt = {}
        for s, row in zip(seqs, lp):
            out[s] = (level[s], level[s] + float(row[tok.eos_token_id]))
            chars = sum(length[t] for t in s)
            for t in content:
                if chars + length[t] <= max_chars:
                    nxt[(*s, t)] = level[s] + float(row[t])
        level = nxt
    return out


def text_probs(m, tok, max_chars: int) -> tuple[dict[str, float], dict[tuple[int, ...], float], float]:
    """log P(text then EOS) summed over every tokenization, for every text of at most ``max_chars``
    characters; log p(ids then EOS) per token sequence; and the probability mass of longer texts."""
    tree = token_tree(m, tok, max_chars)
    seq = {s: lpe for s, (_, lpe) in tree.items()}
    texts: dict[str, list[float]] = {}
    for s, lpe in seq.items():
        texts.setdefault(tok.decode(list(s)), []).append(lpe)
    probs = {x: float(np.logaddexp.reduce(v)) for x, v in texts.items()}
    return probs, seq, 1.0 - float(sum(math.exp(v) for v in probs.values()))


def exact(a, tok_a, b, tok_b, max_chars: int) -> dict[str, float]:
    """KL(P_a ‖ P_b) over texts (nats per text and per byte: E[log ratio] / E[bytes]), exact over the
    texts of at most ``max_chars`` characters (``tail``: a's mass beyond them), and the expectation of
    the estimator lmdelta.seqdiv uses (a's sampled ids against b's own tokenization of their text, each
    then EOS) over the same texts."""
    pa, seq_a, tail_a = text_probs(a, tok_a, max_chars)
    pb, seq_b, _ = text_probs(b, tok_b, max_chars)
    canon = {}
    for s in seq_b:
        x = tok_b.decode(list(s))
        if list(s) == tok_b(x, add_special_tokens=False).input_ids:
            canon[x] = seq_b[s]
    true = sum(math.exp(v) * (v - pb[x]) for x, v in pa.items())
    est = sum(math.exp(v) * (v - canon[tok_a.decode(list(s))]) for s, v in seq_a.items())
    nbytes = sum(math.exp(v) * len(x) for x, v in pa.items())
    return {
        "kl_seq": true,
        "kl": true / nbytes,
        "estimator_seq": est,
        "estimator": est / nbytes,
        "tail": tail_a,
        "bytes": nbytes,
    }
