"""Roles over every route of the running gateway, the admin API as clients see it, and policy
reload (admin endpoint and SIGHUP) without ever serving a half-valid policy."""

from __future__ import annotations

import base64
import contextlib
import copy
import http.client
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from harness import Harness, Resp, demo_sim_specs, free_port, request, start_example
from sekisho.identity import ROLES, KeyStore
from serve_process import ServeProcess, Simulators, write_config

MARKER = "Kirigaya-7f3e91 salary 8,400,000 yen"  # prompt content no auditor may ever see
PREFIX = "/admin/v1"

# The specification of docs/identity.md, written out: which roles each admin route admits.
ADMIN_MATRIX: dict[tuple[str, str], set[str]] = {
    ("GET", "/whoami"): {"admin", "auditor", "tenant-admin", "developer", "app"},
    ("GET", "/tenants"): {"admin", "auditor", "tenant-admin"},
    ("GET", "/tenants/{tenant}"): {"admin", "auditor", "tenant-admin"},
    ("GET", "/endpoints"): {"admin", "auditor", "tenant-admin"},
    ("GET", "/keys"): {"admin", "tenant-admin", "developer"},
    ("POST", "/keys"): {"admin", "tenant-admin", "developer"},
    ("GET", "/keys/{key_id}"): {"admin", "tenant-admin", "developer"},
    ("POST", "/keys/{key_id}/rotate"): {"admin", "tenant-admin", "developer"},
    ("POST", "/keys/{key_id}/revoke"): {"admin", "tenant-admin", "developer"},
    ("POST", "/policy/reload"): {"admin"},
    ("GET", "/usage"): {"admin", "auditor", "tenant-admin", "developer"},
}
MODEL_CALLERS = {"developer", "app"}


def two_tenants(raw: dict[str, Any]) -> None:
    """Tenant acme next to demo, with the same policy."""
    raw["tenants"]["acme"] = copy.deepcopy(raw["tenants"]["demo"])


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Harness]:
    h = start_example(tmp_path / "data", two_tenants, config_path=tmp_path / "sekisho.yaml")
    try:
        yield h
    finally:
        h.stop()


def call(
    h: Harness | ServeProcess, method: str, path: str, key: str | None, body: Any = None
) -> Resp:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return request(method, h.root + path, json_body=body, headers=headers)


def key_id(key: str) -> str:
    return key.removeprefix("sk-sekisho-").split("-")[0]


def chat(h: Harness, key: str, content: str = "hello", model: str = "gpt-4o") -> Any:
    c = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0, timeout=20)
    return c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}]
    )


def ledger_entries(h: Harness | ServeProcess, key: str) -> list[tuple[int, bytes]]:
    """Every entry of the ledger the key may read, by walking indexes until the end."""
    out = []
    for index in range(10_000):
        r = call(h, "GET", f"/ledger/entries/{index}", key)
        if r.status_code == 404:
            break
        assert r.status_code == 200, r.text
        out.append((index, base64.b64decode(r.json()["entry"])))
    return out


# -- the OpenAPI document --------------------------------------------------------------------


def test_openapi_document_is_public_valid_json_and_lists_every_route(gw: Harness) -> None:
    r = call(gw, "GET", f"{PREFIX}/openapi.json", None)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    doc = json.loads(r.content)
    assert doc["openapi"].startswith("3.1")
    listed = {
        (method.upper(), path.removeprefix(PREFIX))
        for path, ops in doc["paths"].items()
        for method in ops
    }
    assert listed == set(ADMIN_MATRIX) | {("GET", "/openapi.json")}
    for method, path in ADMIN_MATRIX:
        op = doc["paths"][PREFIX + path][method.lower()]
        assert "x-sekisho-permissions" in op, (method, path)
        assert "401" in op["responses"] and "403" in op["responses"]


# -- the role matrix over every route --------------------------------------------------------


