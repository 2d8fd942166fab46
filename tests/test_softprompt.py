"""Soft prompts: gradients reach the prompt, KL sign and direction, placement, resume, early stopping;
hard prompts: candidates, baseline snippets, re-scoring; the engine started from embeddings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lmdelta import LmdeltaError
from lmdelta.models import load_model
from lmdelta.models import right_pad as collate
from lmdelta.pairs import check_compatible
from lmdelta.softprefix import pair_divergence, split_windows, template_ids, text_logits
from lmdelta.softprompt import SoftPromptParams, evaluate, train_prompt

CPU = {"dtype": "float32", "quantization": "none", "device": "cpu", "trust_remote_code": False}
CHAT = "{% for m in messages %}<s>user: {{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"


@pytest.fixture(scope="module")
def loaded(pair):
    out = [load_model(pair / side, **CPU) for side in ("a", "b")]
    for m, _ in out:
        m.requires_grad_(False)
    return [m for m, _ in out], [t for _, t in out]


def docs(tok, n=12):
    from lmdelta.corpus import iter_builtin_documents

    texts = [d.text for d in iter_builtin_documents("python_docs") if len(d.text) > 400][:n]
    return [tok(t, add_special_tokens=False).input_ids for t in texts]


def test_text_logits_equal_a_plain_forward(loaded):
    """With P = the embeddings of real tokens, the text positions' logits are those of the token ids."""
    models, toks = loaded
    a, tok = models[0], toks[0]
    head = tok("Hello there", add_special_tokens=False).input_ids
    texts = [
        tok("def f(x): return x", add_special_tokens=False).input_ids,
        tok("import os", add_special_tokens=False).input_ids,
    ]
    ids, mask = collate(texts, tok.pad_token_id)
    prompt = a.get_input_embeddings().weight[torch.tensor(head)]
    with torch.no_grad():
        got = text_logits(a, prompt, [], [], ids, mask)
        for i, t in enumerate(texts):
            want = a(torch.tensor([head + t])).logits[0, len(head) :]
            torch.testing.assert_close(got[i, : len(t)], want, rtol=1e-4, atol=1e-4)


def test_chat_placement_wraps_the_prompt_in_the_template(loaded):
    models, toks = loaded
    a, tok = models[0], toks[0]
    with pytest.raises(LmdeltaError, match="chat template"):
        template_ids(tok, "chat")
    tok.chat_template = CHAT
    try:
        before, after = template_ids(tok, "chat")
        assert tok.decode(before) + "X" + tok.decode(after) == "<s>user: X</s>assistant:"
        head = tok("Hello", add_special_tokens=False).input_ids
        text = tok("def f(x): return x", add_special_tokens=False).input_ids
        ids, mask = collate([text], tok.pad_token_id)
        with torch.no_grad():
            got = text_logits(a, a.get_input_embeddings().weight[torch.tensor(head)], before, after, ids, mask)
            n = len(before) + len(head) + len(after)
            want = a(torch.tensor([before + head + after + text])).logits[0, n:]
        torch.testing.assert_close(got[0], want, rtol=1e-4, atol=1e-4)
    finally:
        tok.chat_template = None


def test_divergence_direction_mask_and_gradient(loaded):
    """pair_divergence is KL(P_a || P_b) averaged over real text positions; the gradient reaches P
    and nothing else."""
    models, toks = loaded
    tok = toks[0]
    texts = [
        tok("The cat sat on the mat today", add_special_tokens=False).input_ids,
        tok("import os", add_special_tokens=False).input_ids,
    ]
    ids, mask = collate(texts, tok.pad_token_id)
    prompt = torch.nn.Parameter(torch.randn(3, models[0].config.hidden_size) * 0.02)
    value, per_pos = pair_divergence(models, prompt, [([], []), ([], [])], ids, mask, "kl_a_b")
    with torch.no_grad():
        la, lb = (text_logits(m, prompt, [], [], ids, mask).log_softmax(-1) for m in models)
        kl = (la.exp() * (la - lb)).sum(-1)
        rev = (lb.exp() * (lb - la)).sum(-1)
    m = mask.bool()
    assert value.item() == pytest.approx(float(kl[m].mean()), rel=1e-5)
    # the direction matters: position by position the two KLs differ (their means can nearly coincide)
    assert not torch.allclose(kl[m], rev[m], rtol=1e-3, atol=0), "the direction matters"
    assert torch.allclose(per_pos[m], kl[m], atol=1e-6) and not torch.allclose(per_pos[m], rev[m], rtol=1e-3, atol=0)
    assert torch.allclose(per_pos[m], kl[m], atol=1e-6) and (per_pos[m] >= 0).all()
    (-value).backward()
    assert prompt.grad is not None and torch.isfinite(prompt.grad).all() and prompt.grad.abs().sum() > 0
    assert all(p.grad is None for mod in models for p in mod.parameters()), "the models stay frozen"
    js, _ = pair_divergence(models, prompt, [([], []), ([], [])], ids, mask, "js")
    assert 0 <= js.item() <= np.log(2)


