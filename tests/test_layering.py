"""The layering of /work/shared/DESIGN.md, enforced on the source: who may import whom, and no cycles.

    api, cli (the modules at the top of the package)          may import anything
    runtime  -> backends -> cost -> ir
    passes   -> cost, ir          frontends -> ir          models, ir -> nothing of ours

Every ``import``/``from ... import`` of every module under ``membound/`` counts, also the ones inside
functions (a lazy import is still a dependency). Module-level imports must not form a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "membound"

# layer -> the layers it may import (its own layer always)
ALLOWED: dict[str, set[str]] = {
    "ir": set(),
    "models": set(),
    "frontends": {"ir"},
    "cost": {"ir"},
    "passes": {"cost", "ir"},
    "backends": {"cost", "ir"},
    "runtime": {"backends", "cost", "ir"},
    "testing": {"api", "runtime", "backends", "passes", "frontends", "cost", "ir", "models"},  # test helpers
}
TOP = "api"  # membound/__init__.py and the modules beside it (api.py, cli.py...): the top layer


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 2 and (PACKAGE / f"{parts[1]}.py").exists()):
        return TOP
    return parts[1]


def imports(path: Path, toplevel_only: bool = False) -> list[tuple[str, int]]:
    """(imported membound module, line) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if toplevel_only else list(ast.walk(tree))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "membound"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "membound":
                continue
            out.append((target, node.lineno))
            # ``from membound.ir import ops`` imports the submodule membound.ir.ops
            for a in node.names:
                sub = PACKAGE.parent / Path(*f"{target}.{a.name}".split("."))
                if sub.with_suffix(".py").exists() or (sub / "__init__.py").exists():
                    out.append((f"{target}.{a.name}", node.lineno))
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_package_has_a_layer() -> None:
    layers = {layer_of(module_name(p)) for p in MODULES}
    unknown = layers - set(ALLOWED) - {TOP}
    assert not unknown, f"membound subpackages without a layer: {sorted(unknown)}; add them to ALLOWED here " \
                        f"and to the layering section of DESIGN.md"


def violations(module: str, found: list[tuple[str, int]]) -> list[str]:
    """The imports in ``found`` that ``module``'s layer may not make."""
    mine = layer_of(module)
    if mine == TOP:
        return []
    bad = []
    for target, line in found:
        theirs = layer_of(target)
        if theirs != mine and theirs not in ALLOWED[mine]:
            allowed = ", ".join(sorted(ALLOWED[mine])) or "nothing of ours"
            bad.append(f"{module} line {line}: imports {target} (layer {theirs}); layer {mine} may import {allowed}")
    return bad


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_imports_follow_the_layers(path: Path) -> None:
    bad = violations(module_name(path), imports(path))
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    g = nx.DiGraph()
    known = {module_name(p) for p in MODULES}
    for path in MODULES:
        src = module_name(path)
        g.add_node(src)
        for target, _ in imports(path, toplevel_only=True):
            # an import of a name from a module is an edge to that module; of a package, to its __init__
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != src:
                g.add_edge(src, target)
    # a module importing its own package's __init__ (which imports the module back) counts too: it
    # works only by the order the __init__ happens to import things in
    cycles = list(nx.simple_cycles(g))
    assert not cycles, "import cycles at module level:\n  " + "\n  ".join(" -> ".join(c + c[:1]) for c in cycles[:10])


def test_the_checker_sees_violations() -> None:
    """The checker is not vacuous."""
    assert violations("membound.ir.graph", [("membound.passes.pattern", 3)])
    assert violations("membound.frontends.export", [("membound.backends.reference", 9)])
    assert violations("membound.passes.merge_linear", [("membound.backends.triton.partition", 1)])
    assert violations("membound.models.llama", [("membound.ir", 1)])
    assert not violations("membound.passes.merge_linear", [("membound.cost.roofline", 1), ("membound.ir", 2)])
    assert not violations("membound.api", [("membound.runtime.generate", 1)])
    g = nx.DiGraph([("membound.a", "membound.b"), ("membound.b", "membound.a")])
    assert list(nx.simple_cycles(g))
