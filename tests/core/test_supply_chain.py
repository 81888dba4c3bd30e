"""Dependencies are pinned with hashes and installed only that way (a gateway that guards data
must not be the way in)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ("requirements.lock", "requirements-dev.lock", "requirements-build.lock")


def _entries(lock: str) -> dict[str, str]:
    text = (ROOT / lock).read_text()
    out: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = block.strip().splitlines()[0] if block.strip() else ""
        if not first or first.startswith("#"):
            continue
        m = re.match(r"([A-Za-z0-9_.\-]+)==([^ ;\\]+)", first)
        assert m, f"{lock}: unpinned line {first!r}"
        assert "--hash=sha256:" in block, f"{lock}: {m.group(1)} has no hash"
        out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_every_locked_package_is_pinned_with_a_hash() -> None:
    for lock in LOCKS:
        assert _entries(lock), lock


def test_every_declared_dependency_is_in_the_locks() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _entries("requirements.lock")
    dev = _entries("requirements-dev.lock")
    for spec in project["dependencies"]:
        name = re.split(r"[<>=\[;! ]", spec, maxsplit=1)[0].lower().replace("_", "-")
        assert name in runtime, f"{name} is declared but not locked"
        assert dev[name] == runtime[name], f"{name}: runtime and dev locks disagree"
    for spec in project["optional-dependencies"]["dev"]:
        name = re.split(r"[<>=\[;! ]", spec, maxsplit=1)[0].lower().replace("_", "-")
        assert name in dev, f"{name} is declared but not locked"


def test_the_installer_refuses_unhashed_packages() -> None:
    run = (ROOT / "run").read_text()
    assert "--require-hashes" in run
    assert "--no-build-isolation" in run  # no unpinned build backend fetched at install
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./run test" in ci  # CI runs exactly the README's test command
    assert "./run test" in (ROOT / "README.md").read_text()


# Imported only when an operator asks for them, and said so when missing (docs say how).
_OPTIONAL = {"ginza", "spacy", "ja_ginza"}


def test_every_package_the_gateway_imports_is_a_locked_runtime_dependency() -> None:
    """A module that imports a package only the dev lock installs works in the tests and fails
    at a user's desk (``sekisho demo`` needed ``openai``): every third-party import in
    ``src/sekisho``, at the top of a module or inside a function, must come from the runtime
    lock."""
    import ast
    import sys
    from importlib.metadata import packages_distributions

    runtime = _entries("requirements.lock")
    dists = packages_distributions()
    missing = set()
    for path in (ROOT / "src" / "sekisho").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "sekisho" or top in _OPTIONAL:
                    continue
                owners = {d.lower().replace("_", "-") for d in dists.get(top, [])}
                if not owners & set(runtime):
                    missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert not missing, f"imported but not in requirements.lock: {sorted(missing)}"