class Caller:
    """One key per role, all of tenant demo, plus a way to make targets for key routes."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.keys = {role: h.key("demo", role=role, name=f"{role} key") for role in ROLES}

    def target_key(self, role: str) -> str:
        """A key the caller may act on: one it created itself, when it may create keys."""
        if role in ADMIN_MATRIX[("POST", "/keys")]:
            r = call(self.h, "POST", f"{PREFIX}/keys", self.keys[role],
                     {"tenant": "demo", "role": "app", "name": "target"})  # fmt: skip
            assert r.status_code == 201, r.text
            return str(r.json()["info"]["key_id"])
        return key_id(self.h.key("demo", name="someone else's"))


BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/keys"): {"tenant": "demo", "role": "app", "name": "made in the matrix"},
    ("POST", "/keys/{key_id}/rotate"): {"overlap_seconds": 0},
}
SUCCESS = {("POST", "/keys"): 201, ("POST", "/keys/{key_id}/rotate"): 201}


def test_every_admin_route_admits_exactly_the_roles_of_the_matrix(gw: Harness) -> None:
    who = Caller(gw)
    seen: list[tuple[str, str, str, int]] = []
    for (method, template), admitted in ADMIN_MATRIX.items():
        for role in ROLES:
            path = template.replace("{tenant}", "demo")
            if "{key_id}" in path:
                path = path.replace("{key_id}", who.target_key(role))
            r = call(gw, method, PREFIX + path, who.keys[role], BODIES.get((method, template)))
            seen.append((method, template, role, r.status_code))
            if role in admitted:
                assert r.status_code == SUCCESS.get((method, template), 200), (role, path, r.text)
            else:
                assert r.status_code == 403, (role, path, r.text)
                error = r.json()["error"]
                assert error["type"] == "permission_error"
                assert error["code"] == "insufficient_role"
                assert f"Role '{role}'" in error["message"]
    assert len(seen) == len(ADMIN_MATRIX) * len(ROLES)


def test_admin_routes_without_credentials_are_401_except_the_schema(gw: Harness) -> None:
    for method, template in ADMIN_MATRIX:
        path = template.replace("{tenant}", "demo").replace("{key_id}", "0123456789ab")
        r = call(gw, method, PREFIX + path, None, BODIES.get((method, template)))
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("role", ROLES)
def test_model_routes_admit_apps_and_developers_only(gw: Harness, role: str) -> None:
    key = gw.key("demo", role=role)
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)
    calls = {
        "chat": lambda: c.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        ),
        "embeddings": lambda: c.embeddings.create(model="text-embedding-3-small", input="hi"),
        "models": lambda: c.models.list(),
    }
    before = sum(gw.bytes_received().values())
    for name, fn in calls.items():
        if role in MODEL_CALLERS:
            fn()
        else:
            with pytest.raises(openai.PermissionDeniedError) as err:
                fn()
            message = err.value.response.json()["error"]["message"]
            assert f"Role '{role}'" in message and "'models.call'" in message, name
    if role not in MODEL_CALLERS:
        assert sum(gw.bytes_received().values()) == before, "a refused call sent bytes upstream"


# -- the ledger: tenants read their own, auditors everyone's, nobody reads prompts ------------


def test_ledger_entries_are_readable_by_their_tenant_and_auditors_only(gw: Harness) -> None:
    demo_app = gw.key("demo")
    rid = chat(gw, demo_app, MARKER).headers["x-request-id"]
    acme_app = gw.key("acme")
    auditor = gw.key("acme", role="auditor")  # an auditor of another tenant still reads all

    receipt = call(gw, "GET", f"/ledger/receipts/{rid}", auditor)
    assert receipt.status_code == 200, receipt.text
    index = receipt.json()["index"]
    decision = json.loads(base64.b64decode(receipt.json()["entry"]))
    assert decision["tenant"] == "demo" and decision["request_id"] == rid

    assert call(gw, "GET", f"/ledger/entries/{index}", demo_app).status_code == 200
    assert call(gw, "GET", f"/ledger/receipts/{rid}", demo_app).status_code == 200
    other = call(gw, "GET", f"/ledger/entries/{index}", acme_app)
    assert other.status_code == 403, other.text
    assert "ledger.read" in other.json()["error"]["message"]
    assert call(gw, "GET", f"/ledger/receipts/{rid}", acme_app).status_code in (403, 404)
    assert call(gw, "GET", f"/ledger/entries/{index}", auditor).status_code == 200


def test_auditors_read_every_tenants_records_but_never_prompt_content(gw: Harness) -> None:
    rids = [chat(gw, gw.key(t), f"{MARKER} from {t}").headers["x-request-id"]
            for t in ("demo", "acme")]  # fmt: skip
    auditor = gw.key("demo", role="auditor")
    seen = b""
    entries = ledger_entries(gw, auditor)
    assert {json.loads(e).get("tenant") for _, e in entries} >= {"demo", "acme"}
    seen += b"".join(e for _, e in entries)
    for rid in rids:
        r = call(gw, "GET", f"/ledger/receipts/{rid}", auditor)
        assert r.status_code == 200, r.text
        seen += r.content + base64.b64decode(r.json()["entry"])
        seen += base64.b64decode(r.json()["outcome"]["entry"])
    for path in ("/tenants", "/tenants/demo", "/usage", "/whoami"):
        r = call(gw, "GET", PREFIX + path, auditor)
        assert r.status_code == 200, r.text
        seen += r.content
    assert b"Kirigaya" not in seen and b"8,400,000" not in seen
    with pytest.raises(openai.PermissionDeniedError):
        chat(gw, auditor, "an auditor asking a model")


# -- developers and admins -------------------------------------------------------------------


def test_developer_manages_own_keys_through_the_admin_api(gw: Harness) -> None:
    dev, other_dev = gw.key("demo", role="developer"), gw.key("demo", role="developer")
    admin = gw.key("demo", role="admin")
    made = call(gw, "POST", f"{PREFIX}/keys", dev, {"role": "app", "name": "ci"})
    assert made.status_code == 201, made.text
    app_key, app_id = made.json()["key"], made.json()["info"]["key_id"]
    assert made.json()["info"]["tenant"] == "demo"
    assert chat(gw, app_key).status_code == 200

    listed = {k["key_id"] for k in call(gw, "GET", f"{PREFIX}/keys", dev).json()["data"]}
    assert app_id in listed and key_id(admin) not in listed and key_id(other_dev) not in listed

    foreign = call(gw, "POST", f"{PREFIX}/keys/{app_id}/revoke", other_dev)
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "not_owner"
    assert call(gw, "POST", f"{PREFIX}/keys", dev, {"role": "admin"}).status_code == 403
    assert call(gw, "POST", f"{PREFIX}/keys", dev, {"tenant": "acme"}).status_code == 403

    assert call(gw, "POST", f"{PREFIX}/keys/{app_id}/revoke", dev).status_code == 200
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        chat(gw, app_key)


def test_a_restricted_developer_key_makes_no_key_beyond_its_own_limits(gw: Harness) -> None:
    """A developer key limited to one model and one day cannot mint a key for every model, or
    one that outlives it; revoking it revokes the keys it made."""
    import time

    day = time.time() + 86400
    dev = gw.key("demo", role="developer", models=("chat-default",), expires_at=day)
    wider = call(gw, "POST", f"{PREFIX}/keys", dev, {"role": "app"})
    assert wider.status_code == 403 and "chat-default" in wider.json()["error"]["message"]
    other = call(gw, "POST", f"{PREFIX}/keys", dev, {"role": "app", "models": ["gpt-4.1"]})
    assert other.status_code == 403
    made = call(gw, "POST", f"{PREFIX}/keys", dev, {"role": "app", "models": ["chat-default"]})
    assert made.status_code == 201, made.text
    info = made.json()["info"]
    assert info["models"] == ["chat-default"]
    from datetime import datetime

    assert info["expires_at"] is not None
    assert datetime.fromisoformat(info["expires_at"].replace("Z", "+00:00")).timestamp() <= day + 1
    app_key = made.json()["key"]
    assert chat(gw, app_key, model="chat-default").status_code == 200

    admin = gw.key("demo", role="admin")
    assert call(gw, "POST", f"{PREFIX}/keys/{key_id(dev)}/revoke", admin).status_code == 200
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        chat(gw, app_key, model="chat-default")


def test_a_restricted_key_rotates_no_key_into_one_beyond_its_own_limits(gw: Harness) -> None:
    """A tenant-admin key limited to one model and one day, refused a key for every model,
    rotated the tenant's unrestricted application key (or a peer tenant-admin's) and was
    handed the successor's secret: every model, no expiry. And a key with an expiry rotated
    itself into a successor living as long again, so expiring never came."""
    import time
    from datetime import datetime

    def expiry(info: dict[str, Any]) -> float:
        assert info["expires_at"] is not None, info
        return datetime.fromisoformat(info["expires_at"].replace("Z", "+00:00")).timestamp()

    day = time.time() + 86400
    boss = gw.key("demo", role="tenant-admin", models=("chat-default",), expires_at=day)
    for wide in (gw.key("demo", name="billing"), gw.key("demo", role="tenant-admin")):
        r = call(gw, "POST", f"{PREFIX}/keys/{key_id(wide)}/rotate", boss, {"overlap_seconds": 0})
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "insufficient_role"
        assert "chat-default" in r.json()["error"]["message"]
        kept = KeyStore(gw.data_dir / "identity.db").get(key_id(wide))
        assert (kept.successor, kept.expires_at) == (None, None)  # still its holder's
    narrow = gw.key("demo", name="chat only", models=("chat-default",))
    r = call(gw, "POST", f"{PREFIX}/keys/{key_id(narrow)}/rotate", boss, {"overlap_seconds": 60})
    assert r.status_code == 201, r.text
    assert r.json()["info"]["models"] == ["chat-default"] and expiry(r.json()["info"]) <= day + 1

    hour = time.time() + 3600
    dev = gw.key("demo", role="developer", expires_at=hour)
    time.sleep(1.1)
    r = call(gw, "POST", f"{PREFIX}/keys/{key_id(dev)}/rotate", dev, {"overlap_seconds": 0})
    assert r.status_code == 201, r.text
    assert expiry(r.json()["info"]) <= hour + 1  # a new secret, not a new hour


def test_a_tenants_view_shows_its_settings_not_where_the_operator_keeps_the_config(
    gw: Harness, tmp_path: Path
) -> None:
    """A tenant-admin reading its tenant's settings was shown ``source_file``, the path of the
    operator's configuration file on the gateway host: not a setting of the tenant."""
    for role in ("tenant-admin", "auditor"):
        r = call(gw, "GET", f"{PREFIX}/tenants/demo", gw.key("demo", role=role))
        assert r.status_code == 200, r.text
        assert "source_file" not in r.json()["settings"], r.text
        assert str(tmp_path) not in r.text
        assert r.json()["settings"]["home_region"] == "jp"


