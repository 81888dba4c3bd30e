"""The YAML examples of docs/policies.md, as the tests load them."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "policies.md"
_EXAMPLE = re.compile(r"<!-- example: ([a-z-]+) -->\n```yaml\n(.*?)```", re.S)


def examples(kind: str) -> list[str]:
    """Every YAML block marked ``<!-- example: KIND -->`` in docs/policies.md, in order."""
    found = [
        body for name, body in _EXAMPLE.findall(DOC.read_text(encoding="utf-8")) if name == kind
    ]
    assert found, f"docs/policies.md has no '{kind}' example"
    return found


def write_example(kind: str, directory: Path) -> Path:
    (text,) = examples(kind)
    path = directory / f"{kind}.yaml"
    path.write_text(text, encoding="utf-8")
    return path
