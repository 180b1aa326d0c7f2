"""Layers of the package, read from its source (nothing is imported): no import cycles between modules of
``gpufleet/``, no import from ``gpufleet.models`` into ``gpufleet.engine`` (the engine imports models, never
the reverse), and no private name (``_x``) imported from another module.

Every import statement counts, also those inside functions: a late import hides a cycle from Python at start-up
but still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gpufleet"

def _modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, packages by their ``__init__.py``."""
    mods = {}
    for f in package.rglob("*.py"):
        name = ".".join(f.relative_to(package.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    return mods


def _imports(mods: dict[str, Path], module: str, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for each name of one import statement."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names]
    if node.level:  # relative: from the module's package, one level up per extra dot
        base = module.split(".")
        base = base if mods[module].name == "__init__.py" else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    return [(f"{source}.{a.name}" if f"{source}.{a.name}" in mods else source, a.name) for a in node.names]


def findings(package: Path = PACKAGE) -> list[str]:
    mods = _modules(package)
    edges: dict[str, set[str]] = {}
    found: list[str] = []
    for module, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target, name in _imports(mods, module, node):
                if not target.startswith("gpufleet"):
                    continue
                while target not in mods and "." in target:  # gpufleet.x.y.Name -> gpufleet.x.y
                    target = target.rsplit(".", 1)[0]
                if target == module:
                    continue
                deps.add(target)
                if name and name.startswith("_") and not name.startswith("__"):
                    found.append(f"private name {name} imported by {module} from {target}")
                if module.startswith("gpufleet.models") and target.startswith("gpufleet.engine"):
                    found.append(f"forbidden arrow models->engine: {module} imports {target}")
        edges[module] = deps
    for comp in _cycles(edges):
        # a package's __init__ re-exporting its submodules (and top-level modules among themselves) is no cycle
        if all(mods[m].name == "__init__.py" or m.count(".") <= 1 for m in comp):
            continue
        found.append("import cycle: " + " <-> ".join(comp))
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    return comps


def test_no_cycles_no_models_to_engine_no_private_imports() -> None:
    found = findings()
    assert not found, "layer findings:\n" + "\n".join(found)


def test_the_checks_see_what_they_look_for(tmp_path: Path) -> None:
    pkg = tmp_path / "gpufleet"
    for rel, text in {
        "__init__.py": "",
        "models/__init__.py": "",
        "models/a.py": "from gpufleet.engine.b import run\nfrom gpufleet.models import c\n",
        "models/c.py": "def f():\n    from gpufleet.models.a import x\n",
        "engine/__init__.py": "",
        "engine/b.py": "from .d import _hidden\n",
        "engine/d.py": "_hidden = 1\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    assert sorted(findings(pkg)) == [
        "forbidden arrow models->engine: gpufleet.models.a imports gpufleet.engine.b",
        "import cycle: gpufleet.models.a <-> gpufleet.models.c",
        "private name _hidden imported by gpufleet.engine.b from gpufleet.engine.d",
    ]
