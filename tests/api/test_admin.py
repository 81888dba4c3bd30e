"""The admin API: every route against every role, audit before action, OpenAPI from the table."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from sekisho.api.admin import PREFIX, ROUTES, AdminAPI
from sekisho.errors import AuthenticationFailed
from sekisho.identity import ROLES, Authenticator, GatewayLimitsSpec, KeyStore, LimitsSpec
from sekisho.identity.limits import Limiter
from sekisho.identity.usage import SQLiteUsage


class Tenant:
    __slots__ = ("home_country", "home_region", "name", "policy")

    def __init__(self, name: str) -> None:
        self.name, self.home_region, self.home_country = name, "tokyo", "JP"
        self.policy = object()  # not a scalar: never shown


@dataclass
class Audit:
    records: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)
    broken: bool = False

    async def admin(self, actor: str, action: str, target: str, details: Any) -> None:
        if self.broken:
            raise OSError("ledger unavailable")
        self.records.append((actor, action, target, dict(details)))


@dataclass
class Env:
    api: AdminAPI
    keys: KeyStore
    audit: Audit
    limiter: Limiter
    reloads: list[int]
    tokens: dict[str, str]  # role → key of tenant acme

    async def call(
        self,
        method: str,
        path: str,
        role: str | None = None,
        body: Any = None,
        query: str = "",
        token: str | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        token = token or (self.tokens[role] if role else None)
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        raw = b"" if body is None else orjson.dumps(body)
        scope = {
            "type": "http",
            "method": method,
            "path": PREFIX + path,
            "headers": headers,
            "query_string": query.encode(),
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": raw, "more_body": False}

        async def send(msg: dict[str, Any]) -> None:
            sent.append(msg)

        await self.api(scope, receive, send, "req_test")
        start = sent[0]
        hdrs = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        return start["status"], orjson.loads(sent[1]["body"]), hdrs


@pytest.fixture
def env(tmp_path: Path) -> Env:
    keys = KeyStore(tmp_path / "identity.db")
    audit = Audit()
    limiter = Limiter(
        tenants={"acme": LimitsSpec(tokens_per_day=1000), "globex": None},
        defaults=GatewayLimitsSpec.model_validate({"per_key": {"requests_per_minute": 60}}),
        usage=SQLiteUsage(tmp_path / "usage.db"),
    )
    reloads: list[int] = []

    async def reload() -> dict[str, Any]:
        reloads.append(1)
        return {"policies": {"acme": "sha256:abc"}}

    api = AdminAPI(
        keys=keys,
        authenticator=Authenticator(keys, None),
        limiter=limiter,
        usage=None,
        tenants={"acme": Tenant("acme"), "globex": Tenant("globex")},
        reload_policy=reload,
        audit=audit,
    )
    tokens = {role: keys.create("acme", role=role, name=role)[0] for role in ROLES}
    return Env(api, keys, audit, limiter, reloads, tokens)


def key_id(token: str) -> str:
    return token.split("-")[2]


# Expected: which roles each admin operation admits (the specification of the matrix).
ALLOWED = {
    "openapi": set(ROLES),
    "whoami": set(ROLES),
    "tenants.list": {"admin", "auditor", "tenant-admin"},
    "tenants.get": {"admin", "auditor", "tenant-admin"},
    "endpoints.list": {"admin", "auditor", "tenant-admin"},
    "keys.list": {"admin", "tenant-admin", "developer"},
    "keys.create": {"admin", "tenant-admin", "developer"},
    "keys.get": {"admin", "tenant-admin", "developer"},
    "keys.rotate": {"admin", "tenant-admin", "developer"},
    "keys.revoke": {"admin", "tenant-admin", "developer"},
    "policy.reload": {"admin"},
    "usage.get": {"admin", "auditor", "tenant-admin", "developer"},
}


async def request_for(env: Env, operation: str, role: str) -> tuple[str, str, Any]:
    """A request each operation's route can serve, on a target the caller owns."""
    own = key_id(env.tokens[role])
    if role == "developer":  # a key this developer made itself
        _, info = env.keys.create("acme", owner=f"key:{own}")
        own = info.key_id
    else:
        _, info = env.keys.create("acme")
        own = info.key_id
    return {
        "openapi": ("GET", "/openapi.json", None),
        "whoami": ("GET", "/whoami", None),
        "tenants.list": ("GET", "/tenants", None),
        "tenants.get": ("GET", "/tenants/acme", None),
        "endpoints.list": ("GET", "/endpoints", None),
        "keys.list": ("GET", "/keys", None),
        "keys.create": ("POST", "/keys", {"tenant": "acme", "role": "app"}),
        "keys.get": ("GET", f"/keys/{own}", None),
        "keys.rotate": ("POST", f"/keys/{own}/rotate", {"overlap_seconds": 60}),
        "keys.revoke": ("POST", f"/keys/{own}/revoke", None),
        "policy.reload": ("POST", "/policy/reload", None),
        "usage.get": ("GET", "/usage", None),
    }[operation]


