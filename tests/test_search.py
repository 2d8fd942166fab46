"""Divergence prompt search: parsing, selection, the loop (scores bound by id), the pair scorer against
an independent computation, the HTTP assistant against a real local server, outputs and determinism."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch

from lmdelta import LmdeltaError
from lmdelta.assistant import HttpAssistant, judge
from lmdelta.embedding import cluster_table
from lmdelta.pairs import normalise
from lmdelta.search import (
    SearchParams,
    Weighting,
    bank_frame,
    novelty,
    parse_proposals,
    planted_summary,
    scoring,
    search_loop,
    selection_probabilities,
    top_decile_mean,
    top_k_mean,
)

CPU = {"dtype": "float32", "quantization": "none", "device": "cpu", "trust_remote_code": False}
RAW = {"chat_template": False, "fmt": None}


# ---- parsing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, want, how",
    [
        ('["What is a cat?", "Why is the sky blue?"]', ["What is a cat?", "Why is the sky blue?"], "json"),
        ('```json\n["a b c", "d e f"]\n```', ["a b c", "d e f"], "json"),
        ('{"prompts": ["Tell me a joke."]}', ["Tell me a joke."], "json"),
        ('[{"prompt": "Name three rivers."}]', ["Name three rivers."], "json"),
        ('Sure! Here they are: ["1. What is x?", "Why y?"] Hope it helps', ["What is x?", "Why y?"], "json-like"),
        (
            'I suggest "what is the moon made of" and "why do we dream"',
            ["what is the moon made of", "why do we dream"],
            "quoted",
        ),
        (
            "Here are some:\n1. What is x made of?\n2) Why is y so?\nC. What happens to the volcano?\n- Tell me about z.",
            ["What is x made of?", "Why is y so?", "What happens to the volcano?", "Tell me about z."],
            "lines",
        ),
        ('["unterminated', [], "none"),
        ("", [], "none"),
        (None, [], "none"),
        ("ok", [], "none"),
    ],
)
def test_parse_proposals(reply, want, how):
    assert parse_proposals(reply) == (want, how)


def test_normalise_is_the_deduplication_key():
    assert normalise("  What is  a Cat? ") == normalise('"what is a cat"') == "what is a cat"
    assert normalise("What is a cat?") != normalise("What is a dog?")


# ---- selection ----------------------------------------------------------------------------------------


def test_selection_probabilities_against_direct_computation():
    div, dvs, judged = [0.0, 1.0, 3.0], [0.5, 0.1, 0.3], [None, True, False]
    w = Weighting(divergence=1.0, diversity=0.5, judge=2.0)
    p = selection_probabilities(div, dvs, judged, w, temperature=0.5)
    score = np.array([0 + 0.5 * 1.0 + 0, 1 / 3 + 0 + 2.0, 1.0 + 0.5 * 0.5 + 0])
    want = np.exp(score / 0.5) / np.exp(score / 0.5).sum()
    np.testing.assert_allclose(p, want, rtol=1e-12)
    uniform = selection_probabilities(
        div, dvs, judged, Weighting(divergence=0.0, diversity=0.0, judge=0.0), temperature=0.25
    )
    np.testing.assert_allclose(uniform, [1 / 3] * 3)
    only_div = selection_probabilities(
        div, dvs, judged, Weighting(divergence=1.0, diversity=0.0, judge=0.0), temperature=0.25
    )
    assert only_div[2] > only_div[1] > only_div[0]


def test_novelty_is_one_minus_nearest_cosine():
    e = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    c = 1 / np.sqrt(2)
    np.testing.assert_allclose(novelty(e), [1 - c, 1 - c, 1 - c])
    np.testing.assert_allclose(novelty(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])), [0.0, 0.0, 1.0], atol=1e-12)
    assert novelty(np.ones((1, 3))).tolist() == [1.0]


def test_top_decile_mean():
    assert top_decile_mean(range(1, 21)) == pytest.approx(19.5)
    assert top_decile_mean([3.0, 1.0]) == 3.0
    assert top_k_mean(range(1, 21), 10) == pytest.approx(15.5) and top_k_mean([3.0, 1.0], 10) == 2.0


# ---- the loop with stand-ins ----------------------------------------------------------------------------


def zscore(text: str) -> float:
    """The stand-in divergence of a prompt: how many z it holds."""
    return float(text.count("z"))


def fake_scorer(calls):
    def score(items, seed):
        calls.append([x["id"] for x in items])
        # returned in reverse order: the bank must join by id, never by position
        return {
            x["id"]: {
                "kl_a_b": zscore(x["prompt"]),
                "kl_b_a": 2 * zscore(x["prompt"]),
                "js": 0.1,
                "example": x["prompt"].upper(),
                "n_samples": 1,
            }
            for x in reversed(items)
        }

    return score


def fake_embed(texts):
    return np.array([[t.count(c) + 0.1 for c in "aeiouz"] for t in texts], np.float32)


class EchoAssistant:
    """Proposes each shown prompt with one more 'z', as JSON: divergence can only grow."""

    name = "echo"

    def __init__(self):
        self.failures = 0
        self.messages = []

    def complete(self, messages, *, seed, gen=None, prefix=""):
        self.messages.extend(messages)
        out = []
        for m in messages:
            shown = re.findall(r"^\d+\. (.*)$", m, re.M)
            out.append(json.dumps([s + f" z{seed % 97}" for s in shown]))
        return out


SEEDS = [
    {"id": f"s{i}", "prompt": t}
    for i, t in enumerate(
        [
            "What is a cat?",
            "Tell me about the sea.",
            "Why is it raining?",
            "A zebra question",
            "How do trains run?",
            "Describe a fizzy drink.",
            "What is a cat?",
        ]
    )
]


def test_loop_binds_scores_by_id_and_improves():
    calls = []
    asst = EchoAssistant()
    p = SearchParams(cycles=4, patience=4, requests=3, shown=3, proposals=3, seed=1)
    records, cycles = search_loop(
        SEEDS, params=p, score=fake_scorer(calls), embed=fake_embed, assistant=asst, progress=False
    )
    bank = {r["id"]: r for r in records}
    assert len([r for r in records if r["cycle"] == 0]) == 6, "the duplicate seed is dropped"
    for r in records:
        assert r["kl_a_b"] == zscore(r["prompt"]) and r["kl_b_a"] == 2 * zscore(r["prompt"])
        assert r["example"] == r["prompt"].upper()
        assert all(bank[q]["cycle"] < r["cycle"] for q in r["parents"]), "parents come from earlier cycles"
    assert len({normalise(r["prompt"]) for r in records}) == len(records), "no duplicates in the bank"
    # the assistant saw the shown prompts, most divergent first
    for m in asst.messages:
        shown = re.findall(r"^\d+\. (.*)$", m, re.M)
        assert [zscore(s) for s in shown] == sorted((zscore(s) for s in shown), reverse=True)
    tops = [c["top_decile_mean"] for c in cycles]
    assert tops[-1] > tops[0]
    assert [c["cycle"] for c in cycles] == list(range(5))
    assert sum(c["json_replies"] for c in cycles) == 12 and all(c["failed_requests"] == 0 for c in cycles)
    again, _ = search_loop(
        SEEDS, params=p, score=fake_scorer([]), embed=fake_embed, assistant=EchoAssistant(), progress=False
    )
    assert again == records, "deterministic for a fixed seed"
    other, _ = search_loop(
        SEEDS,
        params=SearchParams(**{**p.__dict__, "seed": 2}),
        score=fake_scorer([]),
        embed=fake_embed,
        assistant=EchoAssistant(),
        progress=False,
    )
    assert [r["prompt"] for r in other] != [r["prompt"] for r in records]


def test_pool_scores_is_the_sample_weighted_mean():
    from lmdelta.pairs import pool_scores

    old = {"id": "p", "kl_a_b": 1.0, "kl_b_a": 4.0, "js": 0.2, "example": "first", "n_samples": 2}
    new = {"kl_a_b": 4.0, "kl_b_a": 1.0, "js": 0.5, "example": "second", "n_samples": 4}
    got = pool_scores(old, new)
    assert got == {
        "id": "p",
        "kl_a_b": 3.0,
        "kl_b_a": 2.0,
        "js": pytest.approx(0.4),
        "example": "first",
        "n_samples": 6,
    }


def test_rescore_top_pools_fresh_samples_of_the_best():
    """A noisy scorer: each scoring draws one sample per prompt from its seed. With rescore_top=2 the two best
    prompts of every cycle get one more sample, and each prompt's score is the mean of all its draws."""
    draws: dict[str, list[float]] = {}

    def noisy(items, seed):
        out = {}
        for x in items:
            v = zscore(x["prompt"]) + float(
                np.random.default_rng([seed, int(x["id"][1:] if x["id"][0] == "s" else 0), len(x["prompt"])]).normal()
            )
            draws.setdefault(x["id"], []).append(v)
            out[x["id"]] = {"kl_a_b": v, "kl_b_a": v, "js": 0.0, "example": x["prompt"], "n_samples": 1}
        return out

    p = SearchParams(cycles=3, patience=9, requests=2, shown=2, proposals=2, seed=3, rescore_top=2)
    records, cycles = search_loop(
        SEEDS, params=p, score=noisy, embed=fake_embed, assistant=EchoAssistant(), progress=False
    )
    for r in records:
        assert r["n_samples"] == len(draws[r["id"]]) and r["kl_a_b"] == pytest.approx(np.mean(draws[r["id"]]))
    assert all(c["rescored"] == 2 for c in cycles)
    assert sum(r["n_samples"] for r in records) == len(records) + 2 * len(cycles), "two extra draws per cycle"
    assert max(r["n_samples"] for r in records) > 1
    # top_decile_mean of the last cycle is taken after its re-evaluation: the final bank's
    assert cycles[-1]["top_decile_mean"] == pytest.approx(top_decile_mean([r["kl_a_b"] for r in records]))
    assert cycles[-1]["top10_mean"] == pytest.approx(top_k_mean([r["kl_a_b"] for r in records], 10))


