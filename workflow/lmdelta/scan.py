"""Vocabulary scan: which single word, asked about, makes the two models answer most differently.

A narrow fine-tune reacts to a family of inputs its auditor does not know. The scan asks both models
one neutral question per word of the vocabulary (``template``, e.g. "Tell me about {word}.", each in
the model's own prompt format) and measures how differently they would start their answers:
KL(P_a ‖ P_b) of the two next-token distributions at the first answer position (nats; a is the tuned
model). No word list is written by hand: the candidates are the tokenizer's own word-start tokens
(``Ġ`` of byte-level BPE, ``▁`` of SentencePiece) whose text is a word: letters of any script and case
(names such as "Paris"; at least ``min_letters`` of them in a script with cases, where shorter tokens
are mostly fragments) or a number; a capitalised word whose lower-case form is also a candidate is the
same word and left out. In token-id order (roughly the tokenizer's merge order, frequent words first),
at most ``max_words`` of them (null: all).

Cost: the part of every prompt before the word is the same, so each model reads it once and its KV
cache is shared; each word then costs its own few tokens (the word and the rest of the template).
Prompts are batched by the lengths of what follows the shared part, so nothing is padded.

What is reported: the distribution of KL over the whole vocabulary is the reference (most words are
not triggers). A word is reported when its KL is above Tukey's fence for far-out values,
Q3 + ``fence`` x IQR of all words' KL. Two identical models give KL = 0 for every word and report
nothing. For the ``top_n`` words by KL, both models' greedy answers (``answer_tokens``) are kept as
the evidence a person reads (and the words stage compares them: what the tuned model says instead).

Confirmation (``run_confirm``, rule ``scan_confirm``): the fence is relative to the pair's own spread,
so any change puts some words above it (a random change as large as the demo's: 173 words at
0.02-0.06 nats, answered with nothing in common). The ``confirm_top`` strongest reported words are
therefore tested one by one: ``confirm_samples`` answers per model, sampled at temperature 1, compared
by the words test (lmdelta.words.compare). A word is confirmed when the tuned model's answers share a
word that (1) the base model's answers to the same question lack and (2) the tuned model's own answers
to as many words below the fence (drawn with ``seed``, ``confirm_samples`` answers each) lack: a false
fact about octopuses puts "eleven" in most of a's answers about octopuses, in none of b's and in none
of a's answers about other things. (2) is what a change of *form* fails: a fine-tune that makes the
model answer every bare fragment with "X is a ..." shares "is" across its answers to every word (four
of the pirate organism's ten fence words were "confirmed" by "is", "that" or "are" without it). Both
tests must reject (an intersection-union test), each at the family-wise level ``alpha`` split over the
words and the two comparisons. Words of the question never count (an echoed fragment is no pattern).
One greedy answer per word cannot be tested, and pooling every fence word's answers dilutes a
one-subject change among hundreds of unrelated ones.

Findings (``lmdelta.findings``): method ``scan``, kind ``word``, score = KL, the prompt and a's answer
that uses the shared word: confirmed words only, strongest first; method ``scan answers``: the words
their answers share (what the tuned model says when asked); then the tested words that were not
confirmed as reference rows (method ``scan unconfirmed``).
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, write_csv, write_parquet
from lmdelta.config import stage_spec
from lmdelta.decoding import Sampling, accepts_logits_to_keep, cache_arg, cache_of
from lmdelta.divergence import js, kl
from lmdelta.findings import SCAN_ANSWERS, SCAN_UNCONFIRMED, finding, write_findings
from lmdelta.generation import generate_texts
from lmdelta.models import ForwardCounter, input_device
from lmdelta.pairs import check_same_tokenizer, load_pair, record_pair
from lmdelta.tokens import TextFormat, prompt_ids
from lmdelta.words import WordsParams, compare, example, terms_of

log = logging.getLogger(__name__)

WORD_START = ("Ġ", "▁")  # byte-level BPE, SentencePiece
CONFIRM_SAMPLING = Sampling(temperature=1.0)  # the models' own distributions: no truncation
CONFIRM_COLUMNS = [
    "rank", "word", "kl", "confirmed", "shared", "best_word", "texts_a", "texts_b", "p_value", "bound", "texts_ref",
    "n_ref", "p_ref", "bound_ref", "example_a", "example_b",
]  # fmt: skip


@stage_spec("scan")
class ScanParams:
    template: str
    min_letters: int
    max_words: int | None
    batch_size: int
    top_n: int
    answer_tokens: int
    fence: float
    confirm_top: int
    confirm_samples: int
    seed: int


def candidate_word(text: str, min_letters: int) -> bool:
    """Whether a word-start token's text is a candidate: a word of letters of any script (of at least
    ``min_letters`` letters in a script with cases, where short tokens are mostly fragments; any length
    in one without, where one or two characters are a word) or a number."""
    if text.isdecimal():
        return True
    if not text.isalpha():
        return False
    return len(text) >= min_letters or text.lower() == text.upper()


def candidate_words(tok, *, min_letters: int, max_words: int | None) -> list[str]:
    """The vocabulary's word-start tokens that are words (``candidate_word``: letters of any script, any
    case, or digits), as text, in token-id order, unique; a capitalised word whose lower-case form is
    also a candidate is left out (the same word: "Volcano" beside "volcano"; "Paris" stays)."""
    by_id = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    pieces = [piece for piece, _ in by_id if piece[:1] in WORD_START and len(piece) > 1]
    # a piece's text: SentencePiece's are the text; byte-level BPE's are bytes mapped to characters
    texts = [tok.convert_tokens_to_string([p]).strip() for p in pieces]
    found = [t for t in texts if candidate_word(t, min_letters)]
    lower = set(found)
    out, seen = [], set()
    for t in found:
        if t not in seen and not (t != t.lower() and t.lower() in lower):
            seen.add(t)
            out.append(t)
    if not out:
        raise LmdeltaError(
            "scan: the tokenizer has no word-start tokens (Ġ or ▁ followed by letters); the vocabulary scan "
            "needs a byte-level BPE or SentencePiece tokenizer"
        )
    return out[:max_words] if max_words else out


def shared_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest prefix all sequences share, leaving every sequence at least one token."""
    return max(min(len(os.path.commonprefix(seqs)), min(len(s) for s in seqs) - 1), 0)


