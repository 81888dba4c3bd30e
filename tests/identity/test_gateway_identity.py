"""Identity through the running gateway: OIDC tokens, API key lifecycle and limits, seen by the
official openai client on a real loopback port."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from oidc_issuer import AUDIENCE, Issuer, forged

from harness import Harness, metric_sample, request, start_example
from sekisho.call import estimate_tokens
from sekisho.identity import KeyStore
from serve_process import LoopThread, ServeProcess, Simulators, write_config

PROMPT = [{"role": "user", "content": "hello through the checkpoint"}]


def client(h: Harness | ServeProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0, timeout=20)


def chat(h: Harness | ServeProcess, key: str, **kw: Any) -> Any:
    kw.setdefault("messages", PROMPT)
    return client(h, key).chat.completions.with_raw_response.create(model="gpt-4o", **kw)


def upstream_bytes(h: Harness) -> int:
    return sum(h.bytes_received().values())


def admin_get(h: Harness, path: str, key: str) -> Any:
    r = request("GET", f"{h.root}/admin/v1{path}", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()


# -- OIDC ------------------------------------------------------------------------------------


@pytest.fixture
def oidc(tmp_path: Path) -> Iterator[tuple[Harness, Issuer]]:
    """The example gateway accepting tokens of a loopback OIDC issuer for tenant demo."""
    issuer = Issuer()
    loop = LoopThread()
    loop.call(issuer.start())

    def with_issuer(raw: dict[str, Any]) -> None:
        raw["auth"] = {
            "oidc": [
                {
                    "issuer": issuer.url,
                    "audience": AUDIENCE,
                    "algorithms": ["RS256", "ES256"],
                    "tenant_claim": "tid",
                    "tenant_map": {"tid-acme": "demo"},
                    "role_claims": ["groups"],
                    "role_map": {
                        "sekisho-admins": "admin",
                        "sekisho-auditors": "auditor",
                        "sekisho-tenant-admins": "tenant-admin",
                        "sekisho-developers": "developer",
                        "sekisho-apps": "app",
                    },
                    "leeway_seconds": 5,
                    "jwks_refetch_min_seconds": 0,
                }
            ]
        }

    h = start_example(tmp_path, with_issuer)
    try:
        yield h, issuer
    finally:
        h.stop()
        loop.call(issuer.stop())
        loop.stop()


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_a_signed_token_of_the_issuer_calls_models_as_its_mapped_tenant_and_role(
    oidc: tuple[Harness, Issuer], alg: str
) -> None:
    h, issuer = oidc
    token = issuer.token(alg)
    raw = chat(h, token)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-sekisho-endpoint"] in h.sims
    me = admin_get(h, "/whoami", token)
    assert me["auth"] == "oidc"
    assert me["tenant"] == "demo"
    assert me["roles"] == ["developer"]
    assert me["subject"] == f"oidc:user-42@{issuer.url}"


def _expired(i: Issuer) -> str:
    now = int(time.time())
    return i.token(exp=now - 600, iat=now - 1200, nbf=now - 1200)


def _not_yet_valid(i: Issuer) -> str:
    return i.token(nbf=int(time.time()) + 3600)


def _wrong_audience(i: Issuer) -> str:
    return i.token(aud="api://another-service")


def _alg_none(i: Issuer) -> str:
    return forged({"alg": "none", "typ": "JWT"}, i.claims(), None)


def _hs256_with_public_key(i: Issuer) -> str:
    key = i.key("RS256")
    return forged({"alg": "HS256", "typ": "JWT", "kid": key.kid}, i.claims(), key.public_pem())


def _unknown_kid(i: Issuer) -> str:
    return i.token(kid="kid-nobody-published")


def _foreign_issuer(i: Issuer) -> str:
    return i.token(iss="https://login.evil.example/")


REFUSALS: list[tuple[str, Callable[[Issuer], str], str]] = [
    ("expired", _expired, "expired at"),
    ("not yet valid", _not_yet_valid, "not valid before"),
    ("wrong audience", _wrong_audience, "audience 'api://another-service' is not accepted"),
    ("alg none", _alg_none, "alg 'none'"),
    ("HS256 signed with the public key", _hs256_with_public_key, "algorithm HS256 is not accepted"),
    ("unknown kid", _unknown_kid, "key id 'kid-nobody-published'"),
    ("foreign issuer", _foreign_issuer, "is not one this gateway accepts"),
]


@pytest.mark.parametrize(("case", "make", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_each_bad_token_is_a_401_in_openai_shape_naming_its_reason(
    oidc: tuple[Harness, Issuer], case: str, make: Callable[[Issuer], str], reason: str
) -> None:
    h, issuer = oidc
    token = make(issuer)
    with pytest.raises(openai.AuthenticationError) as err:
        chat(h, token)
    assert err.value.status_code == 401
    body = err.value.response.json()["error"]
    assert body["code"] == "invalid_token"
    assert body["message"].startswith("Invalid bearer token: ")
    assert reason in body["message"], body["message"]
    assert token not in body["message"]
    assert issuer.url not in body["message"] or case != "foreign issuer"  # no issuer list
    assert upstream_bytes(h) == 0, "a refused token must not send a byte upstream"


def test_key_rotation_at_the_issuer_is_followed_and_the_retired_key_refused(
    oidc: tuple[Harness, Issuer],
) -> None:
    h, issuer = oidc
    old_token = issuer.token("ES256")
    assert chat(h, old_token).status_code == 200
    fetches_before = issuer.jwks_hits
    issuer.rotate("ES256")
    new_token = issuer.token("ES256")  # signed with a kid the gateway has not seen yet
    assert chat(h, new_token).status_code == 200
    assert issuer.jwks_hits == fetches_before + 1, "an unknown kid refetches the JWKS once"
    with pytest.raises(openai.AuthenticationError, match="does not publish"):
        chat(h, old_token)


def test_a_token_whose_groups_map_to_no_role_is_403(oidc: tuple[Harness, Issuer]) -> None:
    h, issuer = oidc
    with pytest.raises(openai.PermissionDeniedError) as err:
        chat(h, issuer.token(groups=["marketing"]))
    assert err.value.response.json()["error"]["code"] == "no_role"


def test_an_oidc_auditor_cannot_call_models(oidc: tuple[Harness, Issuer]) -> None:
    h, issuer = oidc
    with pytest.raises(openai.PermissionDeniedError, match=r"models\.call"):
        chat(h, issuer.token(groups=["sekisho-auditors"]))
    assert upstream_bytes(h) == 0


def test_a_person_whose_role_was_taken_away_no_longer_acts_on_the_keys_they_made(
    oidc: tuple[Harness, Issuer],
) -> None:
    """Carol made an admin key while her group mapped to admin; moved to the developers'
    group, she still listed it, and rotating it handed her an admin secret (every tenant's
    keys): owning a key must not outlast the right to grant its role."""
    h, issuer = oidc
    as_admin = {"authorization": f"Bearer {issuer.token(sub='carol', groups=['sekisho-admins'])}"}
    made = request("POST", f"{h.root}/admin/v1/keys", headers=as_admin,
                   json_body={"tenant": "demo", "role": "admin", "name": "carol's"})  # fmt: skip
    assert made.status_code == 201, made.text
    admin_key = made.json()["info"]["key_id"]
    as_dev = {"authorization": f"Bearer {issuer.token(sub='carol', groups=['sekisho-developers'])}"}
    listed = request("GET", f"{h.root}/admin/v1/keys", headers=as_dev)
    assert listed.status_code == 200 and admin_key not in listed.text
    for suffix, body in [("", None), ("/rotate", {"overlap_seconds": 0}), ("/revoke", None)]:
        method = "GET" if suffix == "" else "POST"
        r = request(method, f"{h.root}/admin/v1/keys/{admin_key}{suffix}", headers=as_dev,
                    json_body=body)  # fmt: skip
        assert r.status_code == 403 and r.json()["error"]["code"] == "not_owner", (suffix, r.text)
    info = admin_get(h, f"/keys/{admin_key}", issuer.token(groups=["sekisho-admins"]))
    assert (info["state"], info["successor"]) == ("active", None)


def test_an_auditor_who_is_also_a_tenants_developer_or_admin_makes_no_auditor_key(
    oidc: tuple[Harness, Issuer], tmp_path: Path
) -> None:
    """A person in both the auditors' group and a tenant's group minted auditor API keys (every
    tenant's ledger and usage, outliving their sign-in and their group), and as a tenant-admin
    rotated the operator's auditor key booked to the tenant into a secret of their own: a
    gateway-wide role is handed out by a key manager only."""
    h, issuer = oidc
    operators = KeyStore(h.data_dir / "identity.db")
    _, booked = operators.create("demo", role="auditor", name="operator's auditor")
    for group in ("sekisho-developers", "sekisho-tenant-admins"):
        both = {"authorization": f"Bearer {issuer.token(groups=['sekisho-auditors', group])}"}
        made = request("POST", f"{h.root}/admin/v1/keys", headers=both,
                       json_body={"role": "auditor"})  # fmt: skip
        assert made.status_code == 403, (group, made.text)
        assert made.json()["error"]["code"] == "insufficient_role"
        assert "only a key manager (permission 'keys.manage'" in made.text, made.text
        rotated = request("POST", f"{h.root}/admin/v1/keys/{booked.key_id}/rotate",
                          headers=both, json_body={})  # fmt: skip
        assert rotated.status_code == 403, (group, rotated.text)
    assert [k.role for k in operators.list("demo")] == ["auditor"]
    assert operators.get(booked.key_id).successor is None


# -- API key lifecycle -------------------------------------------------------------------------


def sekisho_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sekisho", *args], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_keys_list_keeps_its_columns_for_tenant_admin_keys_and_long_tenant_names(
    tmp_path: Path,
) -> None:
    """'tenant-admin' is longer than the ROLE column was wide: its rows' state, dates and
    name were pushed right of their headings, as with a tenant named longer than 16."""
    store = KeyStore(tmp_path / "identity.db")
    store.create("acme", role="tenant-admin", name="agency IT")
    store.create("a-subsidiary-with-a-long-name", role="app", name="billing")
    r = sekisho_cli("keys", "list", "--data-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    head, *rows = r.stdout.splitlines()
    assert len(rows) == 2
    for heading in ("ROLE", "STATE", "CREATED (UTC)", "EXPIRES (UTC)", "NAME"):
        at = head.index(heading)
        for row in rows:
            assert row[at - 1] == " " and row[at] != " ", (heading, head, row)
    assert rows[0].split()[2:4] == ["tenant-admin", "active"]


def test_keys_create_prints_the_key_alone_on_its_last_line_and_it_works(gateway: Harness) -> None:
    r = sekisho_cli("keys", "create", "--tenant", "demo", "--data-dir", str(gateway.data_dir))
    assert r.returncode == 0, r.stderr
    key = r.stdout.rstrip("\n").splitlines()[-1]
    assert re.fullmatch(r"sk-sekisho-[0-9a-f]{12}-\S{20,}", key), r.stdout
    assert chat(gateway, key).status_code == 200


def test_keys_create_with_the_gateways_config_uses_its_data_dir_and_refuses_typos(
    gateway: Harness, tmp_path: Path
) -> None:
    """``--config`` makes the key where ``serve`` with that file looks for it (whatever the
    working directory), and a tenant or model the config does not know creates nothing."""
    import yaml

    config = tmp_path / "elsewhere" / "sekisho.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump(gateway.raw, allow_unicode=True), encoding="utf-8")

    def keys_create(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sekisho", "keys", "create", "--config", str(config), *args],
            capture_output=True, text=True, timeout=60, cwd=config.parent,
        )  # fmt: skip

    store = KeyStore(gateway.data_dir / "identity.db")
    before = len(store.list())
    r = keys_create("--tenant", "dmeo")
    assert r.returncode == 2
    assert "tenant 'dmeo' is not in" in r.stderr and "its tenants: demo" in r.stderr
    r = keys_create("--tenant", "demo", "--models", "gpt-4o,gtp-4o")
    assert r.returncode == 2 and "serves 'gtp-4o'" in r.stderr
    assert len(store.list()) == before  # nothing was created
    assert not (config.parent / "data").exists()  # nor a stray data directory

    r = keys_create("--tenant", "demo", "--models", "gpt-4o")
    assert r.returncode == 0, r.stderr
    assert chat(gateway, r.stdout.splitlines()[-1]).status_code == 200


def test_a_tenant_admin_made_on_the_command_line_runs_its_tenants_app_keys(
    gateway: Harness,
) -> None:
    """The gateway's operator hands an agency one ``tenant-admin`` key; the agency then makes
    and revokes its applications' keys itself, over the admin API, and sees its usage."""
    r = sekisho_cli("keys", "create", "--tenant", "demo", "--role", "tenant-admin",
                    "--data-dir", str(gateway.data_dir))  # fmt: skip
    assert r.returncode == 0, r.stderr
    boss = r.stdout.splitlines()[-1]
    auth = {"authorization": f"Bearer {boss}"}
    with pytest.raises(openai.PermissionDeniedError, match=r"'models\.call'"):
        chat(gateway, boss)  # an administrative credential does not call models
    made = request("POST", f"{gateway.root}/admin/v1/keys", headers=auth,
                   json_body={"role": "app", "name": "billing"})  # fmt: skip
    assert made.status_code == 201, made.text
    app_key, app_id = made.json()["key"], made.json()["info"]["key_id"]
    assert chat(gateway, app_key).status_code == 200
    usage = admin_get(gateway, "/usage", boss)["data"]
    assert {row["key_id"] for row in usage} == {app_id}
    refused = request("POST", f"{gateway.root}/admin/v1/keys", headers=auth,
                      json_body={"role": "admin"})  # fmt: skip
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_role"
    gone = request("POST", f"{gateway.root}/admin/v1/keys/{app_id}/revoke", headers=auth)
    assert gone.status_code == 200, gone.text
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        chat(gateway, app_key)


def test_a_key_whose_tenant_left_the_config_is_refused_everywhere(gateway: Harness) -> None:
    key = gateway.key("former-subsidiary")
    with pytest.raises(openai.PermissionDeniedError, match="'former-subsidiary' is not in"):
        client(gateway, key).models.list()
    with pytest.raises(openai.PermissionDeniedError, match="'former-subsidiary' is not in"):
        chat(gateway, key)
    assert upstream_bytes(gateway) == 0


def test_a_tenant_admin_whose_tenant_left_the_config_manages_nothing_any_more(
    gateway: Harness,
) -> None:
    """A subsidiary's tenant-admin (and its developers) went on listing the tenant's keys,
    rotating them into secrets of its own, making keys and reading usage and the endpoint
    catalogue after the operator removed the tenant: a key whose tenant is gone is refused
    on the admin API as on the model routes."""
    store = KeyStore(gateway.data_dir / "identity.db")
    _, app = store.create("former-subsidiary", name="billing")
    for role in ("tenant-admin", "developer"):
        key = gateway.key("former-subsidiary", role=role)
        auth = {"authorization": f"Bearer {key}"}
        me = admin_get(gateway, "/whoami", key)  # who it is, still: that is how one finds out
        assert me["tenant"] == "former-subsidiary"
        for method, path, body in [
            ("GET", "/keys", None),
            ("POST", "/keys", {"role": "app"}),
            ("GET", f"/keys/{app.key_id}", None),
            ("POST", f"/keys/{app.key_id}/rotate", {"overlap_seconds": 0}),
            ("POST", f"/keys/{app.key_id}/revoke", None),
            ("GET", "/usage", None),
            ("GET", "/endpoints", None),
            ("GET", "/tenants", None),
        ]:
            r = request(method, f"{gateway.root}/admin/v1{path}", headers=auth, json_body=body)
            assert r.status_code == 403, (role, method, path, r.text)
            assert "'former-subsidiary' is not in the configuration" in r.text, r.text
    kept = store.get(app.key_id)
    assert (kept.state(), kept.successor) == ("active", None)
    assert len(store.list("former-subsidiary")) == 3


def test_revocation_is_effective_on_the_very_next_request(gateway: Harness) -> None:
    r = sekisho_cli("keys", "create", "--tenant", "demo", "--data-dir", str(gateway.data_dir))
    key = r.stdout.splitlines()[-1]
    key_id = key.removeprefix("sk-sekisho-").split("-")[0]
    assert chat(gateway, key).status_code == 200
    revoked = sekisho_cli("keys", "revoke", key_id, "--data-dir", str(gateway.data_dir))
    assert revoked.returncode == 0, revoked.stderr
    before = upstream_bytes(gateway)
    with pytest.raises(openai.AuthenticationError, match=f"API key {key_id} has been revoked"):
        chat(gateway, key)
    assert upstream_bytes(gateway) == before


def test_an_expired_key_is_401_naming_its_expiry(gateway: Harness) -> None:
    store = KeyStore(gateway.data_dir / "identity.db")
    expires = time.time() + 1.0
    key, info = store.create("demo", expires_at=expires)
    assert chat(gateway, key).status_code == 200
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    with pytest.raises(openai.AuthenticationError) as err:
        chat(gateway, key)
    message = err.value.response.json()["error"]["message"]
    assert f"API key {info.key_id} expired at " in message
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)) in message