def params(**kw):
    base = dict(
        n_tokens=4,
        seq_len=16,
        batch=4,
        steps=6,
        lr=0.05,
        warmup_steps=1,
        eval_every=2,
        checkpoint_every=2,
        eval_windows=8,
        autocast="none",
        patience=10,
    )
    return SoftPromptParams(**{**base, **kw})


def test_training_raises_the_heldout_divergence(loaded, tmp_path):
    models, toks = loaded
    p = params(steps=8)
    windows = split_windows(docs(toks[0]), p)
    res = train_prompt(models, toks, windows, p, ckpt_dir=tmp_path / "ck", progress=False)
    pad = toks[0].pad_token_id
    bos = [toks[0].bos_token_id]  # placement prefix: each model's first token, then the soft prompt
    tpl = [(bos, []), (bos, [])]
    assert res["best_heldout"] == pytest.approx(evaluate(models, res["prompt"], tpl, windows[1], pad, p), rel=1e-5)
    from lmdelta.softprompt import init_prompt

    start = evaluate(models, init_prompt(models[0].get_input_embeddings(), toks[0], p), tpl, windows[1], pad, p)
    assert res["best_heldout"] > start, "minus KL is minimised: the divergence goes up"
    assert res["baseline_heldout"] == pytest.approx(evaluate(models, None, tpl, windows[1], pad, p))
    assert [r["step"] for r in res["metrics"]] == list(range(1, 9))


def test_the_chosen_prompt_is_tested_on_windows_that_never_chose_it(loaded, tmp_path):
    """The held-out test: windows of held-out documents that gave no eval window, per held-out document the
    token-weighted mean with and without the prompt, as evaluate computes it on that document alone."""
    from lmdelta.softprefix import _windows, heldout_test_windows, pair_templates
    from lmdelta.softprompt import heldout_test
    from lmdelta.stats import PairedParams

    models, toks = loaded
    p = params(steps=4, eval_windows=4, test_windows=40, heldout_fraction=0.4)
    d = docs(toks[0])
    train, held = split_windows(d, p)
    test = heldout_test_windows(d, p)
    assert len(test) == 40 and all(w not in held and w not in train for _, w in test)
    chose = {i for i, w in _windows(d, p)[1] if w in held}
    assert len({i for i, _ in test}) >= 2 and not chose & {i for i, _ in test}, "documents that chose nothing"
    res = train_prompt(models, toks, (train, held), p, ckpt_dir=tmp_path / "ck", progress=False)
    stats = PairedParams.from_dict({"n_permutations": 999, "n_boot": 999})
    got = heldout_test(models, toks, res["prompt"], test, p, stats, ("bos", "bos"))
    tpl, pad = pair_templates(toks, p.placement, ("bos", "bos")), toks[0].pad_token_id
    by_doc = {}
    for i, w in test:
        by_doc.setdefault(i, []).append(w)
    with_p = [evaluate(models, res["prompt"], tpl, ws, pad, p) for ws in by_doc.values()]
    without = [evaluate(models, None, tpl, ws, pad, p) for ws in by_doc.values()]
    assert got["n_docs"] == len(by_doc) and got["n_windows"] == 40
    assert got["with_prompt"] == pytest.approx(np.mean(with_p), rel=1e-5)
    assert got["without_prompt"] == pytest.approx(np.mean(without), rel=1e-5)
    assert got["diff_low"] <= got["diff"] <= got["diff_high"] and 0 < got["p"] <= 1
    assert heldout_test(models, toks, res["prompt"], test[:1], p, stats, ("bos", "bos")) is None  # one document


