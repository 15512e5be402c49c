"""The import layers of docs/architecture.md, enforced: every import in src/tagllm (module
level, function level and TYPE_CHECKING blocks alike) goes to the module's own layer or a
lower one, and the imports have no cycle, module by module and package by package. The
layers are read from the docs' table, so they are written once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tagllm"
DOC = ROOT / "docs" / "architecture.md"


def modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name (``tagllm.protocol.run``; a package is its ``__init__``) -> file."""
    out = {}
    for p in sorted(src.rglob("*.py")):
        parts = list(p.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The tagllm modules a file imports, anywhere in it. ``from pkg import name`` counts as
    an import of ``pkg.name`` when that is a module, else of ``pkg``."""
    found: set[str] = set()

    def owner(name: str) -> str:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {owner(a.name) for a in node.names if a.name.split(".")[0] == "tagllm"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "tagllm":
            for a in node.names:
                full = f"{node.module}.{a.name}"
                found.add(full if full in known else owner(node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; write tagllm.… imports")
    return found


def layers(doc: Path = DOC) -> dict[str, int]:
    """Module -> layer number from the table under "## Import layers" (rows ``| N name |
    `module` `module` | job |``; ``__init__`` names the top-level package)."""
    text = doc.read_text().split("## Import layers", 1)[1].split("\n## ", 1)[0]
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"\|\s*(\d+)\b[^|]*\|([^|]*)\|", line)
        if m:
            for name in re.findall(r"`([\w.]+)`", m.group(2)):
                out["tagllm" if name == "__init__" else f"tagllm.{name}"] = int(m.group(1))
    return out


def violations(graph: dict[str, set[str]], layer: dict[str, int]) -> list[str]:
    """Every import of a higher layer, and every import cycle (as a path)."""
    bad = [f"{m} (layer {layer[m]}) imports {d} (layer {layer[d]})"
           for m, deps in sorted(graph.items()) for d in sorted(deps) if layer[d] > layer[m]]
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                bad.append("cycle: " + " -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return bad


def test_every_module_has_a_layer_and_every_layer_entry_exists():
    mods, layer = set(modules()), layers()
    assert sorted(mods - set(layer)) == [], "modules missing from docs/architecture.md"
    assert sorted(set(layer) - mods) == [], "docs/architecture.md names modules that do not exist"


def test_imports_go_down_the_layers_and_have_no_cycle():
    mods = modules()
    graph = {m: imports(p, set(mods)) - {m} for m, p in mods.items()}
    assert violations(graph, layers()) == []


def unit(module: str) -> str:
    """A module's unit one level up: its top-level package (``tagllm.protocol.run`` ->
    ``tagllm.protocol``), or the module itself (``tagllm.cli``)."""
    return ".".join(module.split(".")[:2])


def unit_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The imports between units (a package is one unit), without a unit's own."""
    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        out.setdefault(unit(m), set()).update(unit(d) for d in deps)
    return {u: deps - {u} for u, deps in out.items()}


def test_packages_as_units_have_no_cycle():
    """One level up: a package's modules may sit in different layers, but no chain of
    imports leaves a package and comes back to it."""
    mods = modules()
    graph = unit_graph({m: imports(p, set(mods)) - {m} for m, p in mods.items()})
    assert {"tagllm.data", "tagllm.evaluation", "tagllm.training", "tagllm.protocol"} <= \
        set(graph)
    assert violations(graph, dict.fromkeys(graph, 0)) == []


def test_the_unit_checker_finds_a_cycle_through_a_package():
    """Module by module there is no cycle here; package by package there is."""
    graph = {"tagllm.p.low": set(), "tagllm.q": {"tagllm.p.low"},
             "tagllm.p.high": {"tagllm.q"}}
    assert violations(graph, {"tagllm.p.low": 0, "tagllm.q": 1, "tagllm.p.high": 2}) == []
    units = unit_graph(graph)
    assert violations(units, dict.fromkeys(units, 0)) == [
        "cycle: tagllm.p -> tagllm.q -> tagllm.p"]


def test_leaves_import_nothing_from_tagllm():
    mods = modules()
    leaves = [m for m, n in layers().items() if n == 0]
    assert set(leaves) >= {"tagllm._version", "tagllm.errors", "tagllm.paths", "tagllm.fileio"}
    assert {m: imports(mods[m], set(mods)) for m in leaves} == {m: set() for m in leaves}


@pytest.mark.parametrize("graph, expected", [
    ({"tagllm.a": {"tagllm.b"}, "tagllm.b": set()}, []),
    ({"tagllm.a": set(), "tagllm.b": {"tagllm.a"}}, ["tagllm.b (layer 0) imports tagllm.a"]),
    ({"tagllm.a": {"tagllm.c"}, "tagllm.c": {"tagllm.a"}, "tagllm.b": set()},
     ["cycle: tagllm.a -> tagllm.c -> tagllm.a"]),
])
def test_the_checker_finds_upward_imports_and_cycles(graph, expected):
    layer = {"tagllm.a": 1, "tagllm.b": 0, "tagllm.c": 1}
    found = violations(graph, layer)
    assert len(found) == len(expected)
    assert all(f.startswith(e) for f, e in zip(found, expected, strict=True))


def test_function_level_and_type_checking_imports_count(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                 "    from tagllm.model import TaggedModel\n"
                 "def g():\n    import tagllm.protocol.run\n    from tagllm import cli\n")
    known = {"tagllm", "tagllm.model", "tagllm.protocol", "tagllm.protocol.run", "tagllm.cli"}
    assert imports(f, known) == {"tagllm.model", "tagllm.protocol.run", "tagllm.cli"}


def private_uses(tree: ast.AST) -> list[str]:
    """The underscore names of tagllm a module uses: imported by name, or reached as an
    attribute of a tagllm module it imported (``import tagllm.prefix as p; p._x``)."""
    bad, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tagllm"):
            bad += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            modules |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name.split(".")[0] for a in node.names
                        if a.name.startswith("tagllm")}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in modules:
                bad.append(f"{ast.unparse(node)}")
    return bad


def test_benchmarks_use_public_names_only():
    """A benchmark is a user of the library: it uses no underscore name from tagllm."""
    bad = [f"{path.name}: {name}" for path in sorted((ROOT / "benchmarks").glob("*.py"))
           for name in private_uses(ast.parse(path.read_text(), str(path)))]
    assert bad == []


def test_the_private_name_check_sees_imports_and_attributes():
    tree = ast.parse("from tagllm.prefix import _cache_arg, FrozenPrefix\n"
                     "import tagllm.training.loop as loop\nfrom tagllm import prefix\n"
                     "loop._activation_checkpointing(m)\nprefix._out_cache(x)\n"
                     "other._private\n")
    assert private_uses(tree) == ["tagllm.prefix._cache_arg",
                                  "loop._activation_checkpointing", "prefix._out_cache"]