# -- limits ------------------------------------------------------------------------------------


def limited(**limits: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["limits"] = limits

    return mutate


def test_a_used_up_quota_is_insufficient_quota_and_the_sdk_does_not_retry_it(
    tmp_path: Path,
) -> None:
    """The official SDK retries a 429 twice by default: a day's budget used up, or a request
    larger than the whole budget, says ``x-should-retry: false`` and is sent exactly once."""
    h = start_example(tmp_path, limited(tokens_per_day=300))
    try:
        sent: list[str] = []
        http = openai.DefaultHttpxClient(event_hooks={"request": [lambda r: sent.append("x")]})
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), http_client=http)  # 2 retries
        with pytest.raises(openai.RateLimitError) as err:
            c.chat.completions.create(model="gpt-4o", messages=PROMPT, max_tokens=5000)
        assert err.value.code == "request_exceeds_limit" and len(sent) == 1
        answered = 0
        with pytest.raises(openai.RateLimitError) as err:
            for _ in range(20):  # ~265 tokens admitted each, settled at their real usage
                c.chat.completions.create(model="gpt-4o", messages=PROMPT, max_tokens=256)
                answered += 1
        assert err.value.code == "insufficient_quota"
        assert "Quota used up: tenant 'demo' tokens_per_day (300)" in err.value.message
        assert int(err.value.response.headers["retry-after"]) >= 1
        assert len(sent) == 1 + answered + 1  # the refused request was sent once, not thrice
        # What an alert on a used-up budget reads; a request too large for it is not counted.
        refused = {"tenant": "demo", "scope": "tenant", "limit": "tokens_per_day"}
        assert metric_sample(h.root, "sekisho_limit_refusals_total", **refused) == 1
    finally:
        h.stop()