def test_a_revoked_tenant_admin_keeps_no_secret_it_rotated(gw: Harness) -> None:
    """A tenant-admin about to be removed rotated a peer's key with 90 days of overlap (its
    holder noticed nothing) and kept the successor's secret: after the operator revoked the
    tenant-admin's key, the successor still made keys. Whoever rotates a key is handed its
    successor, so revoking it revokes what it rotated, as what it made."""
    admin = gw.key("demo", role="admin")
    mallory = gw.key("demo", role="tenant-admin", name="leaving")
    peer = gw.key("demo", role="tenant-admin", name="staying")
    r = call(gw, "POST", f"{PREFIX}/keys/{key_id(peer)}/rotate", mallory,
             {"overlap_seconds": 90 * 86400})  # fmt: skip
    assert r.status_code == 201, r.text
    kept = r.json()["key"]
    r = call(gw, "POST", f"{PREFIX}/keys/{key_id(kept)}/rotate", kept, {"overlap_seconds": 600})
    assert r.status_code == 201, r.text
    kept_on = r.json()["key"]
    made = call(gw, "POST", f"{PREFIX}/keys", kept_on, {"role": "app"}).json()["key"]
    assert call(gw, "POST", f"{PREFIX}/keys/{key_id(mallory)}/revoke", admin).status_code == 200
    for key in (mallory, kept, kept_on, made):
        r = call(gw, "GET", f"{PREFIX}/whoami", key)
        assert r.status_code == 401 and "revoked" in r.text, (key_id(key), r.text)
    # the peer's own key, which mallory never saw, works on through its overlap
    assert call(gw, "GET", f"{PREFIX}/whoami", peer).status_code == 200


def test_revoking_a_developer_key_leaves_no_key_of_its_rotation_line_working(
    tmp_path: Path,
) -> None:
    """The successor a developer key rotated to, and every key that successor made, fall with
    it, in every worker: a revoked developer key leaves no working key behind."""
    sims = Simulators(demo_sim_specs()).start()
    g = ServeProcess(write_config(tmp_path / "sekisho.yaml", sims.config()), tmp_path / "data",
                     workers=2)  # fmt: skip
    try:
        g.start()
        admin = g.key("demo", role="admin")
        made = call(g, "POST", f"{PREFIX}/keys", admin, {"tenant": "demo", "role": "developer"})
        assert made.status_code == 201, made.text
        dev = made.json()["key"]
        rotated = call(g, "POST", f"{PREFIX}/keys/{key_id(dev)}/rotate", dev,
                       {"overlap_seconds": 600})  # fmt: skip
        assert rotated.status_code == 201, rotated.text
        successor = rotated.json()["key"]
        child = call(g, "POST", f"{PREFIX}/keys", successor, {"role": "app"})
        assert child.status_code == 201, child.text
        line = [dev, successor, child.json()["key"]]
        for key in line:  # each worker has seen (and remembers) every key working
            for _ in range(4):
                assert call(g, "GET", f"{PREFIX}/whoami", key).status_code == 200

        revoked = call(g, "POST", f"{PREFIX}/keys/{key_id(dev)}/revoke", admin)
        assert revoked.status_code == 200, revoked.text
        for key in line:
            for _ in range(4):
                r = call(g, "GET", f"{PREFIX}/whoami", key)
                assert r.status_code == 401 and "revoked" in r.text, (key_id(key), r.text)
    finally:
        g.stop()
        sims.stop()