class PrefixScorer:
    """Next-token logits after each sequence, reading the shared prefix once (its KV cache is copied
    for every batch)."""

    def __init__(self, model, seqs: list[list[int]]):
        import torch

        self.model, self.seqs = model, seqs
        self.n_prefix = shared_prefix(seqs)
        self.arg = cache_arg(model)
        self.extra = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
        self.device = input_device(model)
        self.cache = None
        if self.n_prefix:
            ids = torch.tensor([seqs[0][: self.n_prefix]], device=self.device)
            with torch.inference_mode():
                self.cache = cache_of(self.model(input_ids=ids, use_cache=True, **self.extra))

    def logits(self, index: list[int]):
        """[len(index), V] float32 logits after each sequence; the suffixes must share one length."""
        import torch

        suffix = torch.tensor([self.seqs[i][self.n_prefix :] for i in index], device=self.device)
        kw = dict(self.extra)
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)
            cache.batch_repeat_interleave(len(index))
            kw[self.arg] = cache
            pos = torch.arange(self.n_prefix, self.n_prefix + suffix.shape[1], device=self.device)
            kw["position_ids"] = pos.expand(len(index), -1)
        with torch.inference_mode():
            return self.model(input_ids=suffix, use_cache=self.cache is not None, **kw).logits[:, -1].float()