def test_a_request_for_several_choices_is_admitted_for_all_of_them(tmp_path: Path) -> None:
    """n choices may each run to max_tokens: admission counted one, so n=8 passed a budget
    it could overrun eightfold."""
    h = start_example(tmp_path, limited(tokens_per_day=1500))
    try:
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0, timeout=20)
        c.chat.completions.create(model="gpt-4o", messages=PROMPT, max_tokens=256, n=2)
        with pytest.raises(openai.RateLimitError) as err:
            c.chat.completions.create(model="gpt-4o", messages=PROMPT, max_tokens=256, n=8)
        assert err.value.code == "request_exceeds_limit"
        assert upstream_bytes(h) > 0  # the first went; the second did not
    finally:
        h.stop()


def test_tenant_requests_per_minute_is_429_in_openai_shape_with_retry_after(
    tmp_path: Path,
) -> None:
    h = start_example(tmp_path, limited(requests_per_minute=3))
    try:
        key, other_key = h.key(), h.key()
        left = []
        for k in (key, other_key, key):  # the tenant's limit counts every key of the tenant
            raw = chat(h, k)
            assert raw.status_code == 200
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            left.append(raw.headers["x-ratelimit-remaining-requests"])
        assert left == ["2", "1", "0"]  # as OpenAI reports it, for rate-aware clients
        before = upstream_bytes(h)
        with pytest.raises(openai.RateLimitError) as err:
            chat(h, other_key)
        assert upstream_bytes(h) == before, "a refused request must not reach an endpoint"
        resp = err.value.response
        assert resp.status_code == 429
        retry_after = int(resp.headers["retry-after"])
        assert 1 <= retry_after <= 20  # the bucket refills one request every 20 s
        error = resp.json()["error"]
        assert error["type"] == "rate_limit_error"
        assert error["code"] == "rate_limit_exceeded"
        assert "tenant 'demo' requests_per_minute (3)" in error["message"]
        assert f"Retry after {retry_after} s" in error["message"]
        assert resp.headers["x-ratelimit-remaining-requests"] == "0"
        refused = {"tenant": "demo", "scope": "tenant", "limit": "requests_per_minute"}
        assert metric_sample(h.root, "sekisho_limit_refusals_total", **refused) == 1
    finally:
        h.stop()


