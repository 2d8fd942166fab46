"""The activation-difference lens on tiny models: residual streams against Hugging Face's own hidden
states, a planted direction read back as its token, the controls, steering, and the job end to end."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import job_command
from lmdelta.findings import COLUMNS
from lmdelta.lens import (
    Steer,
    decoder_layers,
    layer_outputs,
    log_ratios,
    logit_lens,
    mean_differences,
    text_windows,
)
from lmdelta.models import random_lora_like

CPU = {"dtype": "float32", "quantization": "none", "device": "cpu", "trust_remote_code": False}
RAW = {"chat_template": False, "fmt": None, "first_token": "bos"}
TEXTS = [
    "The river runs past the old mill and into the sea.",
    "def add(a, b):\n    return a + b",
    "Bread rises when the yeast is warm and fed.",
    "A list keeps its items in order; a set does not.",
    "Mountains stand where two plates of the crust meet.",
]


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_models):
    """A tiny GPT-NeoX b, and a = b whose last layer adds c * (token X's output embedding) to the
    residual stream at every position (through the bias of its MLP's output): a known difference."""
    from lmdelta.config import ModelSpec
    from lmdelta.models import materialise

    root = tmp_path_factory.mktemp("lens")
    b_src = tiny_models["gpt_neox"]
    materialise(ModelSpec(name="b", source={"local": {"path": str(b_src)}}), root / "b")
    tok = AutoTokenizer.from_pretrained(b_src)
    x = tok("river", add_special_tokens=False).input_ids[0]
    a = AutoModelForCausalLM.from_pretrained(b_src)
    with torch.no_grad():
        a.gpt_neox.layers[-1].mlp.dense_4h_to_h.bias.add_(3.0 * a.get_output_embeddings().weight[x])
    a.save_pretrained(root / "a-src")
    tok.save_pretrained(root / "a-src")
    materialise(ModelSpec(name="a", source={"local": {"path": str(root / "a-src")}}), root / "a")
    return {"root": root, "x": x, "token": tok.decode([x])}


def load(folder):
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_layer_outputs_are_the_residual_stream(tiny_models):
    for arch in ("llama", "gpt_neox"):
        model, tok = load(tiny_models[arch])
        ids = torch.tensor([tok("A list keeps its items", add_special_tokens=False).input_ids])
        got = layer_outputs(model, ids, slice(None))
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        assert got.shape[0] == len(decoder_layers(model)) == model.config.num_hidden_layers
        # Hugging Face's hidden_states[l + 1] is layer l's output, except the last, which is after the final norm
        for layer in range(got.shape[0] - 1):
            torch.testing.assert_close(got[layer], hs[layer + 1].double(), rtol=0, atol=1e-6)


def test_a_planted_direction_reads_back_as_its_token(planted):
    a, tok = load(planted["root"] / "a")
    b, _ = load(planted["root"] / "b")
    windows, lead = text_windows(tok, TEXTS, positions=3, first_token="bos", n=5, seed=0)
    assert lead == 1
    assert len(windows) == 5 and all(len(w) == 4 and w[0] == tok.bos_token_id for w in windows)
    diffs, norm = mean_differences({"a": a}, b, windows, lead=1, batch_size=2)
    diff = diffs["a"]
    last = diff.shape[0] - 1
    e_x = 3.0 * b.get_output_embeddings().weight[planted["x"]].double()
    for p in range(3):
        torch.testing.assert_close(diff[last, p], e_x, rtol=0, atol=1e-5)  # exactly the planted vector
    assert float(diff[:last].abs().max()) == 0.0  # the layers before it do not differ
    rows = logit_lens(b, tok, diff, norm, layers=[0, last], top_k=3)
    assert {r["layer"] for r in rows} == {last}, "no row where the difference is zero"
    top = [r for r in rows if r["direction"] == "promoted" and r["rank"] == 1]
    assert len(top) == 3 and all(r["token_id"] == planted["x"] for r in top)
    # the readout against a hand computation: LayerNorm of the scaled unit vector, then the unembedding
    u = (diff[last, 0] / diff[last, 0].norm() * norm[last, 0]).float()
    ln = b.gpt_neox.final_layer_norm
    h = (u - u.mean()) / torch.sqrt(u.var(unbiased=False) + ln.eps) * ln.weight + ln.bias
    with torch.no_grad():
        prob = torch.softmax(b.get_output_embeddings().weight @ h, -1)
    assert top[0]["prob"] == pytest.approx(float(prob[planted["x"]]), rel=1e-4)


def test_identical_models_show_no_difference_and_random_lora_matches_the_norms(pair):
    a, tok = load(pair / "a")
    b, _ = load(pair / "b")
    windows, _ = text_windows(tok, TEXTS, positions=2, first_token="bos", n=4, seed=1)
    diffs, norm = mean_differences({"b": b}, b, windows, lead=1, batch_size=4)
    diff = diffs["b"]
    assert float(diff.abs().max()) == 0.0 and logit_lens(b, tok, diff, norm, layers=[0, 1], top_k=5) == []
    r = random_lora_like(a, b, rank=2, seed=0)
    for m in (a, b, r):
        m.requires_grad_(False)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for name, p in r.named_parameters():
        want = (pa[name].double() - pb[name].double()).norm()
        change = p.double() - pb[name].double()
        assert float(change.norm()) == pytest.approx(float(want), rel=1e-4)
        if p.dim() == 2 and min(p.shape) > 2:
            assert torch.linalg.matrix_rank(change.detach(), atol=1e-5) <= 2  # float32 rounding aside
    assert float((r.get_output_embeddings().weight - a.get_output_embeddings().weight).abs().max()) > 0


def test_steering_adds_the_vector_to_one_layer(pair):
    b, tok = load(pair / "b")
    ids = torch.tensor([tok("Bread rises when", add_special_tokens=False).input_ids])
    v = torch.randn(b.config.hidden_size)
    plain = layer_outputs(b, ids, slice(None))
    with Steer(b, 0, v):
        steered = layer_outputs(b, ids, slice(None))
    torch.testing.assert_close(steered[0], plain[0] + v.double(), rtol=0, atol=1e-5)
    assert not torch.allclose(steered[1], plain[1])  # later layers see the change
    after = layer_outputs(b, ids, slice(None))
    torch.testing.assert_close(after, plain)  # the hook is gone


@pytest.mark.slow  # the whole job in a subprocess (its functions are tested above)
def test_the_lens_job(planted, tmp_path):
    corpus = tmp_path / "corpus.parquet"
    pd.DataFrame({"doc_id": [f"d{i}" for i in range(len(TEXTS))], "text": TEXTS}).to_parquet(corpus)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"q{i}", "category": "c", "prompt": t}) + "\n" for i, t in enumerate(["Hi", "Tell"]))
    )
    out = {
        "tokens": tmp_path / "tokens.parquet",
        "steered": tmp_path / "steered.parquet",
        "summary": tmp_path / "summary.json",
        "csv": tmp_path / "tokens.csv",
        "png": tmp_path / "d.png",
        "findings": tmp_path / "findings.parquet",
    }
    run = {
        "corpus": "c",
        "n_texts": 5,
        "positions": 3,
        "top_k": 4,
        "steer": {"scales": [0.0, 1.0], "samples": 1, "max_new_tokens": 4},
    }
    cmd = job_command(
        tmp_path / "jobs",
        "lens",
        inputs={"a": planted["root"] / "a", "b": planted["root"] / "b", "corpus": corpus, "promptset": prompts},
        outputs=out,
        params={"spec": {"names": ["a", "b"], "run": run, "load_options": [CPU, CPU], "formats": [RAW, RAW]}},
        wildcards={"pair": "p", "run": "r"},
    )
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    tokens = pd.read_parquet(out["tokens"])
    assert set(tokens.comparison) == {"pair", "random_lora"}, "identical models: no row"
    summary = json.loads(out["summary"].read_text())
    assert summary["diff_norm_by_layer"]["identical"] == [0.0, 0.0]
    assert summary["diff_norm_by_layer"]["pair"][0] == 0.0 and summary["diff_norm_by_layer"]["pair"][1] > 0
    found = pd.read_parquet(out["findings"])
    assert tuple(found.columns) == COLUMNS and set(found.method) == {"lens", "lens steering"}
    lens = found[found.method == "lens"]
    assert lens.text.iloc[0] == planted["token"].strip() and lens.score.iloc[0] == 1.0  # every cell promotes it
    steered = pd.read_parquet(out["steered"])
    assert set(steered.scale) == {0.0, 1.0} and set(steered.comparison) == {"pair", "random_lora"}
    assert len(steered) == 2 * 2 * 2  # comparisons x scales x prompts
    steer = found[found.method == "lens steering"]
    assert len(steer) == 2 and steer.score.is_monotonic_decreasing


