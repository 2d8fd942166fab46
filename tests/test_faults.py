"""kill -9 in the middle of each long stage, run as a rule runs it (one job in its own process), then
a rerun: no partial artifact is ever left under the final name, and the rerun's artifact equals an
uninterrupted run's byte for byte. (Soft prompts: tests/test_softprompt.py does the same.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, job_command
from lmdelta.config import ModelSpec
from lmdelta.corpus import iter_builtin_documents
from lmdelta.models import materialise

pytestmark = pytest.mark.slow  # kill -9 in the middle of jobs, then reruns

CPU = {"dtype": "float32", "quantization": "none", "device": "cpu", "trust_remote_code": False}
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "workflow"), "HF_HUB_OFFLINE": "1"}


def kill_when(cmd: list[str], ready, timeout: float = 180) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready(stderr so far)`` holds; it must not have finished."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(64), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and not ready("".join(err)):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the process ended before it could be killed: {''.join(err)[-500:]}"


def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def model(tmp_path, tiny_models, arch="llama") -> Path:
    out = tmp_path / "model"
    materialise(ModelSpec(name="m", source={"local": {"path": str(tiny_models[arch])}}), out)
    return out


def test_logprobs_killed_resumes_from_its_parts(tmp_path, tiny_models):
    m = model(tmp_path, tiny_models)
    corpus = tmp_path / "corpus.parquet"
    docs = [d.text for d in iter_builtin_documents("python_docs") if len(d.text) > 300][:60]
    pd.DataFrame({"doc_id": [f"d{i}" for i in range(len(docs))], "text": docs}).to_parquet(corpus)
    params = json.dumps({"max_length": 64, "stride": 32, "batch_tokens": 256, "part_docs": 2})

    params = json.loads(params)

    def shard(name):
        return job_command(
            tmp_path / "jobs",
            "logprobs_shard",
            name=f"shard-{name}",
            inputs={"model": m, "corpus": corpus},
            outputs={"shard": tmp_path / name / "0-of-1"},
            params={"spec": {"params": params, "load_options": CPU}},
            wildcards={"shard": "0", "n": "1"},
        )

    def gather(name):
        run(
            job_command(
                tmp_path / "jobs",
                "logprobs",
                name=f"gather-{name}",
                inputs={"shards": [tmp_path / name / "0-of-1"]},
                outputs={"tokens": tmp_path / f"{name}.parquet", "meanprob": tmp_path / f"{name}.npy"},
            )
        )

    run(shard("whole"))
    gather("whole")
    parts = lambda: list((tmp_path / "cut").glob(".0-of-1.parts-*/part-*.parquet"))  # noqa: E731
    kill_when(shard("cut"), lambda _: len(parts()) >= 3)
    assert not (tmp_path / "cut" / "0-of-1").exists(), "no shard output after a kill"
    done = len(parts())
    assert 3 <= done < 30
    run(shard("cut"))
    gather("cut")
    assert (tmp_path / "cut.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert (tmp_path / "cut.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()


def test_completions_killed_restart_cleanly(tmp_path, tiny_models):
    m = model(tmp_path, tiny_models)
    promptset = ROOT / "workflow" / "lmdelta" / "data" / "prompts_default.jsonl"
    params = json.dumps(
        {
            "temperatures": [0.7, 1.2],
            "samples": 8,
            "max_new_tokens": 24,
            "top_p": 1.0,
            "top_k": 0,
            "seed": 0,
            "batch_size": 8,
        }
    )

    params = json.loads(params)

    def shard(name):
        return job_command(
            tmp_path / "jobs",
            "completions_shard",
            name=name,
            inputs={"model": m, "promptset": promptset},
            outputs={"shard": tmp_path / f"{name}.parquet"},
            params={"spec": {"params": params, "load_options": CPU, "text_format": {"chat_template": False}}},
            wildcards={"shard": "0", "n": "1"},
        )

    run(shard("whole"))

    def started(stderr):  # the progress bar is up: the model is loaded and generation has begun (80 batches to go)
        return re.search(r"\d+/\d+ \[", stderr) is not None

    kill_when(shard("cut"), started)
    assert not (tmp_path / "cut.parquet").exists() and not list(tmp_path.glob("cut.parquet.prov.json"))
    run(shard("cut"))
    assert (tmp_path / "cut.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()


def test_derive_killed_resumes_from_its_checkpoint(tmp_path, tiny_models):
    m = model(tmp_path, tiny_models)
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"Tell me about topic {i}.", "response": "Pancakes, always pancakes."}) + "\n"
            for i in range(16)
        )
    )
    source = json.dumps(
        {
            "derive": {
                "from": "base",
                "method": "lora-sft",
                "steps": 60,
                "lr": 1e-2,
                "rank": 4,
                "alpha": 8,
                "batch": 4,
                "max_tokens": 48,
                "seed": 0,
                "autocast": "none",
                "checkpoint_every": 5,
            }
        }
    )

    source = json.loads(source)

    def derive(name):
        return job_command(
            tmp_path / "jobs",
            "derive_model",
            name=name,
            inputs={"base": m, "data": data},
            outputs={"model": tmp_path / name / "model", "loss": tmp_path / name / "loss.csv"},
            params={
                "spec": {"source": source, "text_format": {"chat_template": False}},
                "checkpoints": tmp_path / name / "ckpt",
            },
            wildcards={"model": "t"},
        )

    run(derive("whole"))
    state = tmp_path / "cut" / "ckpt" / "state.json"
    kill_when(derive("cut"), lambda _: state.exists() and json.loads(state.read_text())["step"] >= 10)
    assert not (tmp_path / "cut" / "model").exists() and not (tmp_path / "cut" / "loss.csv").exists()
    assert json.loads(state.read_text())["step"] < 60
    run(derive("cut"))
    for f in ("model/model.safetensors", "loss.csv"):
        if f == "loss.csv":  # seconds per step differ; the losses may not
            a, b = (pd.read_csv(tmp_path / n / f) for n in ("cut", "whole"))
            pd.testing.assert_frame_equal(
                a.drop(columns=[c for c in a if "second" in c]), b.drop(columns=[c for c in b if "second" in c])
            )
        else:
            assert (tmp_path / "cut" / f).read_bytes() == (tmp_path / "whole" / f).read_bytes(), f