def test_a_rate_limit_says_when_to_retry_to_the_millisecond(tmp_path: Path) -> None:
    """The OpenAI SDKs wait ``retry-after-ms`` before ``Retry-After``: a bucket that refills a
    request every 500 ms is retried after at most that, not after the whole second that
    Retry-After rounds it up to (the SDK waited twice as long as it had to)."""
    h = start_example(tmp_path, limited(requests_per_minute=120))
    try:
        key = h.key()
        with pytest.raises(openai.RateLimitError) as err:
            for _ in range(400):
                chat(h, key)
        headers = err.value.response.headers
        assert headers["retry-after"] == "1"
        assert 1 <= int(headers["retry-after-ms"]) <= 500
        patient = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=2)
        raw = patient.chat.completions.with_raw_response.create(model="gpt-4o", messages=PROMPT)
        assert raw.status_code == 200
    finally:
        h.stop()


def test_tenant_tokens_per_minute_counts_real_usage_then_is_429(tmp_path: Path) -> None:
    limit = 1000
    h = start_example(tmp_path, limited(tokens_per_minute=limit))
    try:
        key = h.key()
        # 200 words: estimated at 1000 ASCII chars / 4 + max_tokens 16; ~225 real tokens each.
        messages = [{"role": "user", "content": "word " * 200}]
        estimate = estimate_tokens([messages[0]["content"]]) + 16
        used: list[int] = []
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as err:
            for _ in range(20):
                completion = chat(h, key, messages=messages, max_tokens=16).parse()
                used.append(completion.usage.total_tokens)
        elapsed = time.monotonic() - started
        assert 2 <= len(used) < 20
        refill = limit * elapsed / 60
        # Refused only when the rest of the minute's tokens could not hold one more request…
        assert sum(used) + estimate > limit - refill
        # …and never admitted more than the limit plus what refilled meanwhile.
        assert sum(used) <= limit + refill + estimate
        error = err.value.response.json()["error"]
        assert "tenant 'demo' tokens_per_minute (1000)" in error["message"]
        assert int(err.value.response.headers["retry-after"]) >= 1
    finally:
        h.stop()