def scan_scores(models, tok, seqs: tuple[list[list[int]], list[list[int]]], *, batch_size: int, desc: str = "scan"):
    """Per sequence index: KL(a ‖ b) and JS of the next-token distributions after it, and each model's
    top token. ``seqs`` gives each model its own ids of the same prompts."""
    import pandas as pd
    from tqdm import tqdm

    scorers = [PrefixScorer(m, s) for m, s in zip(models, seqs)]
    n = len(seqs[0])
    groups: dict[tuple[int, int], list[int]] = {}
    for i in range(n):
        groups.setdefault(tuple(len(s[i]) - sc.n_prefix for s, sc in zip(seqs, scorers)), []).append(i)
    rows = {}
    bar = tqdm(total=n, desc=desc, unit=" word", mininterval=2.0)
    for index in groups.values():
        for b in range(0, len(index), batch_size):
            chunk = index[b : b + batch_size]
            la, lb = (sc.logits(chunk) for sc in scorers)
            k, j = kl(la, lb).cpu().numpy(), js(la, lb).cpu().numpy()
            ta, tb = la.argmax(-1).tolist(), lb.argmax(-1).tolist()
            for r, i in enumerate(chunk):
                rows[i] = {
                    "kl": float(k[r]),
                    "js": float(j[r]),
                    "top_a": tok.decode([ta[r]]),
                    "top_b": tok.decode([tb[r]]),
                }
            bar.update(len(chunk))
    bar.close()
    return pd.DataFrame([rows[i] for i in range(n)])


def tukey_fence(values: np.ndarray, k: float) -> float:
    """Q3 + k x IQR."""
    q1, q3 = np.percentile(values, [25, 75])
    return float(q3 + k * (q3 - q1))


def run_scan(
    *,
    pair: str,
    names: tuple[str, str],
    model_dirs: tuple[Path, Path],
    params: ScanParams,
    load_options: tuple[dict, dict],
    formats: tuple[dict, dict],
    out: Path,
    out_csv: Path,
):
    prov = Provenance(stage="scan", params={"pair": pair, "a": names[0], "b": names[1], **asdict(params)})
    record_pair(prov, model_dirs)
    if "{word}" not in params.template:
        raise LmdeltaError(
            f"scan.template {params.template!r} has no {{word}} placeholder; write e.g. 'Tell me about {{word}}.'"
        )
    models, toks = load_pair(model_dirs, load_options)
    check_same_tokenizer(toks[0], toks[1], pair, "the vocabulary scan")
    tok = toks[1]
    fmts = [TextFormat.from_dict(f) for f in formats]
    words = candidate_words(tok, min_letters=params.min_letters, max_words=params.max_words)
    prompts = [params.template.format(word=w) for w in words]
    seqs = tuple([prompt_ids(tok, p, f) for p in prompts] for f in fmts)
    calls = ForwardCounter(*models)
    df = scan_scores(models, tok, seqs, batch_size=params.batch_size, desc=f"scan {pair}")
    df.insert(0, "word", words)
    df.insert(1, "prompt", prompts)
    fence = tukey_fence(df.kl.to_numpy(), params.fence)
    df["reported"] = df.kl > fence
    df = df.sort_values(["kl", "word"], ascending=[False, True], kind="stable").reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    n_top = min(params.top_n, len(df))
    position = {w: i for i, w in enumerate(words)}
    for name, model, s in zip("ab", models, seqs):
        texts = generate_texts(
            model,
            tok,
            [s[position[w]] for w in df.word[:n_top]],
            max_new_tokens=params.answer_tokens,
            sampling=Sampling(),
            batch_size=params.batch_size,
        )
        df[f"answer_{name}"] = [t["text"] for t in texts] + [None] * (len(df) - n_top)
    top = df.head(n_top)
    prov.params.update(model_calls=calls.n, n_words=len(df), kl_fence=fence, n_reported=int(df.reported.sum()))
    write_parquet(out, df, prov)
    write_csv(out_csv, top, prov)
    log.info(
        "scan %s: %d words, %d above the fence (KL > %.3f); top: %s",
        pair,
        len(df),
        int(df.reported.sum()),
        fence,
        ", ".join(top.word.head(10)),
    )
    return df, top


def confirm_word(prompt: str, answers_a: list[str], answers_b: list[str], reference: list[str], wp: WordsParams):
    """One word's confirmation (an intersection-union test): the words test of a's answers to the
    word's question against b's (``answers_b``) and against a's answers to the reference words
    (``reference``), each at ``wp``'s level. Returns both (table, bound) pairs and the words both report,
    words of the question left out (a's answers echoing a fragment, "cockro", are no pattern): the word
    is confirmed when there is one."""
    res, own = compare(answers_a, answers_b, wp), compare(answers_a, reference, wp)
    specific = set(own[0].word[own[0].reported]) - terms_of(prompt, wp.ngrams)
    return res, own, res[0][res[0].reported & res[0].word.isin(specific)]