def test_the_matrix_covers_every_route() -> None:
    assert set(ALLOWED) == {r.operation for r in ROUTES}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("operation", sorted(ALLOWED))
async def test_every_route_admits_exactly_the_roles_of_the_matrix(
    env: Env, operation: str, role: str
) -> None:
    method, path, body = await request_for(env, operation, role)
    status, data, _ = await env.call(method, path, role, body)
    if role in ALLOWED[operation]:
        assert 200 <= status < 300, data
    else:
        assert status == 403, data
        message = data["error"]["message"]
        assert f"Role '{role}'" in message
        assert re.search(r"lacks permission '[a-z]+\.[a-z]+'", message), message
        assert env.audit.records[-1][3]["outcome"] == "denied"


async def test_requests_without_credentials_are_refused_except_the_schema(env: Env) -> None:
    for route in ROUTES:
        path = route.path.replace("{key_id}", "0123456789ab").replace("{tenant}", "acme")
        status, data, _ = await env.call(route.method, path)
        assert status == (200 if route.permissions is None else 401), (route.path, data)


async def test_created_key_secret_is_shown_once_and_works(env: Env) -> None:
    status, data, _ = await env.call(
        "POST", "/keys", "admin", {"tenant": "globex", "role": "app", "models": ["gpt-4o"]}
    )
    assert status == 201
    secret, kid = data["key"], data["info"]["key_id"]
    principal = env.keys.authenticate(secret)
    assert (principal.tenant, principal.models) == ("globex", {"gpt-4o"})
    _, got, _ = await env.call("GET", f"/keys/{kid}", "admin")
    assert secret not in orjson.dumps(got).decode()
    assert got["owner"] == f"key:{key_id(env.tokens['admin'])}"


async def test_audit_record_names_the_new_key_before_it_exists(env: Env) -> None:
    _, data, _ = await env.call("POST", "/keys", "admin", {"tenant": "acme", "name": "ci"})
    actor, action, target, details = env.audit.records[-1]
    assert (actor, action) == (f"key:{key_id(env.tokens['admin'])}", "keys.create")
    assert target == f"key/{data['info']['key_id']}"
    assert details["name"] == "ci" and details["request_id"] == "req_test"


async def test_an_action_that_cannot_be_recorded_is_not_performed(env: Env) -> None:
    before = len(env.keys.list())
    env.audit.broken = True
    status, data, _ = await env.call("POST", "/keys", "admin", {"tenant": "acme"})
    assert status == 503 and data["error"]["code"] == "audit_unavailable"
    status, _, _ = await env.call("POST", "/policy/reload", "admin")
    assert status == 503 and env.reloads == []
    assert len(env.keys.list()) == before


async def test_revocation_through_the_api_is_immediate(env: Env) -> None:
    secret, info = env.keys.create("acme")
    status, data, _ = await env.call("POST", f"/keys/{info.key_id}/revoke", "admin")
    assert status == 200 and data["state"] == "revoked"
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await env.api.authenticator.authenticate(f"Bearer {secret}")


async def test_rotation_through_the_api_overlaps_then_retires(env: Env) -> None:
    old_secret, info = env.keys.create("acme")
    status, data, _ = await env.call(
        "POST", f"/keys/{info.key_id}/rotate", "admin", {"overlap_seconds": 3600}
    )
    assert status == 201 and data["info"]["rotated_from"] == info.key_id
    env.keys.authenticate(old_secret)
    env.keys.authenticate(data["key"])
    old = env.keys.get(info.key_id)
    assert old.expires_at == pytest.approx(time.time() + 3600, abs=5)
    status, data, _ = await env.call("POST", f"/keys/{info.key_id}/rotate", "admin")
    assert status == 400 and "already rotated" in data["error"]["message"]


