"""The package's layers: stage modules import shared layers, never each other; no import cycle.

Read from the source (every import, inside functions too), so a cycle cannot hide in a function."""

from __future__ import annotations

import ast

from conftest import ROOT

PACKAGE = ROOT / "workflow" / "lmdelta"
# One module per stage of the workflow (a rule's entry point lives in its stage module).
STAGES = {
    "lens",
    "corpus",
    "logprobs",
    "perplexity",
    "completions",
    "diversity",
    "uid",
    "contrastive",
    "search",
    "softprompt",
    "hardprompt",
    "derive",
    "planted",
    "comparator",
    "scorecard",
}
CLI = {"__main__", "estimate"}  # the command line dispatches to every stage; the estimate reads the corpus stage


def imports() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph = {}
    for m in modules:
        deps = set()
        for node in ast.walk(ast.parse((PACKAGE / f"{m}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith("lmdelta."):
                    deps.add(node.module.split(".")[1])
                elif node.module == "lmdelta":
                    deps |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("lmdelta.")}
        graph[m] = deps - {m}
    return graph


def test_the_stage_list_names_real_modules():
    assert STAGES <= set(imports())


def test_no_stage_module_imports_another():
    graph = imports()
    crossing = {m: sorted(graph[m] & STAGES) for m in STAGES if graph[m] & STAGES}
    assert not crossing, f"stage modules importing stage modules: {crossing}"


def test_shared_layers_import_no_stage():
    graph = imports()
    layers = set(graph) - STAGES - CLI
    upward = {m: sorted(graph[m] & STAGES) for m in layers if graph[m] & STAGES}
    assert not upward, f"shared layers importing stage modules: {upward}"


def test_no_import_cycle():
    graph = imports()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return path + [m, d]
            if d not in state and (cycle := visit(d, path + [m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m, [])
            assert cycle is None, " -> ".join(cycle)