def test_admin_reloads_policy_but_cannot_call_models_with_the_admin_key(gw: Harness) -> None:
    admin = gw.key("demo", role="admin")
    r = call(gw, "POST", f"{PREFIX}/policy/reload", admin)
    assert r.status_code == 200, r.text
    assert r.json()["reloaded"] is True
    with pytest.raises(openai.PermissionDeniedError, match=r"models\.call"):
        chat(gw, admin)


# -- policy reload ---------------------------------------------------------------------------


def edit_config(path: Path, change: Any) -> None:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(raw)
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")


def stricter(raw: dict[str, Any]) -> None:
    raw["tenants"]["demo"]["policy"]["levels"]["confidential"] = {"domestic_operator_only": True}


def digest_now(h: Harness | ServeProcess, key: str) -> str:
    c = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0, timeout=20)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "which policy?"}]
    )
    return str(raw.headers["x-sekisho-policy-digest"])


def test_valid_reload_serves_the_new_digest_and_records_an_admin_entry(gw: Harness) -> None:
    app, admin = gw.key("demo"), gw.key("demo", role="admin")
    auditor = gw.key("demo", role="auditor")
    before = digest_now(gw, app)
    assert gw.config_path is not None
    edit_config(gw.config_path, stricter)
    r = call(gw, "POST", f"{PREFIX}/policy/reload", admin)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["changed"] == ["demo"]
    after = digest_now(gw, app)
    assert after == result["policies"]["demo"] != before
    assert digest_now(gw, gw.key("acme")) == result["policies"]["acme"]  # acme unchanged

    admin_entries = [json.loads(e) for _, e in ledger_entries(gw, auditor)]
    reloads = [e for e in admin_entries if e.get("kind") == "admin"
               and e["action"] == "policy.reload"]  # fmt: skip
    # Who asked (recorded before the reload), then what changed (recorded by the gateway).
    assert [e["actor"] for e in reloads if e["target"] == "policy"] == [f"key:{key_id(admin)}"]
    swap = [e for e in reloads if e["target"] == "tenant/demo"]
    assert len(swap) == 1
    assert swap[0]["details"] == {"from": before, "to": after}


def test_a_reload_is_recorded_even_where_the_policies_file_cannot_be_kept(gw: Harness) -> None:
    """policies-in-force.json unusable (here a directory; a read-only or full disk alike): the
    reload still applies whole and is still an admin entry (a review found it half applied,
    unrecorded, and reported as not applied)."""
    app, admin = gw.key("demo"), gw.key("demo", role="admin")
    auditor = gw.key("demo", role="auditor")
    before = digest_now(gw, app)
    target = gw.data_dir / "policies-in-force.json"
    target.unlink(missing_ok=True)
    target.mkdir()
    assert gw.config_path is not None
    edit_config(gw.config_path, stricter)
    r = call(gw, "POST", f"{PREFIX}/policy/reload", admin)
    assert r.status_code == 200, r.text
    after = digest_now(gw, app)
    assert after != before
    entries = [json.loads(e) for _, e in ledger_entries(gw, auditor)]
    swaps = [e for e in entries if e.get("action") == "policy.reload"
             and e.get("target") == "tenant/demo"]  # fmt: skip
    assert [e["details"] for e in swaps] == [{"from": before, "to": after}]


def test_a_reload_says_which_changes_wait_for_a_restart(gw: Harness) -> None:
    """A new log level or ledger setting is not applied by a reload: the answer (and a warning
    in the log) says so, instead of letting the operator believe it is in force."""
    admin = gw.key("demo", role="admin")
    assert gw.config_path is not None
    first = call(gw, "POST", f"{PREFIX}/policy/reload", admin).json()
    assert "restart_needed" not in first  # nothing changed in the file

    def louder(raw: dict[str, Any]) -> None:
        stricter(raw)
        raw["server"]["log_level"] = "debug"
        raw.setdefault("ledger", {})["group_size"] = 64

    edit_config(gw.config_path, louder)
    r = call(gw, "POST", f"{PREFIX}/policy/reload", admin)
    assert r.status_code == 200, r.text
    assert r.json()["changed"] == ["demo"]  # the policy was applied
    assert r.json()["restart_needed"] == ["ledger", "server"]


def test_a_reload_applies_a_tenants_new_limits_at_once(gw: Harness) -> None:
    app, admin = gw.key("demo"), gw.key("demo", role="admin")
    assert digest_now(gw, app)  # under the example's 600 requests a minute

    def one_a_minute(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["limits"] = {"requests_per_minute": 1}

    assert gw.config_path is not None
    edit_config(gw.config_path, one_a_minute)
    assert call(gw, "POST", f"{PREFIX}/policy/reload", admin).status_code == 200
    c = openai.OpenAI(base_url=gw.base_url, api_key=app, max_retries=0, timeout=20)
    with pytest.raises(openai.RateLimitError, match=r"requests_per_minute|per minute"):
        for _ in range(2):  # the one allowed (the counter may already hold it), then refused
            c.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "again"}]
            )


