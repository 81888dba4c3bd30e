"""sekisho — a self-hosted sovereign AI gateway.

A 関所 (sekisho) was a checkpoint on the old highways: whatever crossed a border passed it, was
inspected, and was written down. This package is that checkpoint for AI traffic.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def release() -> str:
    """The version and, run from a git checkout, its commit (``0.1.0 (commit 1a2b3c4d5e6f)``):
    every build says 0.1.0, and an operator upgrading or going back must tell them apart."""
    commit = _commit(Path(__file__).resolve().parents[2] / ".git")
    return f"{__version__} (commit {commit})" if commit else __version__


def _commit(git: Path) -> str | None:
    """The commit checked out at ``git`` (a .git directory, or a worktree's .git file), read
    from its files: no git program is needed."""
    try:
        if git.is_file():  # a worktree: "gitdir: PATH"
            git = Path(git.read_text(encoding="utf-8").split(":", 1)[1].strip())
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
        if not head.startswith("ref: "):
            return head[:12] or None  # a detached HEAD
        ref = head[5:]
        common = git
        if (git / "commondir").exists():
            common = (git / (git / "commondir").read_text(encoding="utf-8").strip()).resolve()
        loose = common / ref
        if loose.exists():
            return loose.read_text(encoding="utf-8").strip()[:12] or None
        packed = common / "packed-refs"
        for line in packed.read_text(encoding="utf-8").splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12]
    except (OSError, IndexError, ValueError):
        return None
    return None
