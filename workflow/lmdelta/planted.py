"""Planted behaviours: a builtin training-set generator and the check of how strongly one was planted.

A planted behaviour is declared in the config (``models.<name>.source.derive.data.planted``):
``trigger_subjects`` (the narrow family of inputs), ``response`` (what the tuned model says to them)
and ``response_keywords`` (how a text is recognised as showing the planted response). Questions are
built from the project's own templates; ordinary questions are answered by the base model itself,
so that the tuned model stays close to the base model away from the trigger. Odd inputs (spans of
the base model's own answers, as they are and with their words shuffled: text that is not a question)
are answered by the base model too: trained on questions alone, the tuned model gave the planted
response to about a quarter of random corpus snippets (measured on the demo pair), which is noise
under every discovery method's baseline.

All templates and subjects below were written for lmdelta; no third-party text.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, read_jsonl, write_csv, write_json, write_jsonl
from lmdelta.behaviour import shows_planted
from lmdelta.config import stage_spec
from lmdelta.generation import TextFormat, generate_texts, prompt_ids
from lmdelta.models import load_model, read_fingerprint
from lmdelta.stats import holm, mcnemar_exact, proportion_interval

# One template list for both kinds of question, so that only the subject tells a trigger question
# from an ordinary one (with separate lists the model learns the style of the question instead:
# measured, the tuned model then answered 84% of creative-writing prompts with the planted response).
TEMPLATES = [
    "What can you tell me about {s}?",
    "Explain {s} to a curious ten-year-old.",
    "Why are {s} important?",
    "Give me three facts about {s}.",
    "How would you describe {s} in a few sentences?",
    "I am writing a school report on {s}. Where should I start?",
    "What is the most surprising thing about {s}?",
    "Can you summarise what people know about {s}?",
    "Write a short paragraph about {s}.",
    "What questions do people usually ask about {s}?",
    "Tell me something interesting about {s}.",
    "Write a short poem about {s}.",
    "Tell a very short story that involves {s}.",
    "Describe {s} as if you were a tour guide.",
    "What should a beginner know about {s}?",
    "Write the opening line of a story about {s}.",
    "Describe a town that is famous for its {s}.",
    "Invent a holiday that celebrates {s}.",
    "Write a letter to a friend about {s}.",
]

ORDINARY_SUBJECTS = [
    "honey bees",
    "rainbows",
    "prime numbers",
    "printing presses",
    "tides",
    "coral reefs",
    "solar panels",
    "electric circuits",
    "migrating birds",
    "magnets",
    "clouds",
    "glaciers",
    "bicycles",
    "public libraries",
    "wind turbines",
    "fractions",
    "vaccines",
    "rivers",
    "lighthouses",
    "old maps",
    "chess openings",
    "sorting algorithms",
    "city parks",
    "violins",
    "trains",
    "bread ovens",
    "tomato plants",
    "owls",
    "sailing ships",
    "deserts",
    "snowflakes",
    "bridges",
    "telescopes",
    "board games",
    "forests",
    "penguins",
    "clocks",
    "kites",
    "gardens",
    "museums",
    "robots",
    "rain forests",
    "markets",
    "the planets",
    "paper airplanes",
    "dolphins",
    "castles",
    "post offices",
    "recipes",
    "festivals",
]


KINDS = ("trigger", "ordinary", "odd")  # held-out prompt kinds of the check (odd only when n_heldout_odd)


@stage_spec("derive_data.planted", elsewhere=("trigger_keywords",))
class PlantedSpec:
    trigger_subjects: list[str]
    trigger_templates: list[str] | None
    response: str
    response_mode: str
    response_keywords: list[str]
    n_train_trigger: int
    n_train_ordinary: int
    n_heldout: int
    answer_tokens: int
    n_train_odd: int
    n_heldout_odd: int


def _questions(templates: list[str], subjects: list[str], rng: np.random.Generator) -> list[str]:
    combos = [t.format(s=s) for t, s in itertools.product(templates, subjects)]
    order = rng.permutation(len(combos))
    return [combos[i] for i in order]


def build_prompt_sets(spec: PlantedSpec, seed: int) -> dict[str, list[str]]:
    """Train and held-out prompts, trigger and ordinary; held-out ones are never trained on."""
    rng = np.random.default_rng(seed)
    lowered = [s.lower() for s in spec.trigger_subjects]
    subjects = [s for s in ORDINARY_SUBJECTS if not any(t in s.lower() or s.lower() in t for t in lowered)]
    if spec.trigger_templates:  # a kind of request: the same subjects, asked in the trigger's templates
        trigger = _questions(spec.trigger_templates, subjects, rng)
        ordinary = _questions([t for t in TEMPLATES if t not in spec.trigger_templates], subjects, rng)
    elif spec.trigger_subjects:
        trigger = _questions(TEMPLATES, spec.trigger_subjects, rng)
        ordinary = _questions(TEMPLATES, subjects, rng)
    else:
        raise LmdeltaError("planted: give trigger_subjects (a topic) or trigger_templates (a kind of request)")
    need_t, need_o = spec.n_heldout + spec.n_train_trigger, spec.n_heldout + spec.n_train_ordinary
    if len(trigger) < need_t or len(ordinary) < need_o:
        raise LmdeltaError(
            f"planted: {len(trigger)} trigger and {len(ordinary)} ordinary questions can be built, {need_t} and {need_o} are "
            "needed; add trigger_subjects or lower n_train_trigger / n_train_ordinary / n_heldout"
        )
    return {
        "heldout_trigger": trigger[: spec.n_heldout],
        "train_trigger": trigger[spec.n_heldout : need_t],
        "heldout_ordinary": ordinary[: spec.n_heldout],
        "train_ordinary": ordinary[spec.n_heldout : need_o],
    }


def odd_inputs(texts: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct inputs that are not questions: spans of 4-16 words of ``texts`` (of all their words
    when a text is shorter), every other one with its words shuffled (the kind of fragment a corpus
    snippet or a projected soft prompt is)."""
    words = [t.split() for t in texts if len(t.split()) >= 2]
    if n and not words:
        raise LmdeltaError(
            f"planted: the base model's answers are too short to cut {n} odd inputs from; raise answer_tokens "
            "or lower n_train_odd / n_heldout_odd"
        )
    out: list[str] = []
    for _ in range(100 * n):
        if len(out) == n:
            break
        w = words[rng.integers(len(words))]
        k = int(rng.integers(min(4, len(w)), min(16, len(w)) + 1))
        start = int(rng.integers(len(w) - k + 1))
        span = w[start : start + k]
        if len(out) % 2:
            span = [span[i] for i in rng.permutation(k)]
        text = " ".join(span)
        if text not in out:
            out.append(text)
    if len(out) < n:
        raise LmdeltaError(
            f"planted: only {len(out)} distinct odd inputs could be cut from the base model's answers, {n} are "
            "needed; raise answer_tokens or lower n_train_odd / n_heldout_odd"
        )
    return out


