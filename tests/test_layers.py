"""The package's layers hold: every import (module level or inside a function) points down the layer table in
DESIGN.md or stays in its own layer, and no group of modules imports itself round in a cycle.

The imports are read with ``ast`` from the source, so a lazy import inside a function counts as much as one at the
top of a file; the lazy public names of ``_LAZY`` tables (``nbdiffuse.prompts``, ``nbdiffuse.models``, the root)
count as imports of the modules they name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = SRC / "nbdiffuse"

# Upward imports the design allows, each inside one function and said why (DESIGN.md, "Layers").
ALLOWED_UPWARD = {
    ("nbdiffuse.session", "nbdiffuse.ui"): "Session.panel() is a shortcut for ui.Panel(session), imported on call",
    ("nbdiffuse.session", "nbdiffuse.fanout"): "executor='ray' builds the Ray workers (which hold Sessions) on call; "
                                               "the one-GPU path never imports it",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(base: str, name: str) -> str:
    """``base.name`` when that is a module, else ``base`` (``name`` is an attribute of it)."""
    full = f"{base}.{name}" if base else name
    return full if full in MODULES else base


def imports(module: str) -> dict[str, int]:
    """Every nbdiffuse module ``module`` imports -> the line of the first such import."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target.startswith("nbdiffuse") and target != module:
            assert target in MODULES, f"{module}:{line} imports {target}, which is not a module of the package"
            found.setdefault(target, line)

    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                add(_resolve(target, alias.name), node.lineno)
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets):
            for value in ast.literal_eval(node.value).values():  # {"Name": ".module"}
                add(_resolve(package, value.lstrip(".")), node.lineno)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def layer_table() -> list[tuple[int, str, list[str]]]:
    """``(rank, layer, module prefixes)`` rows of DESIGN.md's layer table, bottom layer first."""
    rows = []
    for line in (ROOT / "DESIGN.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\|\s*(\d+)\s*\|\s*([\w ,/-]+?)\s*\|(.*)\|\s*$", line)
        if m:
            rows.append((int(m.group(1)), m.group(2), re.findall(r"`(nbdiffuse[\w.]*)`", m.group(3))))
    return sorted(rows)


LAYERS = layer_table()


def layer_of(module: str) -> tuple[int, str]:
    """The row whose longest prefix names ``module`` (``nbdiffuse.toy.evaluate`` before ``nbdiffuse.toy``); the
    bare ``nbdiffuse`` names the package root only, so that a module left out of the table is found out."""
    best = None
    for rank, name, prefixes in LAYERS:
        for prefix in prefixes:
            covers = module == prefix or ("." in prefix and module.startswith(prefix + "."))
            if covers and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rank, name)
    assert best is not None, f"{module} is in no layer of DESIGN.md's table: add it there"
    return best[1], best[2]


def test_the_layer_table_is_read_and_names_every_module():
    assert [name for _, name, _ in LAYERS][:3] == ["util", "models", "sampling"]
    assert len({rank for rank, _, _ in LAYERS}) == len(LAYERS) >= 8
    for module in MODULES:
        layer_of(module)


def test_no_import_points_up_the_layers():
    upward = []
    for module, targets in GRAPH.items():
        rank, name = layer_of(module)
        for target, line in targets.items():
            t_rank, t_name = layer_of(target)
            if t_rank > rank and (module, target) not in ALLOWED_UPWARD:
                upward.append(f"{module} ({name}) line {line} imports {target} ({t_name})")
    assert not upward, "imports pointing up the layers of DESIGN.md:\n" + "\n".join(upward)


def test_the_allowed_upward_imports_are_inside_functions_only():
    for (module, target), why in ALLOWED_UPWARD.items():
        tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = {ast.unparse(n) for n in top}
        assert not any(target.rpartition(".")[2] in n.split() or target in n for n in names), (module, target, why)


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if (v, w) in ALLOWED_UPWARD:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    found = cycles(GRAPH)
    assert not found, "modules importing each other round in a cycle: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_checks_catch_what_they_are_for():
    """The cycle finder and the layer lookup on made-up graphs and names, so that a passing run means something."""
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []
    assert layer_of("nbdiffuse.jobs.txt2img")[1] == "jobs"
    assert layer_of("nbdiffuse.toy.evaluate")[0] > layer_of("nbdiffuse.session")[0] > layer_of("nbdiffuse.jobs")[0]
    assert layer_of("nbdiffuse.sampling.guidance")[0] < layer_of("nbdiffuse.prompts.conditioning")[0]
    # the import reader sees a function-level import, and the lazy names of a package
    assert "nbdiffuse.ui" in GRAPH["nbdiffuse.session"]
    assert "nbdiffuse.models.save" in GRAPH["nbdiffuse.models"]


@pytest.mark.parametrize("low, high", [("nbdiffuse.models", "nbdiffuse.prompts"),
                                       ("nbdiffuse.sampling", "nbdiffuse.prompts"),
                                       ("nbdiffuse.sampling", "nbdiffuse.jobs"),
                                       ("nbdiffuse.jobs", "nbdiffuse.session"),
                                       ("nbdiffuse.session", "nbdiffuse.ui"),
                                       ("nbdiffuse.toy.evaluate", "nbdiffuse")])
def test_the_rules_of_issue_16_hold(low, high):
    """The moves the architecture step made, named: none of these imports may come back."""
    offenders = [f"{m} line {line} -> {t}" for m, targets in GRAPH.items()
                 if m == low or m.startswith(low + ".")
                 for t, line in targets.items()
                 if (t == high or (high != "nbdiffuse" and t.startswith(high + "."))) and (m, t) not in ALLOWED_UPWARD]
    assert not offenders, offenders
