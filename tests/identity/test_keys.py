"""API keys: hashed at rest, scoped, rotated with overlap, revoked everywhere at once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sekisho.errors import AuthenticationFailed, NotFound
from sekisho.identity import KeyStore, Principal


def test_key_is_prefixed_and_stored_only_as_a_hash(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "identity.db")
    key, info = store.create(
        "acme", role="developer", name="ci", models=("gpt-4o",), owner="oidc:alice@idp"
    )
    assert key.startswith(f"sk-sekisho-{info.key_id}-")
    raw = (tmp_path / "identity.db").read_bytes()
    secret = key.rsplit("-", 1)[-1].encode()
    assert secret not in raw and key.encode() not in raw
    p = store.authenticate(key)
    assert (p.tenant, p.role, p.models, p.auth) == ("acme", "developer", {"gpt-4o"}, "api_key")
    assert store.get(info.key_id).owner == "oidc:alice@idp"


def test_a_wrong_secret_for_a_real_key_id_is_refused(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "identity.db")
    key, _ = store.create("acme")
    with pytest.raises(AuthenticationFailed, match="no such key"):
        store.authenticate(key[:-4] + "AAAA")


def test_principal_defaults_keep_existing_callers_working() -> None:
    p = Principal(tenant="acme", key_id="0123456789ab", role="app")
    assert p.roles == {"app"} and p.subject == "key:0123456789ab" and p.auth == "api_key"


def test_revocation_is_seen_by_another_process_on_its_next_request(tmp_path: Path) -> None:
    path = tmp_path / "identity.db"
    store = KeyStore(path)
    key, info = store.create("acme")
    # A second process authenticates in a loop until refused; it must not have cached success.
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from sekisho.identity import KeyStore\n"
        "from sekisho.errors import AuthenticationFailed\n"
        f"s = KeyStore(Path({str(path)!r}))\n"
        f"s.authenticate({key!r}); print('ok', flush=True)\n"
        "sys.stdin.readline()\n"
        "try:\n"
        f"    s.authenticate({key!r}); print('still accepted')\n"
        "except AuthenticationFailed as e:\n"
        "    print(e.message)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "ok"
    assert store.revoke(info.key_id)
    out, _ = proc.communicate("\n", timeout=30)
    assert f"API key {info.key_id} has been revoked" in out


def test_rotation_keeps_the_old_key_working_for_the_overlap_only(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "identity.db")
    old_key, old = store.create(
        "acme", role="app", name="billing", models=("gpt-4o",), expires_at=time.time() + 30 * 86400
    )
    new_key, new = store.rotate(old.key_id, overlap_seconds=0.3)
    assert new.rotated_from == old.key_id and store.get(old.key_id).successor == new.key_id
    assert (new.tenant, new.role, new.name, new.models) == ("acme", "app", "billing", ("gpt-4o",))
    assert new.expires_at is not None and new.expires_at > time.time() + 29 * 86400
    store.authenticate(old_key)
    store.authenticate(new_key)
    time.sleep(0.35)
    with pytest.raises(AuthenticationFailed, match="expired"):
        store.authenticate(old_key)
    store.authenticate(new_key)


def test_rotation_never_extends_the_old_keys_life(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "identity.db")
    soon = time.time() + 60
    _, old = store.create("acme", expires_at=soon)
    store.rotate(old.key_id, overlap_seconds=86400)
    assert store.get(old.key_id).expires_at == pytest.approx(soon)


def test_only_active_keys_rotate_and_only_once(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "identity.db")
    _, a = store.create("acme")
    _, b = store.rotate(a.key_id, 3600)
    with pytest.raises(ValueError, match=f"already rotated to {b.key_id}"):
        store.rotate(a.key_id, 3600)
    store.revoke(b.key_id)
    with pytest.raises(ValueError, match="revoked"):
        store.rotate(b.key_id, 3600)
    with pytest.raises(NotFound):
        store.rotate("0123456789ab", 3600)
    assert len(store.list("acme")) == 2  # the failed rotations left nothing behind


def test_revoking_a_key_revokes_its_rotation_line_and_everything_the_line_made(
    tmp_path: Path,
) -> None:
    """D rotated to DS (still in its overlap), then DS to DSS; each made keys. Revoking any
    key of the line, first or last, leaves none of them, nor anything they made, working."""
    for revoked_one in (0, 2):
        store = KeyStore(tmp_path / f"identity-{revoked_one}.db")
        d_key, d = store.create("acme", role="developer", owner="key:admin0000000")
        ds_key, ds = store.rotate(d.key_id, 600)
        dss_key, dss = store.rotate(ds.key_id, 600)
        made = [
            store.create("acme", owner=f"key:{k.key_id}")
            for k in (d, ds, dss)  # one key made by each holder of the line
        ]
        grandchild_key, _ = store.create("acme", owner=f"key:{made[1][1].key_id}")
        _, unrelated = store.create("acme", role="developer", owner="key:admin0000000")

        assert store.revoke((d, ds, dss)[revoked_one].key_id)
        for key in [d_key, ds_key, dss_key, *(k for k, _ in made), grandchild_key]:
            with pytest.raises(AuthenticationFailed, match="revoked"):
                store.authenticate(key)
        assert store.get(unrelated.key_id).state() == "active"


def test_a_revoked_key_makes_no_key_even_if_it_was_authenticated_before(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "identity.db")
    _, dev = store.create("acme", role="developer")
    store.revoke(dev.key_id)
    with pytest.raises(AuthenticationFailed, match=f"{dev.key_id} has been revoked"):
        store.create("acme", owner=f"key:{dev.key_id}")
    assert [k.key_id for k in store.list("acme")] == [dev.key_id]


def test_a_revoked_key_rotates_no_key_even_if_it_was_authenticated_before(
    tmp_path: Path,
) -> None:
    """Revoking a key revokes the successors it was handed by rotating others' keys; a
    rotation that lands after the revocation walked them would escape it, so it is refused."""
    store = KeyStore(tmp_path / "identity.db")
    _, boss = store.create("acme", role="tenant-admin")
    _, app = store.create("acme")
    store.revoke(boss.key_id)
    with pytest.raises(AuthenticationFailed, match=f"{boss.key_id} has been revoked"):
        store.rotate(app.key_id, 60, by=f"key:{boss.key_id}")
    assert store.get(app.key_id).successor is None and len(store.list("acme")) == 2


def test_list_by_owner_and_tenant(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "identity.db")
    store.create("acme", owner="key:a")
    store.create("acme", owner="key:b")
    store.create("globex", owner="key:a")
    assert len(store.list("acme", owner="key:a")) == 1
    assert len(store.list(owner="key:a")) == 2


def test_a_file_from_the_first_release_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "identity.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, key_hash BLOB NOT NULL, tenant TEXT NOT"
        " NULL, role TEXT NOT NULL, name TEXT NOT NULL DEFAULT '', models TEXT, created_at REAL"
        " NOT NULL, expires_at REAL, revoked_at REAL);"
        "INSERT INTO api_keys VALUES ('0123456789ab', x'00', 'acme', 'app', 'old', NULL, 1, NULL,"
        " NULL);"
    )
    conn.commit()
    conn.close()
    store = KeyStore(path)
    [info] = store.list()
    assert (info.key_id, info.owner, info.successor) == ("0123456789ab", None, None)
    _, fresh = store.create("acme")
    assert store.get(fresh.key_id).state() == "active"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"role": "root"}, "unknown role 'root'"),
        ({"models": ()}, "models must be"),
        ({"key_id": "ZZ"}, "12 lowercase hex"),
        ({"expires_at": 1e20}, "a key lives at most 36500 days"),
        ({"expires_at": float("nan")}, "a key lives at most"),
    ],
)
def test_bad_key_requests_say_what_is_wrong(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        KeyStore(tmp_path / "identity.db").create("acme", **kwargs)  # type: ignore[arg-type]


def test_the_cap_on_a_tenants_active_keys_holds_under_concurrent_creation(
    tmp_path: Path,
) -> None:
    """Two gateway processes (two stores on one file) creating keys at once: the count and
    the new key are one transaction, so the tenant ends at its cap, not past it."""
    import threading

    from sekisho.identity.keys import TenantKeyLimit

    stores = [KeyStore(tmp_path / "identity.db") for _ in range(2)]
    made: list[str] = []
    refused: list[TenantKeyLimit] = []

    def create(store: KeyStore) -> None:
        for _ in range(10):
            try:
                made.append(store.create("acme", max_active=7)[1].key_id)
            except TenantKeyLimit as exc:
                refused.append(exc)

    threads = [threading.Thread(target=create, args=(s,)) for s in stores * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 7 and len(refused) == 33
    assert stores[0].active_count("acme") == 7
    assert refused[0].code == "tenant_key_limit" and refused[0].status == 403
    # Expired and revoked keys make room; the operator's admin keys do not count.
    stores[0].revoke(made[0])
    stores[0].rotate(made[1], 0)  # replaced at once: the old one is expired
    stores[0].create("acme", role="admin", max_active=7)
    assert stores[0].active_count("acme") == 6
    stores[0].create("acme", max_active=7)
    with pytest.raises(TenantKeyLimit, match="rotate with overlap_seconds 0"):
        stores[0].rotate(made[2], 3600, max_active=7)
    assert stores[0].active_count("globex") == 0