def typo_key(raw: dict[str, Any]) -> None:
    raw["tenants"]["demo"]["policy"]["prefr"] = raw["tenants"]["demo"]["policy"].pop("prefer")


def unknown_pack(raw: dict[str, Any]) -> None:
    raw["tenants"]["demo"]["policy"]["extends"] = ["jp-appi", "jp-mynumbr"]


def shift_jis(path: Path) -> None:
    """The file saved again by an editor that writes Shift_JIS (a Japanese comment added)."""
    path.write_bytes("# 変更\n".encode("cp932") + path.read_bytes())


def moved_home(raw: dict[str, Any]) -> None:
    """A SIGHUP moved a tenant's storage (and its policy's home country) to the US silently."""
    raw["regions"]["us"] = {"country": "US", "store": "sqlite"}
    raw["tenants"]["demo"]["home_region"] = "us"


@pytest.mark.parametrize(
    ("change", "named"),
    [(typo_key, "tenants.demo.policy.prefr"), (unknown_pack, "jp-mynumbr"),
     (shift_jis, "not UTF-8"), (moved_home, "tenants.demo.home_region")],
    ids=["typo key", "unknown pack", "not UTF-8", "home region moved"],
)  # fmt: skip
def test_invalid_reload_names_file_and_key_and_the_old_policy_keeps_serving(
    gw: Harness, change: Any, named: str
) -> None:
    app, admin = gw.key("demo"), gw.key("demo", role="admin")
    before = digest_now(gw, app)
    assert gw.config_path is not None
    if change is shift_jis:
        shift_jis(gw.config_path)
    else:
        edit_config(gw.config_path, change)
    r = call(gw, "POST", f"{PREFIX}/policy/reload", admin)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_config"
    assert f"{gw.config_path}: " in error["message"]
    assert named in error["message"]
    assert "keeps serving" in error["message"]
    assert digest_now(gw, app) == before
    assert call(gw, "GET", "/healthz", None).status_code == 200


def _wait_for_digest(g: ServeProcess, key: str, differs_from: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        digest = digest_now(g, key)
        if digest != differs_from or time.monotonic() > deadline:
            return digest
        time.sleep(0.05)


@pytest.mark.slow
def test_sighup_reloads_a_valid_policy_and_refuses_an_invalid_one(tmp_path: Path) -> None:
    sims = Simulators().start()
    config = write_config(tmp_path / "sekisho.yaml", sims.config())
    g = ServeProcess(config, tmp_path / "data")
    try:
        g.start()
        app = g.key("demo")
        before = digest_now(g, app)
        edit_config(config, stricter)
        g.signal(signal.SIGHUP)
        after = _wait_for_digest(g, app, before)
        assert after != before, "SIGHUP did not swap in the valid policy"

        edit_config(config, typo_key)
        g.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not any(line.get("msg", "").startswith("policy reload refused")
                      for line in g.log()):  # fmt: skip
            assert time.monotonic() < deadline, g.stderr()
            time.sleep(0.05)
        refusal = next(x for x in g.log() if x.get("msg", "").startswith("policy reload refused"))
        assert any(f"{config}: tenants.demo.policy.prefr" in p for p in refusal["problems"])
        assert digest_now(g, app) == after, "an invalid config replaced the policy in force"
        assert g.proc is not None and g.proc.poll() is None
    finally:
        g.stop()
        sims.stop()


class Workers:
    """Rounds of concurrent requests on fresh connections, so that every worker answers some;
    each round's request ids are tagged so the log tells which worker answered."""

    def __init__(self, g: ServeProcess, key: str) -> None:
        self.g, self.key, self.rounds = g, key, 0

    def digests(self, n: int = 32) -> tuple[set[str], set[int]]:
        self.rounds += 1
        tag = f"round{self.rounds}-"
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "which policy?"}]}

        def one(i: int) -> str:
            headers = {"authorization": f"Bearer {self.key}", "x-request-id": f"{tag}{i}"}
            attempt = limited = 0
            while True:
                try:
                    r = request("POST", f"{self.g.base_url}/chat/completions", json_body=body,
                                headers=headers)  # fmt: skip
                except (ConnectionError, http.client.RemoteDisconnected):
                    # A worker being restarted closes connections it accepted but had not
                    # read a request from yet (uvicorn's graceful shutdown); clients retry
                    # those, as the OpenAI SDKs do. An answered request is never retried.
                    attempt += 1
                    if attempt == 3:
                        raise
                    time.sleep(0.1)
                    continue
                if r.status_code == 429 and limited < 10:
                    # Rounds of 32 for as long as a reload takes pass the example tenant's
                    # 600 requests a minute: wait as told, as the SDKs do.
                    limited += 1
                    time.sleep(float(r.headers.get("retry-after", "1")))
                    continue
                break
            assert r.status_code == 200, r.text
            return r.headers["x-sekisho-policy-digest"]

        with ThreadPoolExecutor(8) as pool:
            digests = set(pool.map(one, range(n)))
        time.sleep(0.2)  # let the log lines reach the file
        pids = {
            x["pid"] for x in self.g.log() if str(x.get("client_request_id", "")).startswith(tag)
        }
        return digests, pids

    def until(self, done: Callable[[set[str]], bool], timeout: float = 30) -> set[str]:
        """Digests of the first round, after all workers answered, that satisfies done."""
        deadline = time.monotonic() + timeout
        while True:
            digests, pids = self.digests()
            if (len(pids) == 2 and done(digests)) or time.monotonic() > deadline:
                return digests
            time.sleep(0.2)