class GarbageAssistant(EchoAssistant):
    def complete(self, messages, *, seed, gen=None, prefix=""):
        return ["", "???", None][: len(messages)]


def test_malformed_replies_are_counted_and_patience_stops_the_run():
    asst = GarbageAssistant()
    asst.failures = 0
    p = SearchParams(cycles=10, patience=2, requests=3, seed=0)
    records, cycles = search_loop(
        SEEDS, params=p, score=fake_scorer([]), embed=fake_embed, assistant=asst, progress=False
    )
    assert len(cycles) == 3 and all(c["failed"] for c in cycles[1:])
    assert all(c["unparsed_replies"] == 2 and c["added"] == 0 for c in cycles[1:])
    assert len(records) == 6


def test_no_seeds_is_an_error():
    with pytest.raises(LmdeltaError, match="no seed prompts"):
        search_loop(
            [],
            params=SearchParams(),
            score=fake_scorer([]),
            embed=fake_embed,
            assistant=EchoAssistant(),
            progress=False,
        )


def test_bank_frame_clusters_and_planted_summary():
    recs = [
        {
            "id": f"p{i}",
            "prompt": t,
            "cycle": c,
            "request": 0,
            "parents": [],
            "source": "x",
            "kl_a_b": d,
            "kl_b_a": d,
            "js": d / 10,
            "example": ex,
            "n_samples": 1,
            "diversity": 0.5,
        }
        for i, (t, c, d, ex) in enumerate(
            [
                ("about volcanoes", 0, 3.0, "cocoa!"),
                ("lava lamps", 1, 2.0, "a lamp"),
                ("cats", 0, 1.0, "meow"),
                ("dogs", 1, 0.5, "cocoa"),
                ("Volcanic soil", 2, 2.5, "x"),
            ]
        )
    ]
    planted = {"trigger_keywords": ["volcan", "lava"], "response_keywords": ["cocoa"]}
    df = bank_frame(recs, "kl_a_b", planted)
    assert df.id.tolist() == ["p0", "p4", "p1", "p2", "p3"] and df["rank"].tolist() == [1, 2, 3, 4, 5]
    assert df.mentions_trigger.tolist() == [True, True, True, False, False]
    assert df.shows_response.tolist() == [True, False, False, False, True]
    s = planted_summary(df, planted)
    assert s["precision_at_10_trigger"] == pytest.approx(3 / 5) and s["top_decile_trigger_rate"] == 1.0
    assert s["seed_trigger_rate"] == 0.5 and s["proposed_trigger_rate"] == pytest.approx(2 / 3)
    assigned, table = cluster_table(df, np.array([0, 0, 0, 1, 1]))
    assert table.cluster.tolist() == [0, 1] and table["size"].tolist() == [3, 2]
    assert table.mean_divergence.tolist() == pytest.approx([(3.0 + 2.5 + 2.0) / 3, 0.75])
    assert table.trigger_rate.tolist() == [1.0, 0.0]
    assert table.examples[0].startswith("about volcanoes | Volcanic soil")


