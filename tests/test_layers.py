"""The import structure of the package: no cycle, and every arrow in the design's direction.

Every ``import`` under ``tideflow/`` is read from the source (module level and inside
functions alike, since a function-level import is still a dependency, only a later
one). Layers, lowest first (docs/architecture.md, "Who imports whom"):

* ``stream``: imports nothing of ours;
* ``strategies``: stream only (a learner knows no runner and no source);
* ``connectors``: stream only (a source knows no learner);
* ``pipelines``: stream, strategies, connectors (the engine knows no CLI);
* ``cli``, ``testing`` and the package's ``__init__``: anything.

Inside ``pipelines`` the runners sit above the runtime pieces they drive and below
the front door (``run``, ``dsl``) and the ready pipelines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tideflow

ROOT = Path(tideflow.__file__).parent

#: package -> packages it may import (besides itself)
ALLOWED = {
    "stream": set(),
    "strategies": {"stream"},
    "connectors": {"stream"},
    "pipelines": {"stream", "strategies", "connectors"},
}
#: inside pipelines: module -> what it must not import (lower modules never reach up)
PIPELINE_BELOW_RUNNERS = ("evaluation", "learn_step", "collector", "graph", "options", "result", "metrics",
                          "checkpoint", "tracking")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """module -> the tideflow modules it imports (anywhere in its source)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                # the longest known module the name refers to (``from x import y`` may name a module y)
                while t and t not in modules:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != name and t.startswith("tideflow"):
                    deps.add(t)
        graph[name] = deps
    return graph


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def test_no_import_cycle():
    graph = _imports()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            # a package's __init__ importing its own submodules is how a package exports
            if m == d.rsplit(".", 1)[0] and m in graph and (ROOT.parent / Path(*m.split("."))).is_dir():
                continue
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if state.get(d) is None:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if state.get(m) is None:
            visit(m)


def test_imports_follow_the_layers():
    wrong = []
    for module, deps in _imports().items():
        src = _layer(module)
        if src is None:
            continue  # cli, testing, the package __init__: the top
        for d in deps:
            dst = _layer(d)
            if d == "tideflow" or dst is None:
                wrong.append(f"{module} -> {d} (the top of the package)")
            elif dst != src and dst not in ALLOWED[src]:
                wrong.append(f"{module} -> {d} ({src} may import {sorted(ALLOWED[src]) or 'nothing of ours'})")
    assert not wrong, "imports against the layer directions:\n" + "\n".join(sorted(wrong))


def test_runtime_pieces_do_not_reach_up_to_runners_or_the_front_door():
    wrong = []
    for module, deps in _imports().items():
        parts = module.split(".")
        if parts[:2] != ["tideflow", "pipelines"] or len(parts) < 3 or parts[2] not in PIPELINE_BELOW_RUNNERS:
            continue
        for d in deps:
            dp = d.split(".")
            if dp[:2] == ["tideflow", "pipelines"] and len(dp) > 2 and dp[2] in ("runners", "run", "dsl", "ready"):
                wrong.append(f"{module} -> {d}")
    assert not wrong, "lower pipeline modules import upper ones:\n" + "\n".join(sorted(wrong))


def test_no_module_is_longer_than_one_sitting():
    """~600 lines at most: a longer file is usually two ideas (the README's Layout names exceptions)."""
    long = {_module_name(p): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 620}
    assert not long, f"modules over ~600 lines: {long}"


def test_the_code_names_no_file_outside_the_repository():
    # spelled in pieces, so that this test does not find its own patterns
    outside = tuple("".join(parts) for parts in (("/wo", "rk/"), ("shared", "/specs"), ("DES", "IGN.md"),
                                                  ("..", "/shared")))
    found = [f"{p.relative_to(ROOT.parent)}: {o}" for p in ROOT.rglob("*.py") for o in outside if o in p.read_text()]
    assert not found, found


def test_no_two_test_files_share_a_name():
    """pytest imports test files by basename (rootdir mode): a second file of the same name
    stops the whole run at collection, so the suite would not start on a clean clone."""
    tests = ROOT.parent / "tests"
    names: dict[str, list[str]] = {}
    for p in tests.rglob("test_*.py"):
        names.setdefault(p.name, []).append(str(p.relative_to(tests)))
    same = {n: ps for n, ps in names.items() if len(ps) > 1}
    assert not same, same