@pytest.mark.slow
def test_with_two_workers_a_reload_reaches_every_worker_and_a_bad_one_none(
    tmp_path: Path,
) -> None:
    sims = Simulators(demo_sim_specs(delay_ms=30)).start()  # slow enough that requests overlap
    config = write_config(tmp_path / "sekisho.yaml", sims.config())
    g = ServeProcess(config, tmp_path / "data", workers=2)
    try:
        g.start()
        app, admin = g.key("demo"), g.key("demo", role="admin")
        w = Workers(g, app)
        [first] = w.until(lambda d: len(d) == 1)

        edit_config(config, stricter)
        r = request("POST", f"{g.root}{PREFIX}/policy/reload",
                    headers={"authorization": f"Bearer {admin}"})  # fmt: skip
        assert r.status_code == 200, r.text
        second = r.json()["policies"]["demo"]
        # The answer comes once every worker serves it (the new ones were all started first).
        assert second != first and "every worker was replaced" in r.json()["workers"]
        assert w.until(lambda d: d == {second}) == {second}, "a worker kept the old policy"

        edit_config(config, typo_key)
        g.signal(signal.SIGHUP)
        [problems] = wait_for_log(g, REFUSED, 1)
        assert any(f"{config}: tenants.demo.policy.prefr" in p for p in problems), problems
        assert w.until(lambda d: True) == {second}, "an invalid config replaced the policy"
        assert g.proc is not None and g.proc.poll() is None

        def fixed(raw: dict[str, Any]) -> None:
            policy = raw["tenants"]["demo"]["policy"]
            policy["prefer"] = policy.pop("prefr")
            raw["tenants"]["demo"]["default_classification"] = "public"

        edit_config(config, fixed)
        g.signal(signal.SIGHUP)
        third = w.until(lambda d: len(d) == 1 and d != {second})
        assert len(third) == 1 and third != {second}, third

        # Each change is one admin entry, whichever way it came (the admin route, SIGHUP to
        # the supervisor): recorded by the first new worker to pass the gate; the others find
        # it recorded.
        changes = [
            json.loads(e)
            for _, e in ledger_entries(g, g.key("demo", role="auditor"))
            if b'"tenant/demo"' in e
        ]
        assert [(e["action"], e["details"]) for e in changes] == [
            ("policy.reload", {"from": first, "to": second}),
            ("policy.reload", {"from": second, "to": third.pop()}),
        ]
    finally:
        g.stop()
        sims.stop()


REFUSED = "policy reload refused; every worker keeps the configuration in force"
ABORTED = "reload aborted"


def wait_for_log(g: ServeProcess, msg: str, n: int, timeout: float = 30) -> list[Any]:
    """The ``problems`` of the first n log lines whose message starts with msg, once there."""
    deadline = time.monotonic() + timeout
    while True:
        found = [x for x in g.log() if str(x.get("msg", "")).startswith(msg)]
        if len(found) >= n:
            return [x.get("problems") for x in found[:n]]
        assert time.monotonic() < deadline, g.stderr()[-3000:]
        time.sleep(0.1)


def worker_pids(g: ServeProcess) -> set[int]:
    """The supervisor's worker processes now."""
    assert g.proc is not None
    pid = g.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    out = set()
    for child in children:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.add(int(child))
    return out


def gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status  # exited, not yet reaped by init


def wait_for_workers(g: ServeProcess, n: int, without: set[int], timeout: float = 30) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        pids = worker_pids(g)
        if len(pids) == n and not pids & without:
            return pids
        assert time.monotonic() < deadline, g.stderr()[-3000:]
        time.sleep(0.1)


@pytest.mark.slow
def test_with_two_workers_a_reload_whose_new_workers_cannot_start_changes_no_worker(
    tmp_path: Path,
) -> None:
    """The edited file validates but names a ledger that cannot be reached: no new worker
    starts, so every old one keeps serving the old policy, and the admin route says so (it
    had answered 200 with the new policy, swapped into the one worker that took it)."""
    sims = Simulators(demo_sim_specs(delay_ms=30)).start()
    config = write_config(tmp_path / "sekisho.yaml", sims.config())
    original = config.read_bytes()
    g = ServeProcess(config, tmp_path / "data", workers=2)
    try:
        g.start()
        app, admin = g.key("demo"), g.key("demo", role="admin")
        w = Workers(g, app)
        [first] = w.until(lambda d: len(d) == 1)
        pids = worker_pids(g)

        def unreachable_ledger(raw: dict[str, Any]) -> None:
            stricter(raw)
            raw["ledger"] = {"url": "postgresql://sekisho@127.0.0.1:1/none"}

        edit_config(config, unreachable_ledger)
        r = request("POST", f"{g.root}{PREFIX}/policy/reload",
                    headers={"authorization": f"Bearer {admin}"})  # fmt: skip
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "reload_failed"
        assert "keeps serving the configuration in force" in error["message"]
        assert worker_pids(g) == pids
        assert w.until(lambda d: d != {first}, timeout=2) == {first}, "a worker switched policy"

        g.signal(signal.SIGHUP)  # systemd's ExecReload: the same outcome, in the log
        wait_for_log(g, ABORTED, 2)
        assert worker_pids(g) == pids
        assert w.until(lambda d: d != {first}, timeout=2) == {first}

        config.write_bytes(original)
        edit_config(config, stricter)
        r = request("POST", f"{g.root}{PREFIX}/policy/reload",
                    headers={"authorization": f"Bearer {admin}"})  # fmt: skip
        assert r.status_code == 200, r.text
        second = r.json()["policies"]["demo"]
        assert w.until(lambda d: d == {second}) == {second}
        assert not worker_pids(g) & pids
    finally:
        g.stop()
        sims.stop()