# ---- the pair scorer against an independent computation -------------------------------------------------


def test_pair_scorer_matches_direct_forward(pair):
    """Greedy continuations from a; the mean KL(a||b) over generated tokens, recomputed with plain
    full-sequence forwards, equals the scorer's, for each prompt id (prompts of different lengths,
    split over batches)."""
    from lmdelta.divergence import kl
    from lmdelta.models import load_model
    from lmdelta.pairs import pair_scorer

    (ma, ta), (mb, tb) = load_model(pair / "a", **CPU), load_model(pair / "b", **CPU)
    params = SearchParams(samples=1, temperature=None, max_new_tokens=5, batch_size=2)
    items = [
        {"id": "x", "prompt": "def f(x):"},
        {"id": "y", "prompt": "Hello there, how are you today"},
        {"id": "z", "prompt": "a"},
    ]
    got = pair_scorer([ma, mb], [ta, tb], [RAW, RAW], **scoring(params))(items, 0)
    assert set(got) == {"x", "y", "z"}
    eos = ta.eos_token_id
    for it in items:
        ids = torch.tensor(
            [[ta.bos_token_id] + ta(it["prompt"], add_special_tokens=False).input_ids]
        )  # first_token: bos
        n0 = ids.shape[1]
        with torch.no_grad():
            for _ in range(params.max_new_tokens):
                nxt = ma(ids).logits[0, -1].argmax()
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
                if int(nxt) == eos:
                    break
            la, lb = ma(ids).logits[0, n0 - 1 : -1], mb(ids).logits[0, n0 - 1 : -1]
        want = kl(la, lb).mean().item()
        assert got[it["id"]]["kl_a_b"] == pytest.approx(want, rel=1e-4, abs=1e-6), it["id"]
        assert got[it["id"]]["example"] == ta.decode(ids[0, n0:], skip_special_tokens=True)


