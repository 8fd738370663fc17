"""The rooms and which way imports go: app → {bench, train, export} → runtime, no circle anywhere.

Read from the code's own imports (ast, lazy ones inside functions included), so a newcomer who adds
a wrong-way import sees this fail with the file and line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("app", "bench", "train", "export", "runtime")
ALLOWED = {
    "app": {"bench", "train", "export", "runtime"},
    "bench": {"runtime"},
    "train": {"runtime"},
    "export": {"runtime"},
    "runtime": set(),
}


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports() -> dict[str, list[tuple[str, int]]]:
    """module → [(imported project module, line)] for every import statement anywhere in the file."""
    out = {}
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")):
            if "node_modules" in path.parts:
                continue
            mod = _module(path)
            package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
            found = []
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = package.split(".")[: len(package.split(".")) - node.level + 1]
                        stem = ".".join(base + ([node.module] if node.module else []))
                        names = [stem] if node.module else [f"{stem}.{a.name}" for a in node.names]
                    else:
                        names = [node.module] if node.module else []
                else:
                    continue
                found += [(n, node.lineno) for n in names if n.split(".")[0] in ROOMS]
            out[mod] = found
    return out


def _resolve(name: str, modules: set[str]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_imports_go_one_way():
    bad = []
    for mod, imports in project_imports().items():
        room = mod.split(".")[0]
        for name, line in imports:
            target = name.split(".")[0]
            if target != room and target not in ALLOWED[room]:
                bad.append(
                    f"{mod.replace('.', '/')}.py:{line} imports {name} ({room} may import only {sorted(ALLOWED[room]) or 'itself'})"
                )
    assert not bad, "wrong-way imports:\n" + "\n".join(bad)


def test_no_import_circle():
    graph = project_imports()
    modules = set(graph)
    edges = {m: {t for n, _ in imps if (t := _resolve(n, modules)) and t != m} for m, imps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(" → ".join(stack[stack.index(t) :] + [t]) if t in stack else f"{m} → {t}")
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    # a package's __init__ importing its own submodules is not a circle of meaning; none here do
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_page_archive_ships_exactly_what_pyodide_imports():
    """web/scripts/prepare-assets.mjs lists runtime.zip's modules: the closure of runtime.web's imports."""
    graph = project_imports()
    need, todo = set(), ["runtime.web"]
    while todo:
        m = todo.pop()
        if m in need:
            continue
        need.add(m)
        todo += [t for n, _ in graph[m] if (t := _resolve(n, set(graph))) and t.startswith("runtime")]
    need.add("runtime")  # the package's __init__
    script = (ROOT / "web" / "scripts" / "prepare-assets.mjs").read_text(encoding="utf-8")
    listed = re.search(r"PAGE_MODULES = \[([^\]]*)\]", script)
    assert listed, "prepare-assets.mjs has no PAGE_MODULES list"
    shipped = {("runtime" if n == "__init__" else f"runtime.{n}") for n in re.findall(r"'(\w+)\.py'", listed.group(1))}
    assert shipped == need, f"shipped {sorted(shipped)}, Pyodide imports {sorted(need)}"
    assert "runtime.native" not in shipped and "runtime.png" not in shipped


def test_every_room_says_what_it_is_for():
    for room in ROOMS:
        doc = ast.get_docstring(ast.parse((ROOT / room / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc) > 20, f"{room}/__init__.py needs a one-line docstring"
    for path in sorted((ROOT / "export").glob("*.py")):
        if path.name != "__init__.py":
            assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), f"export/{path.name} has no docstring"