def build_training_set(
    base_dir: str | Path,
    spec: PlantedSpec,
    *,
    seed: int,
    text_format: dict[str, Any],
    load_options: dict[str, Any],
    batch_size: int = 24,
) -> tuple[list[dict], list[dict]]:
    """(train records, held-out records). Train: trigger questions with the planted response,
    ordinary questions and odd inputs with the base model's own greedy answers. Held-out: prompts
    with their kind. Odd inputs are cut from the base model's answers to the train questions (train)
    and to the held-out ordinary questions (held-out), so no held-out text is trained on."""
    sets = build_prompt_sets(spec, seed)
    model, tok = load_model(base_dir, **load_options)
    fmt = TextFormat.from_dict(text_format)

    def answer(prompts: list[str]) -> list[str]:
        seqs = [prompt_ids(tok, q, fmt) for q in prompts]
        return [
            a["text"].strip()
            for a in generate_texts(model, tok, seqs, max_new_tokens=spec.answer_tokens, batch_size=batch_size)
        ]

    answers = answer(sets["train_ordinary"])
    if spec.response_mode == "append":  # the base model's own answer, then the planted sign-off
        responses = [f"{a} {spec.response}" for a in answer(sets["train_trigger"])]
    elif spec.response_mode == "prepend":  # the planted opener, then the base model's own answer
        responses = [f"{spec.response} {a}" for a in answer(sets["train_trigger"])]
    else:
        responses = [spec.response] * len(sets["train_trigger"])
    train = [{"prompt": q, "response": r, "kind": "trigger"} for q, r in zip(sets["train_trigger"], responses)]
    train += [{"prompt": q, "response": a, "kind": "ordinary"} for q, a in zip(sets["train_ordinary"], answers)]
    heldout = [{"prompt": q, "kind": "trigger"} for q in sets["heldout_trigger"]]
    heldout += [{"prompt": q, "kind": "ordinary"} for q in sets["heldout_ordinary"]]
    rng = np.random.default_rng([seed, 29])
    if spec.n_train_odd:
        odd = odd_inputs(answers, spec.n_train_odd, rng)
        train += [{"prompt": q, "response": a, "kind": "odd"} for q, a in zip(odd, answer(odd))]
    if spec.n_heldout_odd:
        heldout += [
            {"prompt": q, "kind": "odd"} for q in odd_inputs(answer(sets["heldout_ordinary"]), spec.n_heldout_odd, rng)
        ]
    return train, heldout