def test_resume_gives_the_uninterrupted_result(loaded, tmp_path):
    models, toks = loaded
    p = params(steps=6, accumulation=2)
    windows = split_windows(docs(toks[0]), p)
    whole = train_prompt(models, toks, windows, p, ckpt_dir=tmp_path / "whole", progress=False)
    train_prompt(models, toks, windows, p, ckpt_dir=tmp_path / "cut", stop_after=4, progress=False)
    assert json.loads((tmp_path / "cut" / "state.json").read_text())["step"] == 4
    resumed = train_prompt(models, toks, windows, p, ckpt_dir=tmp_path / "cut", progress=False)
    assert torch.equal(whole["prompt"], resumed["prompt"])
    frame = lambda rows: pd.DataFrame(rows).drop(columns="seconds")  # noqa: E731
    pd.testing.assert_frame_equal(frame(whole["metrics"]), frame(resumed["metrics"]))
    # the same folder with other models (another identity) starts afresh instead of resuming
    finished = train_prompt(models, toks, windows, p, ckpt_dir=tmp_path / "cut", progress=False)
    reused_calls = finished["model_calls"] - resumed["model_calls"]  # only the baseline evaluation
    other = train_prompt(models, toks, windows, p, ckpt_dir=tmp_path / "cut", progress=False, identity="other models")
    assert other["model_calls"] == whole["model_calls"] > 2 * reused_calls, "another identity trains from step 0"
    assert torch.equal(other["prompt"], whole["prompt"])


def test_early_stopping_keeps_the_best(loaded, tmp_path):
    models, toks = loaded
    p = params(steps=20, lr=1e-12, eval_every=1, patience=2)
    res = train_prompt(models, toks, split_windows(docs(toks[0]), p), p, ckpt_dir=tmp_path / "ck", progress=False)
    assert res["stopped_early"] and res["steps_run"] == 3 and res["best_step"] == 1