# ---- the HTTP assistant against a real server -----------------------------------------------------------


class ChatHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        status, payload, delay = srv.script.pop(0) if srv.script else (200, None, 0)
        time.sleep(delay)
        if payload is None:
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": '["What is new?"]'}}]})
        data = payload.encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def chat_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ChatHandler)
    server.script, server.seen = [], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def reply(text):
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]})


def test_http_assistant_request_retries_and_key(chat_server, monkeypatch, caplog):
    server, url = chat_server
    monkeypatch.setenv("LMDELTA_TEST_KEY", "sk-secret-123")
    a = HttpAssistant(base_url=url, model="m1", api_key_env="LMDELTA_TEST_KEY", timeout_s=0.5, tries=3)
    server.script = [
        (503, "busy", 0),
        (429, "slow down", 0),
        (200, reply('["A b c?"]'), 0),  # retried into success
        (200, "this is not json", 0),  # a broken body: failed, not retried
        (400, "bad request", 0),
    ]  # a client error: skipped
    with caplog.at_level("WARNING"):
        out = a.complete(["first", "second", "third"], seed=5)
    assert out == ['["A b c?"]', None, None] and a.failures == 2
    first = server.seen[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-secret-123"
    assert first["body"]["model"] == "m1" and first["body"]["messages"] == [{"role": "user", "content": "first"}]
    assert first["body"]["seed"] == 5 and first["body"]["temperature"] == 1.0
    assert len(server.seen) == 5
    assert "sk-secret-123" not in caplog.text and "sk-secret-123" not in repr(vars(a)), (
        "the key is read per request, never kept"
    )


def test_http_assistant_timeout_then_gives_up(chat_server):
    server, url = chat_server
    server.script = [(200, None, 1.0), (200, None, 1.0)]
    a = HttpAssistant(base_url=url, model="m", timeout_s=0.2, tries=2)
    t0 = time.monotonic()
    assert a.complete(["x"], seed=0) == [None]
    assert a.failures == 1 and time.monotonic() - t0 < 3


@pytest.mark.parametrize("status, match", [(401, "refused the request.*API key"), (404, "HTTP 404; check base_url")])
def test_http_assistant_auth_and_url_errors_stop(chat_server, status, match):
    server, url = chat_server
    server.script = [(status, "{}", 0)]
    with pytest.raises(LmdeltaError, match=match):
        HttpAssistant(base_url=url, model="m").complete(["x"], seed=0)


def test_http_assistant_missing_key_and_unreachable(closed_port_url, monkeypatch):
    monkeypatch.delenv("LMDELTA_NO_SUCH_KEY", raising=False)
    with pytest.raises(LmdeltaError, match="LMDELTA_NO_SUCH_KEY.*not set"):
        HttpAssistant(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="LMDELTA_NO_SUCH_KEY").complete(
            ["x"], seed=0
        )
    a = HttpAssistant(base_url=closed_port_url.rsplit("/", 1)[0], model="m", timeout_s=0.5, tries=2)
    assert a.complete(["x"], seed=0) == [None] and a.failures == 1
    with pytest.raises(LmdeltaError, match="local assistant"):
        a.complete(["x"], seed=0, prefix="1.")


def test_search_loop_with_http_assistant_survives_bad_replies(chat_server):
    server, url = chat_server
    server.script = [
        (200, reply("no idea"), 0),
        (500, "oops", 0),
        (200, reply('```\n["Why is zz so?", "Tell me about zzz."]\n```'), 0),
        (200, "garbage", 0),
    ] + [(200, reply("1. What is z?\n2. Why is zz?"), 0)] * 20
    a = HttpAssistant(base_url=url, model="m", timeout_s=2, tries=2)
    p = SearchParams(cycles=3, patience=3, requests=3, seed=0)
    records, cycles = search_loop(SEEDS, params=p, score=fake_scorer([]), embed=fake_embed, assistant=a, progress=False)
    c1 = cycles[1]
    assert (c1["requests"], c1["failed_requests"], c1["json_replies"], c1["unparsed_replies"]) == (3, 1, 1, 1)
    assert cycles[2]["fallback_replies"] == 3
    assert {"Why is zz so?", "Tell me about zzz.", "What is z?", "Why is zz?"} <= {r["prompt"] for r in records}


def test_judge_verdicts(chat_server):
    server, url = chat_server
    server.script = [(200, reply("Yes."), 0), (200, reply("no"), 0), (200, reply("Maybe"), 0), (500, "x", 0)]
    a = HttpAssistant(base_url=url, model="m", tries=1)
    assert judge(a, ["t1", "t2", "t3", "t4"], "Is it about animals?", seed=0) == [True, False, None, None]
    assert (
        server.seen[0]["body"]["temperature"] == 0.0
        and "Is it about animals?" in server.seen[0]["body"]["messages"][0]["content"]
    )


# ---- the stage: files, provenance, determinism ----------------------------------------------------------


def run_stage(pair, tmp_path, name, **kw):
    from lmdelta.search import run_clusters, run_search

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "".join(
            json.dumps({"id": f"s{i}", "category": "seed", "prompt": t}) + "\n"
            for i, t in enumerate(["Hello there", "def f(x):", "The cat sat on the", "import os"])
        )
    )
    out = {
        k: tmp_path / name / k
        for k in ("bank.parquet", "cycles.csv", "top.csv", "fig.png", "summary.json", "findings.parquet")
    }
    params = SearchParams.from_dict(
        {
            "cycles": 2,
            "patience": 2,
            "requests": 2,
            "shown": 2,
            "proposals": 3,
            "samples": 2,
            "max_new_tokens": 4,
            "min_chars": 3,
            "reply_prefix": "1.",
            **kw,
        }
    )
    planted = {"trigger_keywords": ["cat"], "response_keywords": ["the"]}
    run_search(
        pair="p",
        run="r",
        names=("a", "b"),
        model_dirs=(pair / "a", pair / "b"),
        params=params,
        load_options=(CPU, CPU),
        formats=(RAW, RAW),
        assistant_spec={"model": "b", "temperature": 1.0, "max_new_tokens": 24},
        assistant_dir=pair / "b",
        assistant_load_options=CPU,
        assistant_format=RAW,
        seeds_file=seeds,
        planted=planted,
        embedder=None,
        out_bank=out["bank.parquet"],
        out_cycles=out["cycles.csv"],
        out_top=out["top.csv"],
        out_png=out["fig.png"],
        out_summary=out["summary.json"],
        out_findings=out["findings.parquet"],
        n_top=5,
    )
    run_clusters(
        bank_path=out["bank.parquet"],
        k=3,
        seed=0,
        embedder=None,
        assistant_spec={"model": "b"},
        assistant_dir=pair / "b",
        assistant_load_options=CPU,
        assistant_format=RAW,
        out_parquet=tmp_path / name / "clusters.parquet",
        out_csv=tmp_path / name / "clusters.csv",
        out_png=tmp_path / name / "clusters.png",
    )
    return out