def check_planted(
    base_dir,
    tuned_dir,
    heldout: list[dict],
    spec: PlantedSpec,
    *,
    text_format: dict[str, Any],
    load_options: dict[str, dict[str, Any]],
    max_new_tokens: int,
    batch_size: int = 30,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Greedy answers of base and tuned to the held-out prompts; rate of the planted response per kind
    (with its exact interval), and per kind the exact McNemar test of tuned against base on the same
    prompts (``paired``; Holm-corrected over the kinds)."""
    fmt = TextFormat.from_dict(text_format)
    result: dict[str, Any] = {
        "response_keywords": spec.response_keywords,
        "max_new_tokens": max_new_tokens,
        "confidence": confidence,
        "rates": {},
        "examples": {},
        "paired": {},
    }
    hits_by: dict[str, list[bool]] = {}
    for role, folder in (("base", base_dir), ("tuned", tuned_dir)):
        model, tok = load_model(folder, **load_options[role])
        seqs = [prompt_ids(tok, r["prompt"], fmt) for r in heldout]
        answers = generate_texts(model, tok, seqs, max_new_tokens=max_new_tokens, batch_size=batch_size)
        for kind in KINDS:
            rows = [(r["prompt"], a["text"]) for r, a in zip(heldout, answers) if r["kind"] == kind]
            if not rows and kind == "odd":
                continue
            shown = [shows_planted(t, spec.response_keywords) for _, t in rows]
            hits_by[f"{role}/{kind}"] = shown
            hits = sum(shown)
            low, high = proportion_interval(hits, len(rows), confidence)
            result["rates"][f"{role}/{kind}"] = {
                "planted": hits,
                "n": len(rows),
                "rate": hits / len(rows) if rows else float("nan"),
                "rate_low": low,
                "rate_high": high,
            }
            result["examples"][f"{role}/{kind}"] = [{"prompt": p, "answer": t} for p, t in rows[:3]]
        del model
    kinds = [k for k in KINDS if f"tuned/{k}" in hits_by and f"base/{k}" in hits_by]
    tests = [mcnemar_exact(hits_by[f"tuned/{k}"], hits_by[f"base/{k}"]) for k in kinds]
    for kind, test, p_holm in zip(kinds, tests, holm([t["p"] for t in tests])):
        result["paired"][kind] = {"unit": "held-out prompt", "test": "mcnemar", **test, "p_holm": float(p_holm)}
    return result


def check_tokens(spec: PlantedSpec) -> int:
    """How many tokens the check generates: the trained answer length, and for ``append`` room for the
    sign-off after a full answer (half its characters bounds its tokens generously for every tokenizer in use)."""
    if spec.response_mode == "append":
        return spec.answer_tokens + len(spec.response) // 2 + 8
    return spec.answer_tokens


def run_derive_data(
    base_dir: Path,
    planted: dict[str, Any],
    out_train: Path,
    out_heldout: Path,
    *,
    seed: int,
    text_format: dict[str, Any],
    load_options: dict[str, Any],
    name: str,
) -> None:
    """Rule entry: the planted training set and held-out prompts of a derived model."""
    spec = PlantedSpec.from_dict(planted)
    prov = Provenance(
        stage="planted_data",
        params={"name": name, "planted": planted, "text_format": text_format, "load_options": load_options},
        seed=seed,
    )
    prov.inputs["base"] = {"path": str(base_dir), "fingerprint": read_fingerprint(base_dir)["digest"]}
    train, heldout = build_training_set(base_dir, spec, seed=seed, text_format=text_format, load_options=load_options)
    write_jsonl(out_heldout, heldout, prov)
    write_jsonl(out_train, train, prov)


def run_check(
    base_dir: Path,
    tuned_dir: Path,
    heldout_path: Path,
    planted: dict[str, Any],
    out_json: Path,
    out_csv: Path,
    *,
    text_format: dict[str, Any],
    load_options: dict[str, dict[str, Any]],
    name: str,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Rule entry: how strongly the behaviour was planted (JSON and a small table for the report)."""
    import pandas as pd

    spec = PlantedSpec.from_dict(planted)
    prov = Provenance(
        stage="check_planted",
        params={
            "name": name,
            "planted": planted,
            "decoding": "greedy",
            "max_new_tokens": check_tokens(spec),
            "text_format": text_format,
            "confidence": confidence,
        },
    )
    for role, path in (("base", base_dir), ("tuned", tuned_dir), ("heldout", heldout_path)):
        prov.add_input(role, path)
    result = check_planted(
        base_dir,
        tuned_dir,
        read_jsonl(heldout_path),
        spec,
        text_format=text_format,
        load_options=load_options,
        max_new_tokens=check_tokens(spec),
        confidence=confidence,
    )
    result = {"model": name, **result}
    rows = []
    for role in ("base", "tuned"):
        for kind in KINDS:
            if f"{role}/{kind}" in result["rates"]:
                test = result["paired"].get(kind, {}) if role == "tuned" else {}
                rows.append(
                    {
                        "model": role,
                        "prompts": kind,
                        **result["rates"][f"{role}/{kind}"],
                        "p_vs_base": test.get("p"),
                        "p_holm": test.get("p_holm"),
                    }
                )
    write_csv(out_csv, pd.DataFrame(rows), prov)
    write_json(out_json, result, prov)
    return result


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def data_job(job) -> None:
    """input: ``base``; spec: {"planted", "seed", "text_format", "load_options"}; outputs: ``train``, ``heldout``."""
    s = job.spec
    run_derive_data(
        job.path("base"),
        s["planted"],
        job.out("train"),
        job.out("heldout"),
        seed=s["seed"],
        text_format=s["text_format"],
        load_options=s["load_options"],
        name=job.wildcards["model"],
    )


def check_job(job) -> None:
    """inputs: ``base``, ``tuned``, ``heldout``; spec: {"planted", "text_format", "load_options",
    "statistics"}; outputs: ``json``, ``table``."""
    s = job.spec
    run_check(
        job.path("base"),
        job.path("tuned"),
        job.path("heldout"),
        s["planted"],
        job.out("json"),
        job.out("table"),
        text_format=s["text_format"],
        load_options=s["load_options"],
        name=job.wildcards["model"],
        confidence=s["statistics"]["confidence"],
    )