@pytest.mark.slow
def test_with_two_workers_a_worker_respawned_after_a_crash_serves_the_configuration_in_force(
    tmp_path: Path,
) -> None:
    """A worker killed and respawned serves what the others serve, not the file edited on disk
    since (which silently went live in that one worker, or, invalid, made it die in a loop)."""
    sims = Simulators(demo_sim_specs(delay_ms=30)).start()
    config = write_config(tmp_path / "sekisho.yaml", sims.config())
    g = ServeProcess(config, tmp_path / "data", workers=2)
    try:
        g.start()
        app = g.key("demo")
        w = Workers(g, app)
        [first] = w.until(lambda d: len(d) == 1)
        for edit in (stricter, typo_key):
            edit_config(config, edit)  # edited, not reloaded
            pids = worker_pids(g)
            victim = min(pids)
            os.kill(victim, signal.SIGKILL)
            respawned = wait_for_workers(g, 2, {victim})
            assert w.until(lambda d: False, timeout=3) == {first}
            time.sleep(1)
            assert worker_pids(g) == respawned, "the respawned worker did not stay up"
        assert not any("does not start" in str(x.get("msg")) for x in g.log()), g.stderr()
        entries = ledger_entries(g, g.key("demo", role="auditor"))
        assert not [e for _, e in entries if b'"policy.' in e], "no policy changed"
    finally:
        g.stop()
        sims.stop()


@pytest.mark.slow
def test_with_two_workers_a_worker_killed_is_a_warning_naming_it_and_how(tmp_path: Path) -> None:
    """The OOM killer's SIGKILL to a worker was one info line of uvicorn's ("Child process
    [N] died"): the log now says, as a warning, which worker, how, and what it cut."""
    sims = Simulators(demo_sim_specs()).start()
    config = write_config(tmp_path / "sekisho.yaml", sims.config())
    g = ServeProcess(config, tmp_path / "data", workers=2)
    try:
        g.start()
        victim = min(worker_pids(g))
        os.kill(victim, signal.SIGKILL)
        wait_for_workers(g, 2, {victim})
        wait_for_log(g, "a worker died", 1, timeout=10)
        [line] = [x for x in g.log() if str(x.get("msg")).startswith("a worker died")]
        assert line["level"] == "warning"
        assert line["worker"] == victim
        assert line["how"].startswith("killed by SIGKILL")
        assert "ledger audit" in line["msg"]
        assert line["new"] in worker_pids(g)
    finally:
        g.stop()
        sims.stop()


def abroad(raw: dict[str, Any]) -> None:
    """The domestic endpoint's deployment moved to the US."""
    ep = next(e for e in raw["endpoints"] if e["id"] == "sim-domestic-tokyo")
    ep["jurisdiction"] = {"country": "US", "region": "us-east"}


def tenant_removed(raw: dict[str, Any]) -> None:
    del raw["tenants"]["acme"]


@pytest.mark.slow
def test_sighup_to_the_supervisor_refuses_what_the_admin_route_refuses(tmp_path: Path) -> None:
    """docs/operations.md: a reload that changes the catalogue, removes a tenant or moves one's
    home region is refused, SIGHUP and admin route alike (SIGHUP to the --workers supervisor
    had restarted every worker on it)."""
    sims = Simulators(demo_sim_specs(delay_ms=30)).start()
    config = write_config(tmp_path / "sekisho.yaml", sims.config(two_tenants))
    original = config.read_bytes()
    g = ServeProcess(config, tmp_path / "data", workers=2)
    try:
        g.start()
        app, admin = g.key("demo"), g.key("demo", role="admin")
        w = Workers(g, app)
        [first] = w.until(lambda d: len(d) == 1)
        pids = worker_pids(g)
        changes = [(abroad, "endpoints"), (tenant_removed, "tenants"),
                   (moved_home, "tenants.demo.home_region")]  # fmt: skip
        for n, (change, named) in enumerate(changes, 1):
            config.write_bytes(original)
            edit_config(config, change)
            r = request("POST", f"{g.root}{PREFIX}/policy/reload",
                        headers={"authorization": f"Bearer {admin}"})  # fmt: skip
            assert r.status_code == 400, r.text
            assert f"{config}: {named}: " in r.json()["error"]["message"]
            g.signal(signal.SIGHUP)
            problems = wait_for_log(g, REFUSED, n)[-1]
            assert any(p.startswith(f"{config}: {named}: ") for p in problems), problems
            assert worker_pids(g) == pids, "SIGHUP replaced the workers"
        assert w.until(lambda d: False, timeout=2) == {first}
    finally:
        g.stop()
        sims.stop()


@pytest.mark.slow
def test_workers_of_a_killed_supervisor_drain_and_exit_and_the_next_start_cleans_up(
    tmp_path: Path,
) -> None:
    """SIGKILL to the supervisor: its workers had served on, unreloadable, holding the port
    (the next start failed, address in use) and leaving the supervisor's files in /tmp."""
    sims = Simulators().start()
    config = write_config(tmp_path / "sekisho.yaml", sims.config())
    g = ServeProcess(config, tmp_path / "data", workers=2, port=free_port())
    pids: set[int] = set()
    try:
        g.start()
        pids = worker_pids(g)
        assert g.proc is not None
        supervisor = g.proc.pid
        runs = list(Path(tempfile.gettempdir()).glob(f"sekisho-run-{supervisor}-*"))
        g.proc.kill()
        g.proc.wait(5)
        deadline = time.monotonic() + 15
        while not all(gone(pid) for pid in pids):
            assert time.monotonic() < deadline, "the workers outlived their supervisor"
            time.sleep(0.1)
        assert any("supervisor has exited" in str(x.get("msg")) for x in g.log())
        g.start()  # the same port: free again
        assert len(runs) == 1 and not runs[0].exists(), "the supervisor's files were left"
    finally:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        g.stop()
        sims.stop()