async def test_developers_act_only_on_their_own_keys(env: Env) -> None:
    dev = key_id(env.tokens["developer"])
    _, mine, _ = await env.call("POST", "/keys", "developer", {"name": "mine"})
    assert mine["info"]["tenant"] == "acme" and mine["info"]["owner"] == f"key:{dev}"
    _, someone_elses = env.keys.create("acme", owner="key:ffffffffffff")
    _, listing, _ = await env.call("GET", "/keys", "developer")
    assert {k["key_id"] for k in listing["data"]} == {dev, mine["info"]["key_id"]}
    for method, suffix in [("GET", ""), ("POST", "/rotate"), ("POST", "/revoke")]:
        status, data, _ = await env.call(
            method,
            f"/keys/{someone_elses.key_id}{suffix}",
            "developer",
            {} if suffix == "/rotate" else None,
        )
        assert status == 403 and data["error"]["code"] == "not_owner"
    assert env.keys.get(someone_elses.key_id).state() == "active"


async def test_a_refusal_over_ownership_is_in_the_ledger_as_refused_not_as_done(
    env: Env,
) -> None:
    """A developer asking for another tenant's keys was refused, but the ledger said
    'keys.list tenant/globex' as if the listing had happened."""
    status, data, _ = await env.call("GET", "/keys", "developer", query="tenant=globex")
    assert status == 403 and data["error"]["code"] == "not_owner"
    listed = [r for r in env.audit.records if r[1] == "keys.list"]
    assert [(r[2], r[3].get("outcome"), r[3].get("code")) for r in listed] == [
        ("tenant/globex", "denied", "not_owner")
    ]
    status, _, _ = await env.call("POST", "/keys", "developer", {"role": "admin"})
    assert status == 403
    created = [r for r in env.audit.records if r[1] == "keys.create"]
    assert [(r[3].get("outcome"), r[3].get("code")) for r in created] == [
        ("denied", "insufficient_role")
    ]


async def test_a_refused_rotation_is_in_the_ledger_as_refused_not_as_done(env: Env) -> None:
    """Rotating a key already rotated, or revoked, was refused (400) after the ledger had
    recorded 'keys.rotate' naming a successor that never came to be, as if it had happened;
    and an action that fails after its record (its maker revoked meanwhile) said nothing more."""
    _, once = env.keys.create("acme")
    _, gone = env.keys.create("acme")
    env.keys.revoke(gone.key_id)
    status, data, _ = await env.call("POST", f"/keys/{once.key_id}/rotate", "admin", {})
    assert status == 201, data
    for kid in (once.key_id, gone.key_id):
        status, data, _ = await env.call("POST", f"/keys/{kid}/rotate", "admin", {})
        assert status == 400 and data["error"]["code"] == "key_not_rotatable", data
    rotations = [(r[2], r[3]) for r in env.audit.records if r[1] == "keys.rotate"]
    assert [(t, d.get("outcome"), "successor" in d) for t, d in rotations] == [
        (f"key/{once.key_id}", None, True),
        (f"key/{once.key_id}", "denied", False),
        (f"key/{gone.key_id}", "denied", False),
    ]

    developer = key_id(env.tokens["developer"])
    audit_admin = env.audit.admin

    async def revoked_meanwhile(actor: str, action: str, target: str, details: Any) -> None:
        await audit_admin(actor, action, target, details)
        if action == "keys.create" and "outcome" not in details:
            env.keys.revoke(developer)  # lands between the record and the key's creation

    env.audit.admin = revoked_meanwhile  # type: ignore[method-assign]
    status, data, _ = await env.call("POST", "/keys", "developer", {"name": "late"})
    assert status == 401, data
    creates = [r[3] for r in env.audit.records if r[1] == "keys.create"]
    assert [(d.get("outcome"), d.get("code")) for d in creates] == [
        (None, None),
        ("failed", "invalid_api_key"),
    ]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"role": "admin"}, "insufficient_role"),
        ({"role": "auditor"}, "insufficient_role"),
        ({"tenant": "globex"}, "not_owner"),
    ],
)
async def test_developers_cannot_grant_more_than_they_hold(env: Env, body: Any, code: str) -> None:
    status, data, _ = await env.call("POST", "/keys", "developer", body)
    assert status == 403 and data["error"]["code"] == code


