"""docs/architecture.md is where a new contributor finds a module: it names every one.

Its "Where things live" tree lists each module of src/sekisho under its package with one line
of what it holds; a module added without that line is a module nobody can find from the docs.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "sekisho"
DOC = ROOT / "docs" / "architecture.md"


def listed_modules() -> set[str]:
    """The module paths the tree names: an indented name under its package's `pkg/` line."""
    text = DOC.read_text(encoding="utf-8").split("## Where things live", 1)[1]
    tree = text.split("```", 2)[1]
    listed: set[str] = set()
    parents: list[tuple[int, str]] = []
    for line in tree.splitlines():
        m = re.match(r"^( *)([\w.]+/?)(?:\s|$)", line)
        if not m or not (m.group(2).endswith((".py", "/"))):
            continue
        indent, name = len(m.group(1)), m.group(2)
        while parents and parents[-1][0] >= indent:
            parents.pop()
        path = "".join(p for _, p in parents) + name
        listed.add(path)
        if name.endswith("/"):
            parents.append((indent, name))
    return listed


def test_architecture_doc_names_every_module_under_its_package() -> None:
    listed = listed_modules()
    missing = []
    for module in sorted(SRC.rglob("*.py")):
        rel = module.relative_to(SRC.parent).as_posix()  # sekisho/classify/_table.py
        if module.name == "__init__.py" and module.parent != SRC:
            continue  # a package is named by its own line (`classify/`)
        parts = rel.split("/")
        # migrations/ is one line: its env.py and versions are Alembic's layout
        if "migrations" in parts:
            rel = "/".join(parts[: parts.index("migrations") + 1]) + "/"
        if rel.removeprefix("sekisho/") not in {p.removeprefix("src/sekisho/") for p in listed}:
            missing.append(rel)
    assert not missing, f"docs/architecture.md does not name: {missing}"