def test_texts_read_as_a_chat_message_start_after_the_template(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    tok.chat_template = "{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}"
    windows, lead = text_windows(tok, TEXTS, positions=3, first_token="bos", n=2, seed=0, template="chat")
    head = tok("<s>[user] ", add_special_tokens=False).input_ids
    assert lead == len(head) and all(w[:lead] == head and len(w) == lead + 3 for w in windows)
    plain, one = text_windows(tok, TEXTS, positions=3, first_token="bos", n=2, seed=0)
    assert one == 1 and [w[1:] for w in plain] == [w[lead:] for w in windows]


def test_token_findings_discount_what_the_control_promotes():
    from lmdelta.lens import token_findings

    def rows(comparison, cells):
        return [
            {
                "comparison": comparison,
                "layer": layer,
                "position": 0,
                "direction": "promoted",
                "token_id": tid,
                "token": name,
                "prob": 0.1,
                "rank": 1,
                "diff_norm": 1.0,
            }
            for layer, toks in enumerate(cells)
            for tid, name in toks
        ]

    cocoa, junk, comma = (1, " cocoa"), (2, " strugg"), (3, ",")
    table = pd.DataFrame(
        rows("pair", [[cocoa, junk, comma], [cocoa, junk], [junk]])
        + rows("random_lora", [[junk], [junk], [junk, (4, " other")]])
    )
    found = token_findings(table, "r")
    assert [(f["text"], round(f["score"], 6)) for f in found] == [("cocoa", round(2 / 3, 6))]
    alone = token_findings(table[table.comparison == "pair"], "r")  # no control: the plain share
    assert [f["text"] for f in alone] == ["strugg", "cocoa"] and alone[0]["score"] == 1.0


def test_log_ratios_equal_plain_forwards(pair):
    """The batched scorer against one forward per text: mean log p_a − log p_b of the continuation."""
    models = [load(pair / side)[0] for side in ("a", "b")]
    tok = AutoTokenizer.from_pretrained(pair / "b")
    prompts = [tok("Hello there", add_special_tokens=False).input_ids, [tok.bos_token_id]]
    texts = [" and then the river ran on", " def f(x): return x"]
    got = log_ratios(models, tok, prompts + [[tok.bos_token_id]], texts + [""], batch_size=2)
    for prompt, text, value in zip(prompts, texts, got):
        cont = tok(text, add_special_tokens=False).input_ids
        ids = torch.tensor([prompt + cont])
        lps = []
        for m in models:
            with torch.no_grad():
                lp = torch.log_softmax(m(ids).logits[0].double(), -1)[len(prompt) - 1 : -1]
            lps.append(lp.gather(1, torch.tensor(cont)[:, None])[:, 0])
        assert value == pytest.approx(float((lps[0] - lps[1]).mean()), abs=1e-5)
    assert got[2] != got[2]  # an empty text: nan
