"""Bias of the sequence divergence across tokenizers (lmdelta.seqdiv), against the exact answer.

Two tiny random models over the alphabet {a, b} with different tokenizers (tests/enumerable.py): every
text of up to MAX_CHARS characters and every tokenization of it is enumerated, so KL(P_a ‖ P_b) over
whole texts is exact. Printed per setting: the exact KL (nats per text and per byte), the expectation
of the estimator the workflow uses (a's sampled ids against b's own tokenization of their text, also
enumerated), its bias, and the workflow's Monte-Carlo estimate (prompt_divergences, SAMPLES texts)
with its standard error. Run: .venv/bin/python bench/seqdiv_bias.py (about 5 minutes on 2 cores)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from enumerable import exact, model, tokenizer  # noqa: E402

from lmdelta.seqdiv import SequenceDivergence, prompt_divergences  # noqa: E402

MAX_CHARS, SAMPLES = 12, 4000
PLAIN = {"chat_template": False, "fmt": None, "first_token": "bos"}
SETTINGS = [(2.0, 0, 1), (2.0, 2, 3), (1.5, 0, 1), (2.5, 4, 5)]  # (end-of-text logit, seed of a, seed of b)


def main() -> None:
    toks = [tokenizer("A"), tokenizer("B")]
    print("eos  seeds  KL/text  est/text  bias/text (rel)  KL/byte  est/byte  MC/text (s.e.)  tail")
    for eos, sa, sb in SETTINGS:
        models = [model("A", seed=sa, eos_logit=eos), model("B", seed=sb, eos_logit=eos)]
        w = exact(models[0], toks[0], models[1], toks[1], MAX_CHARS)
        mc = prompt_divergences(
            models, toks, [PLAIN, PLAIN], [""], SequenceDivergence(SAMPLES, 16, 500), divergence="kl_a_b", seed=0
        )[0]
        bias = w["estimator_seq"] - w["kl_seq"]
        print(
            f"{eos:3.1f}  {sa},{sb}    {w['kl_seq']:.4f}   {w['estimator_seq']:.4f}    {bias:+.4f} ({bias / w['kl_seq']:+.1%})"
            f"   {w['kl']:.4f}   {w['estimator']:.4f}    {mc['kl_a_b_seq']:.4f} ({mc['kl_a_b_seq_se']:.4f})"
            f"  {w['tail']:.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