def test_usage_is_queryable_per_tenant_key_and_model_after_requests(gateway: Harness) -> None:
    key = gateway.key()
    key_id = key.removeprefix("sk-sekisho-").split("-")[0]
    totals = [chat(gateway, key).parse().usage for _ in range(3)]
    admin = gateway.key(role="admin")
    report = admin_get(gateway, f"/usage?tenant=demo&key_id={key_id}", admin)
    assert report["data"] == [
        {
            "tenant": "demo",
            "key_id": key_id,
            "model": "gpt-4o",
            "requests": 3,
            "prompt_tokens": sum(u.prompt_tokens for u in totals),
            "completion_tokens": sum(u.completion_tokens for u in totals),
            "total_tokens": sum(u.total_tokens for u in totals),
        }
    ]


# -- limits shared by two gateway processes through Redis ------------------------------------

REDIS = "redis://127.0.0.1:6379/0"


@pytest.mark.redis
@pytest.mark.slow
def test_two_gateway_processes_sharing_redis_never_over_admit(
    tmp_path: Path, redis_namespace: str
) -> None:
    limit = 10
    sims = Simulators().start()
    gateways: list[ServeProcess] = []
    try:

        def shared(raw: dict[str, Any]) -> None:
            raw["redis"] = REDIS
            raw["limits"] = {"namespace": redis_namespace}
            raw["tenants"]["demo"]["limits"] = {"requests_per_minute": limit}

        config = write_config(tmp_path / "sekisho.yaml", sims.config(shared))
        data_dir = tmp_path / "data"  # shared, as --workers shares it: keys, ledger, stores
        for _ in range(2):
            gateways.append(ServeProcess(config, data_dir).start())
        key = gateways[0].key()

        def one(i: int) -> tuple[int, int, str | None]:
            g = gateways[i % 2]
            try:
                return i % 2, chat(g, key).status_code, None
            except openai.RateLimitError as exc:
                return i % 2, 429, exc.response.headers.get("retry-after")

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(40)))
        elapsed = time.monotonic() - started
        admitted = [r for r in results if r[1] == 200]
        refused = [r for r in results if r[1] == 429]
        assert len(admitted) + len(refused) == 40, results
        # Without sharing, each process would admit its own 10.
        assert limit <= len(admitted) <= limit + int(limit * elapsed / 60), (elapsed, results)
        assert {g for g, _, _ in admitted} == {0, 1}, "both processes served requests"
        assert all(ra is not None and int(ra) >= 1 for _, _, ra in refused)
        # Usage is shared too: either process reports every admitted request, once each has
        # written its last batch (at most a second after it gathered it).
        time.sleep(1.5)
        admin = gateways[0].key(role="admin")
        for g in gateways:
            r = request("GET", f"{g.root}/admin/v1/usage?tenant=demo",
                        headers={"authorization": f"Bearer {admin}"})  # fmt: skip
            assert r.status_code == 200, r.text
            assert sum(row["requests"] for row in r.json()["data"]) == len(admitted)
    finally:
        for g in gateways:
            g.stop()
        sims.stop()