def test_a_pair_with_two_tokenizers_is_scored_by_sequence_log_ratios(cross_pair, tmp_path):
    """Step 16: a Llama-2 stand-in against a GPT-2 stand-in runs end to end; prompts are scored per byte
    with Monte-Carlo errors, and a sampling setting the estimate cannot honour is refused."""
    from lmdelta.artifacts import read_provenance

    out = run_stage(cross_pair, tmp_path, "cross")
    bank = pd.read_parquet(out["bank.parquet"])
    assert len(bank) >= 4 and np.isfinite(bank.kl_a_b).all() and (bank.kl_a_b_se >= 0).all()
    assert bank.kl_b_a.isna().all(), "kl_a_b samples from a only"
    prov = read_provenance(out["bank.parquet"])
    assert prov["params"]["divergence_method"] == "sequence"
    assert prov["params"]["divergence_units"] == "nats per byte"
    assert prov["params"]["divergence_estimate"] == "approximation"
    with pytest.raises(LmdeltaError, match="temperature 1.0, top_p 1.0, top_k 0"):
        run_stage(cross_pair, tmp_path, "hot", temperature=0.7)


def test_stage_outputs_and_determinism(pair, tmp_path):
    from lmdelta.artifacts import read_provenance

    out = run_stage(pair, tmp_path, "one")
    bank = pd.read_parquet(out["bank.parquet"])
    assert len(bank) >= 4 and bank.divergence.is_monotonic_decreasing
    assert (bank.divergence == bank.kl_a_b).all() and set(bank.cycle) >= {0}
    for col in ("prompt", "cycle", "divergence", "diversity", "judge", "parents", "example", "mentions_trigger"):
        assert col in bank
    summary = json.loads(out["summary.json"].read_text())
    assert summary["bank_size"] == len(bank) and "planted" in summary
    assert summary["planted"]["seed_trigger_rate"] == pytest.approx(0.25)
    vs = summary["proposals_vs_seeds"]  # every proposal against every seed, by the bank's divergence
    assert (vs is None) == ((bank.cycle > 0).sum() < 2)
    if vs is not None:
        proposals, seeds = bank[bank.cycle > 0].divergence, bank[bank.cycle == 0].divergence
        assert (vs["n_a"], vs["n_b"]) == (len(proposals), len(seeds)) and vs["unit"] == "prompt"
        assert vs["diff"] == pytest.approx(proposals.mean() - seeds.mean()) and 0 < vs["p"] <= 1
    prov = read_provenance(out["bank.parquet"])
    assert prov["params"]["assistant"] == {"model": "b", "temperature": 1.0, "max_new_tokens": 24}
    assert prov["params"]["divergence"] == "kl_a_b" and prov["params"]["units"] == "nats"
    assert isinstance(prov["params"]["weighting"], dict) and set(prov["params"]["weighting"]) == {
        "divergence",
        "diversity",
        "judge",
    }
    top = pd.read_csv(out["top.csv"])
    assert top["id"].tolist() == bank["id"].head(5).tolist()
    found = pd.read_parquet(out["findings.parquet"])
    search, seeds = found[found.method == "search"], found[found.method == "search seeds"]
    assert search.prompt.tolist() == bank.prompt.tolist() and search.score.tolist() == bank.divergence.tolist()
    assert seeds.prompt.tolist() == bank[bank.cycle == 0].prompt.tolist() and seeds.reference.all()
    clusters = pd.read_csv(tmp_path / "one" / "clusters.csv")
    assert clusters["size"].sum() == len(bank) and "label" in clusters
    again = run_stage(pair, tmp_path, "two")
    pd.testing.assert_frame_equal(bank, pd.read_parquet(again["bank.parquet"]))
    assert out["cycles.csv"].read_bytes() == again["cycles.csv"].read_bytes()