async def test_usage_per_tenant_key_and_model_with_developers_seeing_their_own(env: Env) -> None:
    from sekisho.identity import Principal

    dev = key_id(env.tokens["developer"])
    for kid, model, tokens in [
        (dev, "gpt-4o", 10),
        (dev, "embed", 3),
        ("cccccccccccc", "gpt-4o", 7),
    ]:
        p = Principal(tenant="acme", key_id=kid, role="app")
        await env.limiter.settle(await env.limiter.admit(p, model, 0), tokens, 1)
    _, everything, _ = await env.call("GET", "/usage", "auditor")
    assert sum(r["total_tokens"] for r in everything["data"]) == 23
    _, own, _ = await env.call("GET", "/usage", "developer")
    assert {(r["key_id"], r["model"]) for r in own["data"]} == {(dev, "gpt-4o"), (dev, "embed")}
    _, one, _ = await env.call("GET", "/usage", "admin", query="model=gpt-4o&key_id=cccccccccccc")
    assert [(r["requests"], r["prompt_tokens"]) for r in one["data"]] == [(1, 7)]
    status, data, _ = await env.call("GET", "/usage", "developer", query="key_id=cccccccccccc")
    assert status == 403
    status, data, _ = await env.call("GET", "/usage", "admin", query="since=yesterday")
    assert status == 400 and data["error"]["param"] == "since"


async def test_a_tenant_admin_manages_every_key_of_its_tenant_and_nothing_beyond(
    env: Env,
) -> None:
    """An agency's own administrator runs its tenant's keys without the gateway's operators:
    any key of its tenant that it could have granted, never another tenant's, and never an
    operator's key that belongs to its tenant (rotating one would hand over its secret)."""
    ta = "tenant-admin"
    _, someone_elses = env.keys.create("acme", role="app", owner="key:ffffffffffff")
    _, a_dev = env.keys.create("acme", role="developer", name="alice")
    _, globex_key = env.keys.create("globex", role="app")
    operator = key_id(env.tokens["admin"])
    auditor = key_id(env.tokens["auditor"])
    _, listing, _ = await env.call("GET", "/keys", ta)
    listed = {k["key_id"] for k in listing["data"]}
    assert {someone_elses.key_id, a_dev.key_id, key_id(env.tokens[ta])} <= listed
    assert {operator, auditor, globex_key.key_id}.isdisjoint(listed)
    assert {k["tenant"] for k in listing["data"]} == {"acme"}
    for kid in (someone_elses.key_id, a_dev.key_id):
        status, data, _ = await env.call("POST", f"/keys/{kid}/rotate", ta, {})
        assert status == 201 and data["info"]["tenant"] == "acme", data
    status, data, _ = await env.call("POST", f"/keys/{a_dev.key_id}/revoke", ta)
    assert status == 200 and data["state"] == "revoked"
    for kid in (operator, auditor, globex_key.key_id):
        for method, suffix, body in [
            ("GET", "", None),
            ("POST", "/rotate", {}),
            ("POST", "/revoke", None),
        ]:
            status, data, _ = await env.call(method, f"/keys/{kid}{suffix}", ta, body)
            assert status == 403 and data["error"]["code"] == "not_owner", (kid, suffix)
            assert "its own tenant ('acme')" in data["error"]["message"]
    assert env.keys.get(operator).state() == "active"
    assert env.keys.get(globex_key.key_id).state() == "active"
    status, data, _ = await env.call("GET", "/keys", ta, query="tenant=globex")
    assert status == 403 and data["error"]["code"] == "not_owner"


