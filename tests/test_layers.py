"""Imports point one way: no import cycle in ``llm_unlearn/`` or ``image_track/`` (imports inside functions
included), every import goes to the same or a lower layer (README, "Architecture"), and ``llm_unlearn`` never
imports ``image_track``. The scan reads the source (AST), so a cycle hidden behind a deferred import still fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("llm_unlearn", "image_track")

# Lowest first. A module belongs to the first layer one of whose prefixes it starts with (exact name or a package).
LAYERS = [
    (
        "foundation",
        [
            "llm_unlearn.configs",
            "llm_unlearn.flags",
            "llm_unlearn.files",
            "llm_unlearn.seeding",
            "llm_unlearn.envinfo",
            "llm_unlearn.lazy",
        ],
    ),
    (
        "state",
        [
            "llm_unlearn.locks",
            "llm_unlearn.outputs",
            "llm_unlearn.budget",
            "llm_unlearn.registry",
            "llm_unlearn.console",
        ],
    ),
    ("harness", ["llm_unlearn.harness"]),
    (
        "tasks, models and metrics",
        [
            "llm_unlearn.tasks",
            "llm_unlearn.modeling",
            "llm_unlearn.embedded",
            "llm_unlearn.metrics",
            "llm_unlearn.generation",
            "llm_unlearn.canaries",
            "llm_unlearn.canary_manifest",
            "image_track.models",
            "image_track.networks",
            "image_track.data",
        ],
    ),
    ("training", ["llm_unlearn.training"]),
    (
        "methods and attacks",
        ["llm_unlearn.methods", "llm_unlearn.attacks", "llm_unlearn.auditing", "image_track.attacks"],
    ),
    ("stages", ["llm_unlearn.stages", "llm_unlearn.hub", "image_track.task", "image_track.poisoning"]),
    (
        "protocol",
        [
            "llm_unlearn.protocol",
            "llm_unlearn.planner",
            "llm_unlearn.tracks",
            "llm_unlearn.launcher",
            "llm_unlearn.scheduler",
            "llm_unlearn.executors",
        ],
    ),
    ("orchestration", ["llm_unlearn.stages.report", "llm_unlearn.stages.run", "image_track.track"]),
    ("entry points", ["llm_unlearn.cli", "llm_unlearn.__main__", "llm_unlearn", "image_track"]),
]


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = p
    return mods


MODULES = _modules()


def _targets(module: str, node: ast.AST) -> list[str]:
    """Modules of the two packages an import statement loads (``from a import b`` may name a submodule ``a.b``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = [f"{target}.{a.name}" for a in node.names] + [target]
    out = []
    for n in names:
        while n and n not in MODULES:
            n = n.rpartition(".")[0]
        if n and n != module:
            out.append(n)
    return out


def _graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: line}, every import statement of the file (top level or inside functions)."""
    graph = {}
    for m, p in MODULES.items():
        deps: dict[str, int] = {}
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in _targets(m, node):
                    deps.setdefault(t, node.lineno)
        graph[m] = deps
    return graph


GRAPH = _graph()


def _layer(module: str) -> int:
    """The layer of the longest prefix that matches (``stages.run`` is orchestration although it is under stages)."""
    hits = [
        (len(prefix), i)
        for i, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    if not hits:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it to LAYERS (and the README)")
    return max(hits)[1]


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each a cycle or a tangle of cycles."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return out


def test_the_scan_sees_the_packages():
    assert len(MODULES) > 60 and "llm_unlearn.methods.base" in MODULES and "image_track.models" in MODULES
    assert "llm_unlearn.training" in GRAPH["llm_unlearn.methods.base"]  # a top-level relative import is seen
    # an import inside a function is seen too (stage modules defer theirs for an instant --help)
    assert "llm_unlearn.modeling" in GRAPH["llm_unlearn.stages.train"]


def test_no_import_cycle():
    cycles = _cycles()
    detail = [[f"{m} -> {d} (line {GRAPH[m][d]})" for m in c for d in GRAPH[m] if d in c] for c in cycles]
    assert not cycles, f"import cycles: {detail}"


def test_llm_unlearn_never_imports_image_track():
    bad = [(m, d) for m, deps in GRAPH.items() if m.startswith("llm_unlearn") for d in deps if d.startswith("image")]
    assert not bad, bad


def _upward(module: str) -> list[str]:
    mine = _layer(module)
    return [
        f"{d} (line {line}, layer {LAYERS[_layer(d)][0]!r})"
        for d, line in GRAPH[module].items()
        if _layer(d) > mine and not module.startswith(d + ".")  # a submodule's import of its own package's name
    ]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    up = _upward(module)
    assert not up, f"{module} (layer {LAYERS[_layer(module)][0]!r}) imports from higher layers: {up}"


def test_a_cycle_is_caught(monkeypatch):
    """The checker itself: a planted back edge makes a cycle it reports."""
    monkeypatch.setitem(GRAPH, "llm_unlearn.configs", {**GRAPH["llm_unlearn.configs"], "llm_unlearn.cli": 1})
    monkeypatch.setitem(GRAPH, "llm_unlearn.cli", {**GRAPH["llm_unlearn.cli"], "llm_unlearn.configs": 1})
    assert any({"llm_unlearn.configs", "llm_unlearn.cli"} <= set(c) for c in _cycles())


def test_an_upward_import_is_caught(monkeypatch):
    monkeypatch.setitem(GRAPH, "llm_unlearn.training", {**GRAPH["llm_unlearn.training"], "llm_unlearn.stages.run": 9})
    assert _upward("llm_unlearn.training") == ["llm_unlearn.stages.run (line 9, layer 'orchestration')"]
