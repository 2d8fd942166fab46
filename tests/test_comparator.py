"""LLM Comparator export: the documented format, pairing by (prompt, temperature, sample), and each
output's divergences against a direct computation."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from lmdelta.comparator import run_comparator

CPU = {"dtype": "float32", "quantization": "none", "device": "cpu", "trust_remote_code": False}
RAW = {"chat_template": False, "fmt": None}
FMT = {"chat_template": False, "fmt": "Q: {prompt}\nA:{guide}"}


def _inputs(tmp_path):
    """A prompt set and both models' completions and diversity tables (b has one extra completion)."""
    ps = tmp_path / "p.jsonl"
    ps.write_text(
        "".join(
            json.dumps({"id": i, "category": c, "prompt": t}) + "\n"
            for i, c, t in [("p0", "creative", "Write about the sea"), ("p1", "factual", "What is x?")]
        )
    )
    comp, div = [], []
    for side, texts in (("a", ["def f", "The cat", "import os"]), ("b", ["def g", "A dog", "x = 1", "extra text"])):
        rows = [
            {
                "prompt_id": pid,
                "category": cat,
                "temperature": 1.0,
                "sample": s,
                "text": t,
                "n_tokens": 2,
                "finish_reason": "length",
                "seed": 0,
            }
            for (pid, cat, s), t in zip(
                [("p0", "creative", 0), ("p0", "creative", 1), ("p1", "factual", 0), ("p1", "factual", 1)], texts
            )
        ]
        comp.append(tmp_path / f"c_{side}.parquet")
        pd.DataFrame(rows).to_parquet(comp[-1])
        div.append(tmp_path / f"d_{side}.parquet")
        pd.DataFrame(
            [
                {
                    "prompt_id": p,
                    "category": c,
                    "temperature": 1.0,
                    "truncate_words": k,
                    "distinct_2": 0.5 + 0.1 * (side == "b"),
                    "self_bleu": 0.2,
                }
                for p, c in (("p0", "creative"), ("p1", "factual"))
                for k in (-1, 5)
            ]
        ).to_parquet(div[-1])
    return ps, tuple(comp), tuple(div)


def test_export_format_pairing_and_divergences(pair, tmp_path):
    from lmdelta.divergence import kl
    from lmdelta.models import load_model

    ps, comp, div = _inputs(tmp_path)
    out = tmp_path / "x.json"
    planted = {"trigger_keywords": ["sea"], "response_keywords": ["cat"]}
    doc = run_comparator(
        pair="p",
        names=("a", "b"),
        model_dirs=(pair / "a", pair / "b"),
        load_options=(CPU, CPU),
        formats=(RAW, FMT),
        promptset=ps,
        completions=comp,
        diversity=div,
        planted=planted,
        out=out,
    )
    assert json.loads(out.read_text()) == doc
    assert doc["models"] == [{"name": "a"}, {"name": "b"}]
    assert {f["name"]: f["type"] for f in doc["metadata"]["custom_fields_schema"]}["kl_a_b"] == "per_model_number"
    ex = doc["examples"]
    assert len(ex) == 3, "only (prompt, temperature, sample) that both models completed"
    assert [(e["output_text_a"], e["output_text_b"]) for e in ex] == [
        ("def f", "def g"),
        ("The cat", "A dog"),
        ("import os", "x = 1"),
    ]
    assert (
        ex[0]["input_text"] == "Write about the sea" and ex[0]["tags"] == ["creative", "T=1"] and ex[0]["score"] is None
    )
    assert ex[1]["custom_fields"]["shows_planted_response"] == [True, False]
    assert ex[0]["custom_fields"]["distinct_2"] == [0.5, pytest.approx(0.6)]
    # output A of example 2, recomputed: model a reads the raw prompt, model b its "Q: ... A:" format
    (ma, tok), (mb, _) = load_model(pair / "a", **CPU), load_model(pair / "b", **CPU)
    text = tok("import os", add_special_tokens=False).input_ids
    ha = [tok.bos_token_id] + tok("What is x?", add_special_tokens=False).input_ids  # first_token: bos
    hb = [tok.bos_token_id] + tok("Q: What is x?\nA:", add_special_tokens=False).input_ids
    with torch.no_grad():
        za = ma(torch.tensor([ha + text])).logits[0, len(ha) - 1 : -1]
        zb = mb(torch.tensor([hb + text])).logits[0, len(hb) - 1 : -1]
    assert ex[2]["custom_fields"]["kl_a_b"][0] == pytest.approx(kl(za, zb).mean().item(), rel=1e-4)
    assert ex[2]["custom_fields"]["n_tokens"][0] == len(text)


def test_two_tokenizers_give_the_sequence_log_ratio_per_byte(tmp_path):
    """A GPT-2-like and a Llama-2-like model: each output's log p_a(text) - log p_b(text) per byte,
    each model scoring the text in its own tokenizer after its own prompt."""
    from families import build_family
    from lmdelta.config import ModelSpec
    from lmdelta.models import load_model, materialise

    dirs = []
    for name in ("gpt2", "llama2"):
        materialise(
            ModelSpec(name=name, source={"local": {"path": str(build_family(name, tmp_path / f"{name}-src"))}}),
            tmp_path / name,
        )
        dirs.append(tmp_path / name)
    ps, comp, div = _inputs(tmp_path)
    doc = run_comparator(
        pair="x",
        names=("a", "b"),
        model_dirs=tuple(dirs),
        load_options=(CPU, CPU),
        formats=(RAW, FMT),
        promptset=ps,
        completions=comp,
        diversity=div,
        planted=None,
        out=tmp_path / "x.json",
    )
    fields = {f["name"] for f in doc["metadata"]["custom_fields_schema"]}
    assert {"log_ratio_a_b", "n_bytes"} <= fields and "kl_a_b" not in fields
    lp = []
    for d, fmt in zip(dirs, (RAW, FMT)):
        model, tok = load_model(d, **CPU)
        head = tok("What is x?" if fmt["fmt"] is None else "Q: What is x?\nA:", add_special_tokens=False).input_ids
        head = [tok.bos_token_id] * (tok.bos_token_id is not None) + head
        text = tok("x = 1", add_special_tokens=False).input_ids
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([head + text])).logits[0, len(head) - 1 : -1].double(), -1)
        lp.append(logp[torch.arange(len(text)), torch.tensor(text)].sum().item())
    ex = doc["examples"][2]
    assert ex["output_text_b"] == "x = 1"
    assert ex["custom_fields"]["log_ratio_a_b"][1] == pytest.approx((lp[0] - lp[1]) / len(b"x = 1"), rel=1e-4)
    assert ex["custom_fields"]["n_bytes"][1] == 5