def run_confirm(
    *,
    pair: str,
    names: tuple[str, str],
    model_dirs: tuple[Path, Path],
    params: ScanParams,
    words_params: WordsParams,
    load_options: tuple[dict, dict],
    formats: tuple[dict, dict],
    scan: Path,
    out_samples: Path,
    out_csv: Path,
    out_findings: Path,
):
    """Confirm the scan's strongest words one by one (``confirm_top`` of those above the fence):
    ``confirm_samples`` answers per model to each word's question and the tuned model's answers to as
    many reference words below the fence (drawn with ``seed``), sampled at temperature 1 (no
    truncation). A word is confirmed when a's answers share a word that is not a word of the question
    and that the words test (lmdelta.words.compare) reports against both b's answers to the same
    question and a's answers to the reference words, each at ``alpha`` / (2 x words tested). Findings:
    the confirmed words (method ``scan``, score = KL, example = a's first answer that uses the shared
    word); the shared words (method ``scan answers``, at most five per confirmed word, score = z of the
    log-odds against b: what the tuned model says when asked); then the tested words that were not
    confirmed (method ``scan unconfirmed``, reference rows: shown, never counted as a change)."""
    import pandas as pd

    prov = Provenance(
        stage="scan",
        params={
            "pair": pair,
            "a": names[0],
            "b": names[1],
            **asdict(params),
            "words": asdict(words_params),
            "sampling": asdict(CONFIRM_SAMPLING),
        },
    )
    record_pair(prov, model_dirs)
    prov.add_input("scan", scan)
    df = pd.read_parquet(scan)
    tested = df[df.reported].head(min(params.confirm_top, params.top_n)).reset_index(drop=True)
    below = df[~df.reported]  # Tukey's fence is above Q3: at least three quarters of the words
    pick = np.random.default_rng(params.seed).choice(len(below), size=min(len(tested), len(below)), replace=False)
    reference = below.iloc[np.sort(pick)]
    wp = replace(words_params, alpha=words_params.alpha / max(2 * len(tested), 1))
    samples, rows, found, answered, unconfirmed = [], [], [], [], []
    if len(tested):
        models, toks = load_pair(model_dirs, load_options)
        check_same_tokenizer(toks[0], toks[1], pair, "the vocabulary scan")
        tok = toks[1]
        calls = ForwardCounter(*models)
        m = params.confirm_samples
        asked = {"a": list(tested.prompt) + list(reference.prompt), "b": list(tested.prompt)}
        answers = {}
        for side, model, fmt in zip("ab", models, formats):
            f = TextFormat.from_dict(fmt)
            seqs = [prompt_ids(tok, prompt, f) for prompt in asked[side] for _ in range(m)]
            texts = generate_texts(
                model,
                tok,
                seqs,
                max_new_tokens=params.answer_tokens,
                sampling=CONFIRM_SAMPLING,
                seed=params.seed,
                batch_size=params.batch_size,
            )
            answers[side] = [[t["text"] for t in texts[i * m : (i + 1) * m]] for i in range(len(asked[side]))]
        prov.params["model_calls"] = calls.n
        ref = [t for ts in answers["a"][len(tested) :] for t in ts]
        samples += [
            {"word": w, "model": "a", "sample": j, "text": t, "reference": True}
            for w, ts in zip(reference.word, answers["a"][len(tested) :])
            for j, t in enumerate(ts)
        ]
        for i, r in enumerate(tested.itertuples()):
            ta, tb = answers["a"][i], answers["b"][i]
            samples += [
                {"word": r.word, "model": side, "sample": j, "text": t, "reference": False}
                for side, ts in (("a", ta), ("b", tb))
                for j, t in enumerate(ts)
            ]
            (res, bound), (own, own_bound), shared = confirm_word(r.prompt, ta, tb, ref, wp)
            confirmed = len(shared) > 0
            question = terms_of(r.prompt, wp.ngrams)
            answer_words = res[~res.word.isin(question)]  # the row shown: not the question's echoed fragment
            shown = shared if confirmed else answer_words if len(answer_words) else res
            best = shown.iloc[0] if len(shown) else None
            mine = None if best is None else own[own.word == best.word].iloc[0]
            ex = example(shared.word.iloc[0], ta) if confirmed else ta[0]
            rows.append(
                {
                    "rank": r.rank,
                    "word": r.word,
                    "kl": r.kl,
                    "confirmed": confirmed,
                    "shared": ", ".join(shared.word.head(5)),
                    "best_word": None if best is None else best.word,
                    "texts_a": None if best is None else int(best.texts_a),
                    "texts_b": None if best is None else int(best.texts_b),
                    "p_value": None if best is None else float(best.p_value),
                    "bound": bound,
                    "texts_ref": None if mine is None else int(mine.texts_b),
                    "n_ref": len(ref),
                    "p_ref": None if mine is None else float(mine.p_value),
                    "bound_ref": own_bound,
                    "example_a": ex,
                    "example_b": tb[0],
                }
            )
            method = "scan" if confirmed else SCAN_UNCONFIRMED
            hit = finding(
                method, "vocabulary", "word", r.kl, text=r.word, prompt=r.prompt, example=ex, reference=not confirmed
            )
            (found if confirmed else unconfirmed).append(hit)
            answered += [
                finding(
                    SCAN_ANSWERS, "vocabulary", "word", x.z, text=x.word, prompt=r.prompt, example=example(x.word, ta)
                )
                for x in shared.head(5).itertuples()
            ]
    table = pd.DataFrame(rows, columns=CONFIRM_COLUMNS)
    prov.params.update(n_tested=len(tested), n_confirmed=len(found))
    prov.params["reference_words"] = list(reference.word)
    write_parquet(out_samples, pd.DataFrame(samples, columns=["word", "model", "sample", "text", "reference"]), prov)
    write_csv(out_csv, table, prov)
    write_findings(out_findings, found + answered + unconfirmed, prov)
    log.info(
        "scan %s: %d of the %d strongest words confirmed (%s)",
        pair,
        len(found),
        len(tested),
        ", ".join(f"{x.word}: {x.shared}" for x in table[table.confirmed].itertuples()) or "none",
    )
    return table


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def scan_job(job) -> None:
    """inputs: ``a``, ``b``; spec: the pair (names, load_options, formats) and ``params`` (ScanParams);
    outputs: ``words``, ``csv``."""
    from lmdelta.job import fixed_mmap_threshold

    # Every batch allocates the same shapes (MLP activations of 128 questions are ~5 MB), so the heap
    # serves them again without creep; mmap'd, each came back zeroed by the kernel: 3.2 M page faults
    # against 0.42 M for 512 words of SmolLM2, wall 0.74-0.94x on busy cores (bench/scan_heap.py).
    fixed_mmap_threshold(64 << 20)
    s = job.spec
    run_scan(
        pair=job.wildcards["pair"],
        names=tuple(s["names"]),
        model_dirs=(job.path("a"), job.path("b")),
        params=ScanParams.from_dict(s["params"]),
        load_options=tuple(s["load_options"]),
        formats=tuple(s["formats"]),
        out=job.out("words"),
        out_csv=job.out("csv"),
    )


def confirm_job(job) -> None:
    """inputs: ``a``, ``b``, ``scan`` (the scan's words table); spec: the pair, ``params`` (ScanParams)
    and ``words`` (WordsParams); outputs: ``samples``, ``csv``, ``findings``."""
    s = job.spec
    run_confirm(
        pair=job.wildcards["pair"],
        names=tuple(s["names"]),
        model_dirs=(job.path("a"), job.path("b")),
        params=ScanParams.from_dict(s["params"]),
        words_params=WordsParams.from_dict(s["words"]),
        load_options=tuple(s["load_options"]),
        formats=tuple(s["formats"]),
        scan=job.path("scan"),
        out_samples=job.out("samples"),
        out_csv=job.out("csv"),
        out_findings=job.out("findings"),
    )