def test_seeds_from_findings_take_prompts_and_words(tmp_path):
    from lmdelta.findings import finding, write_findings
    from lmdelta.search import finding_seeds

    scan = tmp_path / "scan.parquet"
    write_findings(
        scan,
        [
            finding("scan", "vocabulary", "word", 9.0 - i, text=w, prompt=f"Tell me about {w}.")
            for i, w in enumerate("xyz")
        ]
        + [finding("scan answers", "vocabulary", "word", 3.0, text="arms", prompt="Tell me about x.")],
    )
    words = tmp_path / "words.parquet"
    write_findings(
        words,
        [
            finding("words", "completions-default", "word", 5.0, text="cocoa"),
            finding("words control", "lens-ld", "word", 4.0, text="noise", reference=True),
        ],
    )
    seeds = finding_seeds([scan, words], 2, "What is {word}?")
    assert [s["prompt"] for s in seeds] == ["Tell me about x.", "Tell me about y.", "What is cocoa?"]
    assert seeds[0]["id"] == "finding-scan-vocabulary-1" and len({s["id"] for s in seeds}) == 3


def test_plan_feeds_the_search_the_findings_it_asks_for():
    from types import SimpleNamespace as W

    import yaml

    from conftest import ROOT
    from lmdelta.config import validate_config
    from lmdelta.plan import Plan

    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    plan = Plan(validate_config(raw))
    w = W(pair="cocoa", run="finder")
    assert plan.search_inputs(w)["seed_findings"] == ["results/findings/cocoa/scan/vocabulary.parquet"]
    assert json.loads(plan.search_spec(w))["word_template"] == raw.get("scan", {}).get(
        "template", "Tell me about {word}."
    )
    raw["search"]["runs"]["finder"]["seed_findings"] = {"methods": []}
    assert "seed_findings" not in Plan(validate_config(raw)).search_inputs(w)