async def test_a_refused_attempt_is_recorded_with_what_it_was_aimed_at(env: Env) -> None:
    """A tenant-admin's refused rotation of the operator's admin key, and its refused keys for
    another tenant or with the admin role, were in the ledger as 'keys.rotate -' and
    'keys.create -': who tried was there, but not on which key, for which tenant or role."""
    operator = key_id(env.tokens["admin"])
    attempts = [
        ("POST", f"/keys/{operator}/rotate", {}, ""),
        ("GET", f"/keys/{operator}", None, ""),
        ("POST", f"/keys/{operator}/revoke", None, ""),
        ("POST", "/keys", {"tenant": "globex", "role": "app"}, ""),
        ("POST", "/keys", {"role": "admin"}, ""),
        ("GET", "/usage", None, "tenant=globex"),
    ]
    for method, path, body, query in attempts:
        status, data, _ = await env.call(method, path, "tenant-admin", body, query)
        assert status == 403, data
    denied = [(r[1], r[2], r[3]) for r in env.audit.records if r[3].get("outcome") == "denied"]
    assert [(a, t) for a, t, _ in denied] == [
        ("keys.rotate", f"key/{operator}"),
        ("keys.get", f"key/{operator}"),
        ("keys.revoke", f"key/{operator}"),
        ("keys.create", "tenant/globex"),
        ("keys.create", "tenant/acme"),
        ("usage.get", "usage/globex"),
    ]
    assert [(d.get("role"), d.get("tenant")) for a, _, d in denied if a == "keys.create"] == [
        ("app", "globex"),
        ("admin", "acme"),
    ]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"role": "app"}, 201, None),
        ({"role": "developer", "name": "bob"}, 201, None),
        ({"role": "tenant-admin"}, 201, None),
        ({"tenant": "acme", "role": "app"}, 201, None),
        ({"role": "auditor"}, 403, "insufficient_role"),
        ({"role": "admin"}, 403, "insufficient_role"),
        ({"tenant": "globex", "role": "app"}, 403, "not_owner"),
    ],
)
async def test_a_tenant_admin_grants_only_roles_confined_to_its_tenant(
    env: Env, body: Any, status: int, code: str | None
) -> None:
    got, data, _ = await env.call("POST", "/keys", "tenant-admin", body)
    assert got == status, data
    if code is None:
        assert data["info"]["tenant"] == "acme"
        assert env.keys.authenticate(data["key"]).tenant == "acme"
    else:
        assert data["error"]["code"] == code


async def test_a_tenant_admin_sees_its_tenant_and_its_tenants_usage_only(env: Env) -> None:
    from sekisho.identity import Principal

    for tenant, kid, tokens in [("acme", "aaaaaaaaaaaa", 10), ("acme", "bbbbbbbbbbbb", 5),
                                ("globex", "cccccccccccc", 7)]:  # fmt: skip
        p = Principal(tenant=tenant, key_id=kid, role="app")
        await env.limiter.settle(await env.limiter.admit(p, "gpt-4o", 0), tokens, 1)
    _, usage, _ = await env.call("GET", "/usage", "tenant-admin")
    assert {(r["tenant"], r["key_id"]) for r in usage["data"]} == {
        ("acme", "aaaaaaaaaaaa"),
        ("acme", "bbbbbbbbbbbb"),
    }
    _, one, _ = await env.call("GET", "/usage", "tenant-admin", query="key_id=cccccccccccc")
    assert one["data"] == []  # another tenant's key: nothing of it is shown
    status, data, _ = await env.call("GET", "/usage", "tenant-admin", query="tenant=globex")
    assert status == 403 and data["error"]["code"] == "not_owner"
    _, tenants, _ = await env.call("GET", "/tenants", "tenant-admin")
    assert [t["name"] for t in tenants["data"]] == ["acme"]
    status, data, _ = await env.call("GET", "/tenants/globex", "tenant-admin")
    assert status == 403 and data["error"]["code"] == "not_owner"
    refused = [r for r in env.audit.records if r[1] == "tenants.get"]
    assert (refused[-1][2], refused[-1][3].get("outcome")) == ("tenant/globex", "denied")
    status, _, _ = await env.call("POST", "/policy/reload", "tenant-admin")
    assert status == 403 and env.reloads == []


async def test_tenant_view_shows_settings_and_limits_but_not_objects(env: Env) -> None:
    _, data, _ = await env.call("GET", "/tenants/acme", "auditor")
    assert data["settings"] == {"home_region": "tokyo", "home_country": "JP"}
    assert data["limits"] == {"tokens_per_day": 1000}
    assert data["key_limits"] == {"requests_per_minute": 60}
    status, data, _ = await env.call("GET", "/tenants/nope", "admin")
    assert status == 404


async def test_policy_reload_calls_the_gateway_and_reports(env: Env) -> None:
    status, data, _ = await env.call("POST", "/policy/reload", "admin")
    assert status == 200 and data == {
        "reloaded": True,
        "policies": {"acme": "sha256:abc"},
        "changed": [],
        "certificates": {},
    }
    assert env.reloads == [1]