def test_a_policy_an_upgrade_changed_is_recorded_on_a_data_directory_from_before_the_record(
    tmp_path: Path,
) -> None:
    """A data directory an older sekisho ran has no policies-in-force.json: the first start of
    the new version compares with the digest the ledger's entries last show (it recorded
    nothing, and a policy the upgrade changed was in no admin entry)."""
    sims = Simulators(demo_sim_specs()).start()
    config = write_config(tmp_path / "sekisho.yaml", sims.config())
    in_force = tmp_path / "data" / "policies-in-force.json"
    g = ServeProcess(config, tmp_path / "data")
    try:
        g.start()
        first = digest_now(g, g.key("demo"))
        g.stop()
        in_force.unlink()  # as a version before the file left the data directory
        edit_config(config, stricter)  # the upgrade brings another policy (a new pack, a rule)
        g.start()
        second = digest_now(g, g.key("demo"))
        assert second != first
        auditor = g.key("demo", role="auditor")
        changes = [json.loads(e) for _, e in ledger_entries(g, auditor) if b'"policy.' in e]
        assert [(e["action"], e["target"], e["details"]) for e in changes] == [
            ("policy.start", "tenant/demo", {"from": first, "to": second})
        ]
        g.stop()
        in_force.unlink()
        g.start()  # the policy the ledger last shows is the one in force: nothing to record
        changes = [json.loads(e) for _, e in ledger_entries(g, auditor) if b'"policy.' in e]
        assert len(changes) == 1
    finally:
        g.stop()
        sims.stop()


def test_a_reload_in_a_worker_whose_supervisor_is_gone_says_so(gw: Harness) -> None:
    """A worker of `serve --workers N` left without its supervisor: the reload answers what
    happened (it had failed with a 500, after swapping the policy in that one worker)."""
    admin = gw.key("demo", role="admin")
    gw.gateway.supervisor_pid = 2**22 + 12345  # no such process: not this one's parent
    r = call(gw, "POST", f"{PREFIX}/policy/reload", admin)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "supervisor_gone"
    assert "Start the gateway again" in r.json()["error"]["message"]


def test_a_policy_changed_while_the_gateway_was_stopped_is_recorded_when_it_starts(
    tmp_path: Path,
) -> None:
    sims = Simulators(demo_sim_specs()).start()
    config = write_config(tmp_path / "sekisho.yaml", sims.config())
    g = ServeProcess(config, tmp_path / "data")
    try:
        g.start()
        first = digest_now(g, g.key("demo"))
        g.stop()
        g.start()  # the same policy: nothing to record
        edit_config(config, stricter)
        g.stop()
        g.start()  # a redeploy with a stricter policy
        second = digest_now(g, g.key("demo"))
        entries = ledger_entries(g, g.key("demo", role="auditor"))
        changes = [json.loads(e) for _, e in entries if b'"policy.' in e]
        assert [(e["action"], e["target"], e["details"]) for e in changes] == [
            ("policy.start", "tenant/demo", {"from": first, "to": second})
        ]
        # An endpoint's facts changed while stopped (its provider now keeps prompts a year):
        # the same policy over other facts is another digest, recorded at the next start.
        # What is not a fact (its weight, its timeouts) changes nothing.
        g.stop()

        def operational(raw: dict[str, Any]) -> None:
            ep = next(e for e in raw["endpoints"] if e["id"] == "sim-global-japaneast")
            ep["weight"] = 3

        edit_config(config, operational)
        g.start()
        assert digest_now(g, g.key("demo")) == second
        g.stop()

        def retained(raw: dict[str, Any]) -> None:
            ep = next(e for e in raw["endpoints"] if e["id"] == "sim-global-japaneast")
            ep["data_terms"] = {"retention_days": 365, "trains_on_data": False}

        edit_config(config, retained)
        g.start()
        third = digest_now(g, g.key("demo"))
        assert third != second
        entries = ledger_entries(g, g.key("demo", role="auditor"))
        changes = [json.loads(e) for _, e in entries if b'"policy.' in e]
        assert [(e["action"], e["details"]) for e in changes][-1] == (
            "policy.start", {"from": second, "to": third}
        )  # fmt: skip
        g.stop()
        (tmp_path / "data" / "policies-in-force.json").write_text("{not json")
        g.start()  # a damaged record: nothing is invented, and the next change is seen again
        assert len(ledger_entries(g, g.key("demo", role="auditor"))) == len(entries)
        assert any("policies-in-force.json" in x.get("msg", "") for x in g.log())
    finally:
        g.stop()
        sims.stop()


def test_endpoints_lists_the_catalogue_with_health_and_never_a_secret(tmp_path: Path) -> None:
    secret = "sk-upstream-SECRET-7c41"

    def literal_keys(raw: dict[str, Any]) -> None:
        for ep in raw["endpoints"]:
            ep["api_key"] = secret

    h = start_example(tmp_path, literal_keys)
    try:
        admin = h.key(role="admin")
        h.fault("sim-global-useast", mode="status", status=503)
        for _ in range(8):  # the weighted choice meets the failing endpoint now and then
            chat(h, h.key())
        r = call(h, "GET", f"{PREFIX}/endpoints", admin)
        assert r.status_code == 200
        data = {e["id"]: e for e in r.json()["data"]}
        assert set(data) == {"sim-domestic-tokyo", "sim-global-japaneast", "sim-global-useast"}
        tokyo = data["sim-domestic-tokyo"]
        assert tokyo["jurisdiction"] == "JP/tokyo" and tokyo["operator"]["country"] == "JP"
        assert tokyo["credential"] == "api_key" and tokyo["simulated"] is True
        # the facts policies decide on (deployments, confidential_computing), and the weight
        assert tokyo["deployment"] == "public_cloud" and tokyo["weight"] == 1
        assert tokyo["confidential_computing"] is False
        assert "gpt-4o" in data["sim-global-useast"]["models"]
        assert set(tokyo["health"]) >= {"up", "in_flight", "waiting", "last_error"}
        us = data["sim-global-useast"]["health"]
        assert us["last_error"] == "" or "HTTP 503" in us["last_error"]
        assert secret not in r.text  # how sekisho authenticates, never with what
        assert call(h, "GET", f"{PREFIX}/endpoints", h.key()).status_code == 403
    finally:
        h.stop()
