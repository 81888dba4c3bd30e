"""`sekisho --version` tells builds apart: every build says 0.1.0, so a checkout adds its
commit, which an operator notes before an upgrade and needs to go back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sekisho
from sekisho import _commit

ROOT = Path(sekisho.__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_version_names_the_commit_checked_out() -> None:
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    shown = subprocess.run(
        [sys.executable, "-m", "sekisho", "--version"], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0
    if head.returncode == 0:  # a git checkout (the CI's clone is one)
        assert shown.stdout.strip() == f"sekisho 0.1.0 (commit {head.stdout.strip()[:12]})"
    else:
        assert shown.stdout.strip() == "sekisho 0.1.0"


def test_the_commit_is_read_from_a_branch_packed_refs_a_detached_head_and_a_worktree(
    tmp_path: Path,
) -> None:
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    assert _commit(git) is None  # a branch with no commit yet
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{COMMIT} refs/heads/main\n")
    assert _commit(git) == COMMIT[:12]
    (git / "refs" / "heads" / "main").write_text("f" * 40 + "\n")  # a loose ref wins
    assert _commit(git) == "f" * 12
    (git / "HEAD").write_text(COMMIT + "\n")
    assert _commit(git) == COMMIT[:12]
    # a worktree: .git is a file naming its own directory, whose commondir is the repository's
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    own = git / "worktrees" / "wt"
    own.mkdir(parents=True)
    (own / "HEAD").write_text("ref: refs/heads/main\n")
    (own / "commondir").write_text("../..\n")
    marker = tmp_path / "wt" / ".git"
    marker.parent.mkdir()
    marker.write_text(f"gitdir: {own}\n")
    assert _commit(marker) == "f" * 12
    assert _commit(tmp_path / "nothing" / ".git") is None
