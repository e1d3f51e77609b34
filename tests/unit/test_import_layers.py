"""The one-way house (docs/ARCHITECTURE.md#floor-plan): every import in src/hrm_text, lazy ones
included, points down the floor order, and no two files import each other in a circle.

    config < data < model < checkpoint < train | infer < eval < commands

`train` and `infer` share a floor and never import each other. `post` (GRPO: rollouts from infer,
updates from train, rewards from eval's scorers) sits between eval and commands. `hrm_text/cli.py` and
`hrm_text/commands/` are the top floor. Imports under `if TYPE_CHECKING:` are ignored (they never
run). The checks parse the source, so they see imports hidden inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "hrm_text"

FLOORS: dict[str, float] = {
    "config": 0, "data": 1, "model": 2, "checkpoint": 3, "train": 4, "infer": 4, "eval": 5,
    "post": 5.5, "commands": 6, "cli": 6, "__init__": 0, "__main__": 6,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    name = ".".join(rel.parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "hrm_text":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every runtime import in the file; `from pkg import mod` counts
    as an import of `pkg.mod` when `pkg/mod.py` exists."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                sub_path = SRC.parent / Path(*sub.split("."))
                out.append((node.lineno, sub if sub_path.with_suffix(".py").exists() or sub_path.is_dir() else base))
    return sorted({(ln, m) for ln, m in out if m.startswith("hrm_text")})


def all_files() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def layer_violations(files: list[Path]) -> list[str]:
    bad = []
    for f in files:
        me = module_name(f)
        my_room = room(me)
        for line, target in imports_of(f):
            their_room = room(target)
            if my_room is None or their_room is None or my_room == their_room:
                continue
            mine, theirs = FLOORS.get(my_room), FLOORS.get(their_room)
            if mine is None or theirs is None:
                bad.append(f"{f.relative_to(SRC.parent)}:{line} {target}: room {my_room!r} or {their_room!r} has no floor")
            elif theirs >= mine:
                bad.append(f"{f.relative_to(SRC.parent)}:{line} imports {target} ({their_room}, floor {theirs}) "
                           f"from {my_room} (floor {mine})")
    return bad


def file_cycles(files: list[Path]) -> list[list[str]]:
    """Strongly connected groups of more than one file in the import graph (Tarjan)."""
    graph = {module_name(f): {t for _, t in imports_of(f)} for f in files}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
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
            # a package's __init__ importing its own submodules is not a cycle of files
            if len(group) > 1:
                out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_points_up_the_floor_order() -> None:
    bad = layer_violations(all_files())
    assert not bad, "imports pointing up the floor order:\n" + "\n".join(bad)


def test_no_import_cycle_between_files() -> None:
    cycles = file_cycles(all_files())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checks_catch_a_bad_import() -> None:
    """A deliberate upward import and a deliberate cycle are reported (the checks can fail)."""
    a = SRC / "model" / "_deliberately_bad_a.py"
    b = SRC / "model" / "_deliberately_bad_b.py"
    a.write_text("from hrm_text.train import trainer\nfrom hrm_text.model import _deliberately_bad_b\n")
    b.write_text("import hrm_text.model._deliberately_bad_a\n")
    try:
        found = layer_violations([a])
        assert len(found) == 1 and "hrm_text.train.trainer" in found[0]
        assert ["hrm_text.model._deliberately_bad_a", "hrm_text.model._deliberately_bad_b"] in file_cycles([a, b])
    finally:
        a.unlink()
        b.unlink()


@pytest.mark.parametrize("room_name", sorted(set(FLOORS) - {"__init__", "__main__", "cli", "config"}))
def test_every_room_exists_or_is_planned(room_name: str) -> None:
    # the floor table names real packages (checkpoint and commands are created by the redesign)
    assert (SRC / room_name).is_dir(), f"src/hrm_text/{room_name}/ is missing"