def test_incompatible_pairs_are_refused(loaded, tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import build_tiny_model

    models, toks = loaded
    src = build_tiny_model("llama", tmp_path / "wide", tiny_tokenizer, hidden_size=32, intermediate_size=64)
    other, tok = AutoModelForCausalLM.from_pretrained(src), AutoTokenizer.from_pretrained(src)
    with pytest.raises(LmdeltaError, match="hidden sizes differ"):
        check_compatible([models[0], other], [toks[0], tok], "p")


def test_engine_from_embeddings_equals_engine_from_ids(loaded):
    from lmdelta.decoding import Sampling, decode_combined

    a, tok = loaded[0][0], loaded[1][0]
    ids = torch.tensor([tok("def main(): return", add_special_tokens=False).input_ids] * 2)
    mask = torch.ones_like(ids)
    kw = dict(comb=None, max_new_tokens=6, sampling=Sampling(temperature=1.0), eos_ids=(), pad_id=0, seed=4)
    with torch.no_grad():
        from_ids = decode_combined([a], [(ids, mask)], **kw)
        from_emb = decode_combined([a], [(None, mask, a.get_input_embeddings()(ids))], **kw)
    assert torch.equal(from_ids, from_emb)


@pytest.fixture(scope="module")
def trained(loaded, tmp_path_factory):
    """(params, documents, windows, a soft prompt trained for 4 steps): the hard-prompt tests' input."""
    models, toks = loaded
    sp = params(steps=4)
    d = docs(toks[0])
    windows = split_windows(d, sp)
    soft = train_prompt(models, toks, windows, sp, ckpt_dir=tmp_path_factory.mktemp("ck"), progress=False)["prompt"]
    return sp, d, windows, soft


def test_hard_prompt_candidates_and_baseline(loaded, trained):
    from lmdelta.hardprompt import HardPromptParams, candidates, evaluate_candidates, summarise

    models, toks = loaded
    sp, d, windows, soft = trained
    hp = HardPromptParams(pez_steps=3, n_generate=5, generate_tokens=6, samples=1, max_new_tokens=4, n_top=3)
    cands, rows, trace = candidates(models, toks, soft, windows, sp, hp)
    assert [c["method"] for c in cands[:3]] == ["nearest-cosine", "nearest-l2", "pez"] and len(cands) == 8
    proj = pd.DataFrame(rows)
    assert len(proj) == 2 * sp.n_tokens * hp.top_k
    top1 = proj[(proj.metric == "cosine") & (proj["rank"] == 1)].token_id.tolist()
    assert cands[0]["prompt"] == toks[0].decode(top1)
    # the cosine projection is the row of the embedding matrix most aligned with each soft vector
    w = torch.nn.functional.normalize(models[0].get_input_embeddings().weight.float()[: len(toks[0])], dim=-1)
    assert top1 == (torch.nn.functional.normalize(soft.float(), dim=-1) @ w.T).argmax(-1).tolist()
    assert len(trace) == hp.pez_steps + 1
    planted = {"trigger_keywords": ["def"], "response_keywords": ["the"]}
    df = evaluate_candidates(models, toks, cands, d, sp, hp, planted=planted)
    hard, base = df[~df.is_baseline], df[df.is_baseline]
    assert len(hard) == len(base) and sorted(hard.n_tokens) == sorted(base.n_tokens), (
        "one same-length snippet per candidate"
    )
    assert hard.divergence.is_monotonic_decreasing and base.divergence.is_monotonic_decreasing
    assert hard.rescored.notna().sum() == min(3, len(hard)) and hard.rescored.head(min(3, len(hard))).notna().all()
    assert (df.screen == df.divergence).all() and (df.n_samples == 1).all(), "one round without confirm_top"
    np.testing.assert_allclose(df.baseline_ratio, df.divergence / base.divergence.mean())
    assert (df.ppl_b.dropna() > 1).all()
    s = summarise(df, hp, planted)
    assert s["ratio_top_rescored_vs_snippets"] == pytest.approx(hard.head(3).rescored.mean() / base.divergence.mean())
    assert set(s["planted"]) >= {"top_trigger_rate", "snippet_trigger_rate"}


def test_pez_keeps_the_best_distinct_projections_and_confirm_pools_samples(loaded, trained):
    from lmdelta.decoding import sub_seed
    from lmdelta.hardprompt import HardPromptParams, candidates, evaluate_candidates, score_prompts, summarise

    models, toks = loaded
    sp, d, windows, soft = trained
    hp = HardPromptParams(
        pez_steps=4,
        pez_lr=0.5,
        pez_keep=3,
        n_generate=4,
        generate_tokens=6,
        samples=1,
        max_new_tokens=4,
        n_top=2,
        confirm_top=3,
        confirm_samples=2,
    )
    cands, _, trace = candidates(models, toks, soft, windows, sp, hp)
    # the kept PEZ prompts: the best distinct projections of the trajectory by held-out divergence, best first
    best: dict = {}
    for t in trace:
        best[tuple(t["ids"])] = max(best.get(tuple(t["ids"]), -1e9), t["heldout_divergence"])
    want = [toks[0].decode(list(k)) for k, _ in sorted(best.items(), key=lambda kv: -kv[1])[:3]]
    assert [c["prompt"] for c in cands if c["method"] == "pez"] == want
    df = evaluate_candidates(models, toks, cands, d, sp, hp, planted=None)
    for is_base in (False, True):
        side = df[df.is_baseline == is_base]
        confirmed = side.sort_values("screen", ascending=False, kind="stable").head(3)
        assert (confirmed.n_samples == 3).all() and (side.drop(confirmed.index).n_samples == 1).all()
        # pooled = (1 x first score + 2 x the confirmation's mean) / 3, the confirmation scored independently here
        again = score_prompts(models, toks, confirmed.prompt.tolist(), sp, hp, sub_seed(hp.seed, 3), samples=2)
        np.testing.assert_allclose(
            confirmed.divergence, (confirmed.screen + 2 * np.array([a["kl_a_b"] for a in again])) / 3
        )
        assert side.divergence.is_monotonic_decreasing, "ranked by the pooled score"
        assert side.head(2).rescored.notna().all() and side.iloc[2:].rescored.isna().all()
    base = df[df.is_baseline]
    s = summarise(df, hp, None)
    assert s["snippet_mean_divergence"] == pytest.approx(base.screen.mean()), (
        "the baseline is the first round's unbiased mean"
    )
    assert s["ratio_top_rescored_vs_snippets"] == pytest.approx(
        df[~df.is_baseline].head(2).rescored.mean() / base.screen.mean()
    )
    # the bootstrap CI of the ratio against one recomputed by hand (each side resampled on its own)
    top2 = df[~df.is_baseline].head(2).rescored.to_numpy()
    rng = np.random.default_rng(1)
    ia, ib = rng.integers(0, 2, (20000, 2)), rng.integers(0, len(base), (20000, len(base)))
    ratios = top2[ia].mean(1) / base.screen.to_numpy()[ib].mean(1)
    ref = np.quantile(ratios, [0.025, 0.975])
    np.testing.assert_allclose(s["ratio_ci95"], ref, rtol=0.1)
    assert s["ratio_ci95"][0] <= s["ratio_top_rescored_vs_snippets"] <= s["ratio_ci95"][1]
    vs = s["top_vs_snippets"]  # the same two sets: difference of means and a permutation test
    assert vs["diff"] == pytest.approx(top2.mean() - base.screen.mean()) and (vs["n_a"], vs["n_b"]) == (2, len(base))
    assert vs["diff_low"] <= vs["diff"] <= vs["diff_high"] and 0 < vs["p"] <= 1


def test_kill_minus_nine_then_rerun_equals_uninterrupted(pair, tmp_path):
    """The stage as the rule runs it: killed with SIGKILL after a checkpoint, rerun, same prompt bytes."""
    import os
    import signal
    import subprocess
    import time

    from conftest import job_command
    from lmdelta.corpus import iter_builtin_documents

    corpus = tmp_path / "corpus.parquet"
    texts = [d.text for d in iter_builtin_documents("python_docs") if len(d.text) > 400][:16]
    pd.DataFrame({"doc_id": [f"d{i}" for i in range(len(texts))], "text": texts}).to_parquet(corpus)
    run = {
        "corpus": "c",
        "n_tokens": 3,
        "seq_len": 16,
        "batch": 2,
        "steps": 300,
        "eval_every": 50,
        "eval_windows": 4,
        "checkpoint_every": 5,
        "autocast": "none",
        "patience": 100,
    }
    spec = {"names": ["a", "b"], "run": run, "load_options": [CPU, CPU], "formats": [{}, {}]}

    def command(name):
        out = tmp_path / name
        return job_command(
            tmp_path / "jobs",
            "softprompt",
            name=name,
            inputs={"a": pair / "a", "b": pair / "b", "corpus": corpus},
            outputs={
                "prompt": out / "prompt.safetensors",
                "metrics": out / "metrics.csv",
                "png": out / "curve.png",
                "summary": out / "summary.json",
            },
            params={"spec": spec, "checkpoints": out / "ckpt"},
            wildcards={"pair": "p", "run": "r"},
        )

    env = {**os.environ, "PYTHONPATH": str(__import__("conftest").ROOT / "workflow")}
    assert subprocess.run(command("whole"), env=env, capture_output=True).returncode == 0
    proc = subprocess.Popen(command("cut"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "cut" / "ckpt" / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["step"] >= 20:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "prompt.safetensors").exists(), "killed mid-training: no finished artifact"
    assert json.loads(state.read_text())["step"] < 300
    assert subprocess.run(command("cut"), env=env, capture_output=True).returncode == 0
    assert (tmp_path / "cut" / "prompt.safetensors").read_bytes() == (
        tmp_path / "whole" / "prompt.safetensors"
    ).read_bytes()
    whole = pd.read_csv(tmp_path / "whole" / "metrics.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "cut" / "metrics.csv").drop(columns="seconds"), whole)