@pytest.mark.parametrize(
    ("method", "path", "body", "query", "status", "words"),
    [
        ("GET", "/nothing", None, "", 404, "openapi.json lists every route"),
        ("DELETE", "/keys", None, "", 405, "accepts GET or POST"),
        ("GET", "/keys", None, "colour=red", 400, "Unknown query parameter 'colour'"),
        ("POST", "/keys", {"tenant": "acme", "role": "root"}, "", 400, "Invalid role"),
        ("POST", "/keys", {"tenant": "acme", "nmae": "x"}, "", 400, "Invalid nmae"),
        ("POST", "/keys", {"tenant": "mars"}, "", 400, "no tenant 'mars'"),
        ("POST", "/keys", {}, "", 400, "which tenant"),
        # 1e20 s was stored, and every later key listing was a 500 (timestamp out of range)
        (
            "POST",
            "/keys",
            {"tenant": "acme", "expires_in_seconds": 1e20},
            "",
            400,
            "Invalid expires_in_seconds: Input should be less than or equal to 3153600000",
        ),
        (
            "POST",
            "/keys",
            {"tenant": "acme", "expires_in_seconds": "inf"},
            "",
            400,
            "Invalid expires_in_seconds",
        ),
        # an empty name or one with a comma cannot be stored: these were 500s
        (
            "POST",
            "/keys",
            {"tenant": "acme", "models": [""]},
            "",
            400,
            "Invalid models: Value error, '' is not a model name",
        ),
        (
            "POST",
            "/keys",
            {"tenant": "acme", "models": ["gpt-4o,o3"]},
            "",
            400,
            "'gpt-4o,o3' is not a model name",
        ),
        ("GET", "/keys/0123456789ab", None, "", 404, "no API key"),
    ],
)
async def test_bad_requests_say_what_is_wrong(
    env: Env, method: str, path: str, body: Any, query: str, status: int, words: str
) -> None:
    got, data, hdrs = await env.call(method, path, "admin", body, query)
    assert got == status and words in data["error"]["message"], data
    if status == 405:
        assert hdrs["allow"] == "GET, HEAD, POST"


async def test_a_lifetime_beyond_100_years_is_refused_and_keys_stored_with_one_still_list(
    env: Env,
) -> None:
    """A key stored with expires_at=1e20 (by a version that did not bound lifetimes) made
    every key listing a 500 for everyone; it lists as expiring at the end of year 9999, and
    revoking it answers 200."""
    century = 100 * 365 * 86400
    status, data, _ = await env.call(
        "POST", "/keys", "developer", {"expires_in_seconds": century + 1}
    )
    assert status == 400 and data["error"]["param"] == "expires_in_seconds", data
    status, data, _ = await env.call("POST", "/keys", "developer", {"expires_in_seconds": century})
    assert status == 201, data
    _, poisoned = env.keys.create("acme", role="app", name="old")
    env.keys._conn().execute(
        "UPDATE api_keys SET expires_at = 1e20 WHERE key_id = ?", (poisoned.key_id,)
    )
    status, data, _ = await env.call("GET", "/keys", "admin")
    assert status == 200, data
    [row] = [k for k in data["data"] if k["key_id"] == poisoned.key_id]
    assert row["expires_at"] == "9999-12-31T23:59:59Z" and row["state"] == "active"
    status, data, _ = await env.call("POST", f"/keys/{poisoned.key_id}/revoke", "admin")
    assert status == 200 and data["state"] == "revoked", data


async def test_each_action_is_logged_with_who_did_it(env: Env, caplog: Any) -> None:
    with caplog.at_level(logging.INFO, logger="sekisho.admin"):
        await env.call("GET", "/tenants", "auditor")
    [rec] = [r for r in caplog.records if r.getMessage() == "admin action"]
    assert rec.actor == f"key:{key_id(env.tokens['auditor'])}"  # type: ignore[attr-defined]
    assert (rec.action, rec.status) == ("tenants.list", 200)  # type: ignore[attr-defined]


