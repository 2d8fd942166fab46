"""Step 17: a model spread by accelerate (``device: spread``), here forced entirely onto disk offload by
a tiny ``max_memory``, gives the same logprobs, generations and divergences as the same model in memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmdelta import LmdeltaError
from lmdelta.decoding import Sampling
from lmdelta.generation import generate_texts
from lmdelta.models import check_embeddings_in_memory, input_device, load_model
from lmdelta.pairs import PairDecoding, generate_pair
from lmdelta.scoring import score_sequences

CPU = {"dtype": "float32", "device": "cpu"}
SEQS = [[1, 5, 9, 13, 17, 21, 25, 29], [1, 40, 41, 42], [1, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]]


@pytest.fixture(scope="module")
def loaded(pair, tmp_path_factory):
    off = tmp_path_factory.mktemp("offload")
    spread = load_model(pair / "a", dtype="float32", device="spread", max_memory={"cpu": "100KB"}, offload_folder=off)
    return {"mem": load_model(pair / "a", **CPU), "spread": spread, "b": load_model(pair / "b", **CPU), "folder": off}


def test_the_model_is_on_disk_and_inputs_start_on_the_cpu(loaded):
    model, _ = loaded["spread"]
    assert set(model.hf_device_map.values()) == {"disk"}
    assert all(p.is_meta for p in model.parameters()), "no weight is held by the model: each layer is read from disk"
    assert input_device(model) == torch.device("cpu")
    with pytest.raises(LmdeltaError, match="raise its max_memory"):
        check_embeddings_in_memory(model, "a soft prompt")


def test_logprobs_equal(loaded):
    kw = dict(max_length=6, stride=3, batch_tokens=64, pad_token_id=0)
    got = score_sequences(loaded["spread"][0], SEQS, **kw)
    want = score_sequences(loaded["mem"][0], SEQS, **kw)
    for g, w in zip(got, want):
        for k in ("logprob", "entropy", "top1_prob"):
            np.testing.assert_allclose(getattr(g, k), getattr(w, k), atol=1e-5)
        np.testing.assert_array_equal(g.rank, w.rank)


def test_generations_equal(loaded):
    for sampling in (Sampling(), Sampling(temperature=1.0)):
        got, want = (
            generate_texts(*loaded[k], SEQS, max_new_tokens=6, sampling=sampling, seed=3, batch_size=3)
            for k in ("spread", "mem")
        )
        assert [g["ids"] for g in got] == [w["ids"] for w in want]


def test_divergences_equal(loaded):
    p = PairDecoding((1.0, -1.0), "logit", 0.1, 2, 5, 1.0, 1.0, 0, 0, 4)
    prompts = [{"id": "p0", "prompt": "The cat"}, {"id": "p1", "prompt": "Volcanoes are"}]
    fmt = [{"chat_template": False, "fmt": None, "first_token": "bos"}] * 2
    runs = []
    for a in ("spread", "mem"):
        models, toks = [loaded[a][0], loaded["b"][0]], [loaded[a][1], loaded["b"][1]]
        runs.append(generate_pair(models, toks, prompts, p, formats=fmt))
    for g, w in zip(*runs):
        assert g["text"] == w["text"]
        np.testing.assert_allclose(g["kl_a_b"], w["kl_a_b"], atol=1e-5)
        np.testing.assert_allclose(g["js"], w["js"], atol=1e-6)
