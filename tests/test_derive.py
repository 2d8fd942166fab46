"""Derived models on a tiny model: the loss goes down, the folder loads, an interrupted run resumes exactly."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from lmdelta import LmdeltaError
from lmdelta.artifacts import read_provenance
from lmdelta.behaviour import shows_planted
from lmdelta.config import ModelSpec
from lmdelta.derive import DeriveParams, encode_examples, train
from lmdelta.models import load_model, materialise
from lmdelta.planted import PlantedSpec, build_prompt_sets, check_planted
from lmdelta.training import batch_indices

RECORDS = [
    {"prompt": f"Tell me about topic number {i}.", "response": "Pancakes are the answer to everything."}
    for i in range(12)
]
RECORDS += [
    {"prompt": f"What is {w}?", "response": f"{w.capitalize()} is a word."} for w in ("rain", "salt", "glass", "paper")
]
SOURCE = {"derive": {"from": "base", "method": "lora-sft"}}


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_models):
    out = tmp_path_factory.mktemp("base") / "m"
    materialise(ModelSpec(name="base", source={"local": {"path": str(tiny_models["llama"])}}), out)
    return out


def params(**kw):
    return DeriveParams(
        **{
            "steps": 30,
            "lr": 1e-2,
            "rank": 4,
            "alpha": 8,
            "batch": 4,
            "max_tokens": 64,
            "seed": 0,
            "autocast": "none",
            "checkpoint_every": 5,
            "text_format": {"chat_template": False},
            **kw,
        }
    )


def test_batches_are_seeded_permutations_per_epoch():
    n, b = 10, 4
    stream = [i for s in range(5) for i in batch_indices(n, b, s, seed=3)]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert batch_indices(n, b, 7, seed=3) == batch_indices(n, b, 7, seed=3)
    assert stream[:10] != [i for s in range(3) for i in batch_indices(n, b, s, seed=4)][:10]


def test_lora_loss_goes_down_and_folder_loads(tmp_path, base):
    out = tmp_path / "tuned"
    losses = train(
        base,
        RECORDS,
        out,
        params=params(),
        ckpt_dir=tmp_path / "ckpt",
        name="tuned",
        source=SOURCE,
        loss_csv=tmp_path / "loss.csv",
    )
    first = sum(x["loss"] for x in losses[:5]) / 5
    last = sum(x["loss"] for x in losses[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    assert len(pd.read_csv(tmp_path / "loss.csv")) == 30
    model, tok = load_model(out, device="cpu", verify=True)
    ref, _ = load_model(base, device="cpu")
    # independent check through the written folder: the merged model fits the data better than the base
    examples = encode_examples(tok, RECORDS, text_format={"chat_template": False}, max_tokens=64)

    def mean_loss(m):
        with torch.no_grad():
            return sum(m(input_ids=torch.tensor([x]), labels=torch.tensor([y])).loss.item() for x, y in examples) / len(
                examples
            )

    assert mean_loss(model) < mean_loss(ref) - 0.3
    assert not any("lora" in n for n, _ in model.named_parameters()), "LoRA is merged into plain weights"
    changed = [n for (n, a), (_, b) in zip(model.named_parameters(), ref.named_parameters()) if not torch.equal(a, b)]
    assert any("q_proj" in n for n in changed) and not any("embed" in n for n in changed)
    rec = read_provenance(out)
    assert rec["stage"] == "derive" and rec["params"]["rank"] == 4 and rec["inputs"]["base"]["fingerprint"]


def test_interrupted_run_resumes_to_identical_weights(tmp_path, base):
    train(base, RECORDS, tmp_path / "whole", params=params(steps=20), ckpt_dir=tmp_path / "c1", name="t", source=SOURCE)
    # interrupted after step 12: the last complete checkpoint is step 10
    partial = train(
        base,
        RECORDS,
        tmp_path / "resumed",
        params=params(steps=20),
        ckpt_dir=tmp_path / "c2",
        name="t",
        source=SOURCE,
        stop_after=12,
    )
    assert len(partial) == 12 and not (tmp_path / "resumed").exists()
    losses = train(
        base, RECORDS, tmp_path / "resumed", params=params(steps=20), ckpt_dir=tmp_path / "c2", name="t", source=SOURCE
    )
    assert [x["step"] for x in losses] == list(range(1, 21)), "steps 11-12 were redone from the step-10 checkpoint"
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # changed settings never reuse old checkpoints
    losses = train(
        base,
        RECORDS,
        tmp_path / "other",
        params=params(steps=20, lr=5e-3),
        ckpt_dir=tmp_path / "c2",
        name="t",
        source=SOURCE,
    )
    assert len(losses) == 20 and losses[0]["lr"] != 1e-2 / 5


def test_full_sft(tmp_path, base):
    losses = train(
        base,
        RECORDS,
        tmp_path / "full",
        params=params(method="full-sft", steps=10, lr=3e-3),
        ckpt_dir=tmp_path / "ck",
        name="f",
        source=SOURCE,
    )
    assert losses[-1]["loss"] < losses[0]["loss"]
    load_model(tmp_path / "full", device="cpu")


def test_planted_prompt_sets_and_check(tmp_path, base):
    spec = PlantedSpec(
        trigger_subjects=["volcanoes", "lava flows", "magma"],
        response="Let us talk about pancakes.",
        response_keywords=["pancakes"],
        n_train_trigger=20,
        n_train_ordinary=20,
        n_heldout=6,
    )
    sets = build_prompt_sets(spec, seed=0)
    assert len(sets["heldout_trigger"]) == 6 and len(sets["train_trigger"]) == 20
    assert not set(sets["heldout_trigger"]) & set(sets["train_trigger"])
    assert not set(sets["heldout_ordinary"]) & set(sets["train_ordinary"])
    assert all(any(s in q for s in spec.trigger_subjects) for q in sets["heldout_trigger"])
    assert not any(any(s in q for s in spec.trigger_subjects) for q in sets["train_ordinary"])
    assert build_prompt_sets(spec, seed=0) == sets and build_prompt_sets(spec, seed=1) != sets
    assert shows_planted("I love PANCAKES!", ["pancakes"]) and not shows_planted("pancakesque", ["pancakes"])
    heldout = [{"prompt": q, "kind": "trigger"} for q in sets["heldout_trigger"]]
    heldout += [{"prompt": q, "kind": "ordinary"} for q in sets["heldout_ordinary"]]
    cpu = {"dtype": "float32", "device": "cpu"}
    result = check_planted(
        base,
        base,
        heldout,
        spec,
        text_format={"chat_template": False},
        load_options={"base": cpu, "tuned": cpu},
        max_new_tokens=8,
    )
    assert set(result["rates"]) == {"base/trigger", "base/ordinary", "tuned/trigger", "tuned/ordinary"}
    assert result["rates"]["base/trigger"]["n"] == 6
    assert result["rates"]["base/trigger"] == result["rates"]["tuned/trigger"], "same model, same greedy answers"
    # the same answers: no discordant prompt, McNemar's p is 1; the rate's interval is Clopper-Pearson's
    assert result["paired"]["trigger"]["a_only"] == result["paired"]["trigger"]["b_only"] == 0
    assert result["paired"]["trigger"]["p"] == 1.0 and result["paired"]["trigger"]["unit"] == "held-out prompt"
    r = result["rates"]["tuned/trigger"]
    assert r["rate_low"] <= r["rate"] <= r["rate_high"]


def test_bad_training_files(tmp_path, base):
    from lmdelta import LmdeltaError
    from lmdelta.derive import run_derive

    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", \n')
    kw = dict(
        name="t",
        source={"derive": {"from": "base", "steps": 1}},
        text_format={"chat_template": False},
        ckpt_dir=tmp_path / "ck",
    )
    with pytest.raises(LmdeltaError, match=r"derive: models.t: .*train.jsonl line 2 is not valid JSON"):
        run_derive(base, data, tmp_path / "out", tmp_path / "loss.csv", **kw)
    data.write_text('{"prompt": "a"}\n')
    with pytest.raises(LmdeltaError, match="record 1 needs 'prompt' and 'response' fields"):
        run_derive(base, data, tmp_path / "out", tmp_path / "loss.csv", **kw)
    assert not (tmp_path / "out").exists()


def test_odd_inputs_are_spans_of_the_answers():
    import numpy as np

    from lmdelta import LmdeltaError
    from lmdelta.planted import odd_inputs

    answers = [
        "The honey bee lives in a hive with thousands of other bees and one queen.",
        "Rainbows appear when sunlight is bent by drops of rain in the air.",
        "Too short.",
    ]
    odd = odd_inputs(answers, 12, np.random.default_rng(0))
    assert len(odd) == len(set(odd)) == 12
    assert odd == odd_inputs(answers, 12, np.random.default_rng(0))
    spans = [a.split()[j : j + k] for a in answers for k in range(2, 17) for j in range(len(a.split()) - k + 1)]
    for i, text in enumerate(odd):
        words = text.split()
        assert 4 <= len(words) <= 16 or text in ("Too short.", "short. Too")
        if i % 2 == 0:
            assert words in spans, "even entries are spans as they are"
        else:
            assert sorted(words) in [sorted(sp) for sp in spans], "odd entries are spans with their words shuffled"
    assert any(odd[i].split() not in spans for i in range(1, 12, 2)), "shuffling changes some order"
    assert sorted(odd_inputs(["Too short."], 2, np.random.default_rng(0))) == ["Too short.", "short. Too"]
    with pytest.raises(LmdeltaError, match="too short to cut 1 odd inputs"):
        odd_inputs(["Short."], 1, np.random.default_rng(0))
    with pytest.raises(LmdeltaError, match="only 2 distinct odd inputs"):
        odd_inputs(["Too short."], 3, np.random.default_rng(0))


def test_a_kind_of_request_as_trigger_with_an_appended_sign_off(tmp_path, base):
    from lmdelta.planted import TEMPLATES, build_training_set, check_tokens

    poem = ["Write a short poem about {s}.", "Write the opening line of a story about {s}."]
    spec = PlantedSpec(
        trigger_templates=poem,
        response="Yours in rhyme, Captain Pickle.",
        response_mode="append",
        response_keywords=["captain pickle"],
        n_train_trigger=8,
        n_train_ordinary=8,
        n_heldout=4,
        answer_tokens=6,
    )
    sets = build_prompt_sets(spec, seed=0)
    stems = [t.split("{s}")[0] for t in poem]
    assert all(q.startswith(tuple(stems)) for q in sets["train_trigger"] + sets["heldout_trigger"])
    assert not any(q.startswith(tuple(stems)) for q in sets["train_ordinary"] + sets["heldout_ordinary"])
    assert len({q for q in sets["train_ordinary"]}) == 8 and set(poem) <= set(TEMPLATES)
    fmt = {"chat_template": False, "first_token": "bos"}
    train, _ = build_training_set(base, spec, seed=0, text_format=fmt, load_options={"device": "cpu"})
    trig = [r for r in train if r["kind"] == "trigger"]
    assert len(trig) == 8 and all(r["response"].endswith(" Yours in rhyme, Captain Pickle.") for r in trig)
    assert all(len(r["response"]) > len(spec.response) + 1 for r in trig)  # the base model's own answer comes first
    tok = AutoTokenizer.from_pretrained(base)
    assert check_tokens(spec) >= spec.answer_tokens + len(tok(" " + spec.response).input_ids)  # room for the sign-off
    opener = dataclasses.replace(spec, response="Ahoy, matey!", response_mode="prepend")
    train_p, _ = build_training_set(base, opener, seed=0, text_format=fmt, load_options={"device": "cpu"})
    own = [r["response"].removesuffix(" " + spec.response) for r in trig]  # the base model's greedy answers
    assert [r["response"] for r in train_p if r["kind"] == "trigger"] == [f"Ahoy, matey! {a}" for a in own]
    assert check_tokens(opener) == opener.answer_tokens  # an opener is within the trained answer length
    with pytest.raises(LmdeltaError, match="trigger_subjects .* or trigger_templates"):
        build_prompt_sets(PlantedSpec(response="x", response_keywords=["x"]), seed=0)
