"""Verified keys are remembered per process, yet a revocation or rotation made by any process
(CLI, admin API, another worker) is refused on the very next request everywhere."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from sekisho.errors import AuthenticationFailed
from sekisho.identity import keys as keys_module
from sekisho.identity.keys import KeyStore


def test_a_cached_key_is_refused_right_after_another_process_revokes_it(tmp_path: Path) -> None:
    db = tmp_path / "identity.db"
    gateway = KeyStore(db)
    key, info = gateway.create("demo")
    assert gateway.authenticate(key).tenant == "demo"  # now cached in this "process"
    r = subprocess.run(
        [sys.executable, "-m", "sekisho", "keys", "revoke", info.key_id, "--data-dir",
         str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    with pytest.raises(AuthenticationFailed, match="revoked"):
        gateway.authenticate(key)


def test_rotation_elsewhere_ends_the_old_keys_cached_life(tmp_path: Path) -> None:
    db = tmp_path / "identity.db"
    a, b = KeyStore(db), KeyStore(db)
    key, info = a.create("demo")
    a.authenticate(key)
    b.rotate(info.key_id, overlap_seconds=0)
    with pytest.raises(AuthenticationFailed, match="expired"):
        a.authenticate(key)


def test_the_cache_answers_without_touching_the_database(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "identity.db")
    key, _ = store.create("demo")
    store.authenticate(key)
    store._local.conn.close()  # a cached answer must not need the connection
    assert store.authenticate(key).tenant == "demo"


def test_an_edit_made_behind_sekishos_back_applies_within_the_cache_lifetime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    monkeypatch.setattr(keys_module, "CACHE_SECONDS", 0.2)
    store = KeyStore(tmp_path / "identity.db")
    key, info = store.create("demo")
    store.authenticate(key)
    with sqlite3.connect(tmp_path / "identity.db") as conn:
        conn.execute("UPDATE api_keys SET revoked_at = 1 WHERE key_id = ?", (info.key_id,))
    time.sleep(0.25)
    with pytest.raises(AuthenticationFailed, match="revoked"):
        store.authenticate(key)


def test_a_wrong_secret_is_never_answered_from_the_cache(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "identity.db")
    key, _ = store.create("demo")
    store.authenticate(key)
    with pytest.raises(AuthenticationFailed):
        store.authenticate(key[:-2] + ("AA" if not key.endswith("AA") else "BB"))