async def test_openapi_document_describes_every_route(env: Env) -> None:
    status, doc, _ = await env.call("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    for route in ROUTES:
        op = doc["paths"][PREFIX + route.path][route.method.lower()]
        assert op["operationId"] == route.operation
        for name in route.params:
            assert any(p["name"] == name and p["in"] == "path" for p in op["parameters"])
        if route.permissions is not None:
            assert op["x-sekisho-permissions"] == [str(p) for p in route.permissions]

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if "$ref" in node else []
            return own + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        name = ref.removeprefix("#/components/schemas/")
        assert name in doc["components"]["schemas"], ref
    n_ops = sum(len(methods) for methods in doc["paths"].values())
    assert n_ops == len(ROUTES)


async def test_usage_when_its_store_is_down_is_503_not_an_internal_error(env: Env) -> None:
    """A Redis gone away made GET /admin/v1/usage a 500 internal_error with a traceback."""
    from redis.exceptions import ConnectionError as RedisDown

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise RedisDown("Error 111 connecting to 127.0.0.1:6390. Connection refused.")

    assert env.api.usage is not None
    env.api.usage.query = down  # type: ignore[method-assign]
    status, data, headers = await env.call("GET", "/usage", "admin")
    assert status == 503 and data["error"]["code"] == "usage_unavailable"
    assert headers["retry-after"] == "1"


async def test_a_signed_in_persons_acts_name_their_pseudonym_in_the_ledger(env: Env) -> None:
    """Admin entries named the plain OIDC subject (often an e-mail address): any member of
    the tenant could read it and link it to the person's pseudonymous decisions, and a ledger
    entry can never be erased."""
    from sekisho.identity import Principal

    person = Principal(
        tenant="acme", key_id="oidc-3f2a9c01b7de", role="admin", auth="oidc",
        subject="oidc:hanako@bank.example@https://login.bank.example",
    )  # fmt: skip

    async def signed_in(headers: Any) -> Principal:
        return person

    env.api.authenticator.authenticate_headers = signed_in  # type: ignore[method-assign]
    status, data, _ = await env.call("GET", "/whoami", token="a.signed.jwt")
    assert status == 200 and data["subject"] == person.subject  # the person sees themself
    status, _, _ = await env.call("GET", "/keys", token="a.signed.jwt")
    assert status == 200
    assert env.audit.records, "nothing recorded"
    for actor, _action, target, details in env.audit.records:
        assert "hanako" not in f"{actor} {target} {details}"
        assert actor == "oidc-3f2a9c01b7de"


async def test_usage_of_a_tenant_abroad_defaults_to_its_own_month_and_today(
    tmp_path: Path,
) -> None:
    """A tenant with its own limits.timezone records usage under its own days (Kiritimati,
    UTC+14, is always a day or two ahead of Pago Pago, UTC-11): asked for that tenant, the
    report's default range ends on the tenant's today, where it ended on the gateway's and
    left out what the tenant used today."""
    from sekisho.identity import Principal

    keys = KeyStore(tmp_path / "identity.db")
    limiter = Limiter(
        tenants={"acme": LimitsSpec(timezone="Pacific/Kiritimati"), "globex": None},
        defaults=GatewayLimitsSpec.model_validate({"timezone": "Pacific/Pago_Pago"}),
        usage=SQLiteUsage(tmp_path / "usage.db"),
    )

    async def reload() -> dict[str, Any]:
        return {}

    api = AdminAPI(
        keys=keys,
        authenticator=Authenticator(keys, None),
        limiter=limiter,
        usage=None,
        tenants={"acme": Tenant("acme"), "globex": Tenant("globex")},
        reload_policy=reload,
        audit=Audit(),
    )
    tokens = {role: keys.create("acme", role=role, name=role)[0] for role in ROLES}
    env = Env(api, keys, Audit(), limiter, [], tokens)
    p = Principal(tenant="acme", key_id="cccccccccccc", role="app")
    await limiter.settle(await limiter.admit(p, "gpt-4o", 0), 7, 1)
    for role, query in [("auditor", "tenant=acme"), ("tenant-admin", "")]:
        status, data, _ = await env.call("GET", "/usage", role, query=query)
        assert status == 200
        assert [(r["tenant"], r["requests"]) for r in data["data"]] == [("acme", 1)], role
    await limiter.close()


class CappedTenant(Tenant):
    __slots__ = ("max_active_keys",)

    def __init__(self, name: str, max_active_keys: int) -> None:
        super().__init__(name)
        self.max_active_keys = max_active_keys


async def test_a_tenants_active_keys_stop_at_the_cap_its_operator_set(env: Env) -> None:
    """A tenant-admin could make any number of keys for its tenant (each with its own per-key
    limits). The operator's cap (tenants.NAME.limits.max_active_keys) now refuses the key past
    it, for whoever asks over the API, the operator's admin keys included; the operator's own
    admin and auditor keys booked to the tenant do not count, and are not refused."""
    env.api.tenants = {"acme": CappedTenant("acme", 5), "globex": Tenant("globex")}
    # acme holds one key of each role: tenant-admin, developer and app count (3 of 5).
    for n in range(2):
        status, data, _ = await env.call("POST", "/keys", "tenant-admin", {"name": f"k{n}"})
        assert status == 201, data
    for role, body in [
        ("tenant-admin", {}),
        ("developer", {}),
        ("admin", {"tenant": "acme", "role": "app"}),
    ]:
        status, data, _ = await env.call("POST", "/keys", role, body)
        assert status == 403, data
        assert data["error"]["type"] == "permission_error"
        assert data["error"]["code"] == "tenant_key_limit"
        message = data["error"]["message"]
        assert "Tenant 'acme' has 5 active keys; its limit is 5" in message
        assert "tenants.acme.limits.max_active_keys" in message and "Revoke keys" in message
    refused = [r[3] for r in env.audit.records if r[1] == "keys.create" and r[3].get("outcome")]
    assert [(d["outcome"], d["code"], d["tenant"]) for d in refused] == [
        ("denied", "tenant_key_limit", "acme")
    ] * 3
    # An operator's key for the gateway (auditor) is not the tenant's: not counted, not capped.
    status, data, _ = await env.call(
        "POST", "/keys", "admin", {"tenant": "acme", "role": "auditor"}
    )
    assert status == 201, data
    # A rotation with an overlap holds two keys for a while: refused at the cap; without one,
    # the successor replaces the key at once and is not.
    app = key_id(env.tokens["app"])
    status, data, _ = await env.call(
        "POST", f"/keys/{app}/rotate", "tenant-admin", {"overlap_seconds": 3600}
    )
    assert status == 403 and data["error"]["code"] == "tenant_key_limit", data
    assert "overlap_seconds 0" in data["error"]["message"]
    status, data, _ = await env.call(
        "POST", f"/keys/{app}/rotate", "tenant-admin", {"overlap_seconds": 0}
    )
    assert status == 201, data
    # Revoking one makes room; another tenant has its own count.
    status, _, _ = await env.call("POST", f"/keys/{data['info']['key_id']}/revoke", "tenant-admin")
    assert status == 200
    status, data, _ = await env.call("POST", "/keys", "tenant-admin", {})
    assert status == 201, data
    status, data, _ = await env.call("POST", "/keys", "admin", {"tenant": "globex"})
    assert status == 201, data


async def test_the_cap_is_read_from_the_tenants_limits_in_the_config(env: Env) -> None:
    import yaml

    from harness import example_config
    from sekisho.config import parse_config

    raw = example_config()
    raw["tenants"] = {"acme": {**raw["tenants"]["demo"], "limits": {"max_active_keys": 3}}}
    config = parse_config(yaml.safe_dump(raw, allow_unicode=True), "ok.yaml", env={})
    env.api.tenants = config.tenants
    _, view, _ = await env.call("GET", "/tenants/acme", "tenant-admin")
    assert view["settings"]["max_active_keys"] == 3  # a tenant-admin sees its cap
    status, data, _ = await env.call("POST", "/keys", "tenant-admin", {})
    assert status == 403 and data["error"]["code"] == "tenant_key_limit", data


async def test_a_tenant_admin_sees_its_tenants_cap_on_requests_in_flight(env: Env) -> None:
    """Shown among the settings, whether or not the tenant has rates and budgets (a tenant
    with only this cap has no `limits`), and only where the operator set one."""
    import yaml

    from harness import example_config
    from sekisho.config import parse_config

    raw = example_config()
    demo = raw["tenants"]["demo"]
    raw["tenants"] = {"acme": {**demo, "limits": {"max_concurrent_requests": 6}}}
    raw["tenants"]["globex"] = {**demo, "limits": {"requests_per_minute": 60}}
    config = parse_config(yaml.safe_dump(raw, allow_unicode=True), "ok.yaml", env={})
    env.api.tenants = config.tenants
    _, view, _ = await env.call("GET", "/tenants/acme", "tenant-admin")
    assert view["settings"]["max_concurrent_requests"] == 6
    _, view, _ = await env.call("GET", "/tenants/globex", "admin")
    assert "max_concurrent_requests" not in view["settings"]
