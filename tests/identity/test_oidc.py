"""OIDC bearer tokens against a real issuer on loopback, with real RS256 and ES256 signatures."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oidc_issuer import AUDIENCE, Issuer, forged, new_key

from sekisho.errors import AuthenticationFailed, PermissionDenied, ServiceUnavailable
from sekisho.identity import Authenticator, AuthSpec, KeyStore, Principal


def spec(issuer: Issuer, **overrides: Any) -> AuthSpec:
    entry: dict[str, Any] = {
        "issuer": issuer.url,
        "audience": AUDIENCE,
        "algorithms": ["RS256", "ES256"],
        "tenant_claim": "tid",
        "tenant_map": {"tid-acme": "acme"},
        "role_map": {
            "sekisho-admins": "admin",
            "sekisho-auditors": "auditor",
            "sekisho-developers": "developer",
        },
        "leeway_seconds": 5,
        "jwks_refetch_min_seconds": 30,
    }
    entry.update(overrides)
    return AuthSpec.model_validate({"oidc": [entry]})


@pytest.fixture
async def auth(issuer: Issuer, tmp_path: Path) -> AsyncIterator[Authenticator]:
    a = Authenticator(KeyStore(tmp_path / "identity.db"), spec(issuer), tenants={"acme"})
    await a.start()
    try:
        yield a
    finally:
        await a.close()


async def login(auth: Authenticator, token: str) -> Principal:
    return await auth.authenticate(f"Bearer {token}", None)


async def refused(auth: Authenticator, token: str, *words: str) -> str:
    with pytest.raises(AuthenticationFailed) as info:
        await login(auth, token)
    message = info.value.message
    assert info.value.status == 401
    assert token not in message and token[-20:] not in message, "a refusal must not echo the token"
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_signed_token_maps_claims_to_tenant_and_roles(
    auth: Authenticator, issuer: Issuer, alg: str
) -> None:
    token = issuer.token(alg, groups=["sekisho-developers", "sekisho-auditors", "other"])
    p = await login(auth, token)
    assert p.tenant == "acme"
    assert p.roles == {"developer", "auditor"}
    assert p.role == "auditor"  # the most privileged of the two
    assert p.auth == "oidc"
    assert p.subject == f"oidc:user-42@{issuer.url}"
    assert p.key_id.startswith("oidc-") and "user-42" not in p.key_id
    assert p.expires_at is not None and p.expires_at > time.time()


async def test_keys_are_discovered_once_and_cached(auth: Authenticator, issuer: Issuer) -> None:
    for _ in range(5):
        await login(auth, issuer.token())
    assert issuer.discovery_hits == 1
    assert issuer.jwks_hits == 1


async def test_configured_jwks_uri_skips_discovery(issuer: Issuer, tmp_path: Path) -> None:
    origin = issuer.url.split("/realms/")[0]
    a = Authenticator(KeyStore(tmp_path / "k.db"), spec(issuer, jwks_uri=f"{origin}/keys"))
    try:
        await login(a, issuer.token())
    finally:
        await a.close()
    assert issuer.discovery_hits == 0 and issuer.jwks_hits == 1


async def test_key_rotation_is_followed_and_retired_keys_refused(
    auth: Authenticator, issuer: Issuer
) -> None:
    old_token = issuer.token("ES256")
    await login(auth, old_token)
    fresh = issuer.rotate("ES256")
    p = await login(auth, issuer.token("ES256", key=fresh))
    assert p.tenant == "acme"
    assert issuer.jwks_hits == 2  # one refetch, caused by the new kid
    await refused(auth, old_token, "key id", "does not publish")


async def test_unknown_kids_refetch_the_jwks_at_most_once_per_interval(
    auth: Authenticator, issuer: Issuer
) -> None:
    stranger = new_key("ES256")  # signs tokens but is never published
    for _ in range(10):
        await refused(auth, issuer.token("ES256", key=stranger, kid=uuid.uuid4().hex), "key id")
    assert issuer.jwks_hits == 2


async def test_unsigned_token_is_refused(auth: Authenticator, issuer: Issuer) -> None:
    token = forged({"alg": "none", "typ": "JWT"}, issuer.claims(), None)
    await refused(auth, token, "alg 'none'")


async def test_a_header_without_alg_says_so(auth: Authenticator, issuer: Issuer) -> None:
    token = forged({"typ": "JWT"}, issuer.claims(), None)
    await refused(auth, token, "names no signing algorithm")


async def test_a_list_valued_tenant_claim_says_it_must_name_one(
    auth: Authenticator, issuer: Issuer
) -> None:
    token = issuer.token("ES256", tid=["tid-acme", "tid-globex"])
    await refused(auth, token, "'tid' claim is a list", "one tenant")


async def test_hs256_signed_with_the_public_key_is_refused(
    auth: Authenticator, issuer: Issuer
) -> None:
    rsa_key = issuer.key("RS256")
    header = {"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid}
    token = forged(header, issuer.claims(), rsa_key.public_pem())
    await refused(auth, token, "HS256", "not accepted", "shared secret")


async def test_a_key_of_the_wrong_type_cannot_verify(auth: Authenticator, issuer: Issuer) -> None:
    # ES256 claimed, but the kid points at the issuer's RSA key.
    token = issuer.token("ES256", kid=issuer.key("RS256").kid)
    await refused(auth, token, "RSA", "cannot verify ES256")


async def test_algorithm_outside_the_allow_list_is_refused(issuer: Issuer, tmp_path: Path) -> None:
    a = Authenticator(KeyStore(tmp_path / "k.db"), spec(issuer, algorithms=["RS256"]))
    try:
        await refused(a, issuer.token("ES256"), "ES256", "accepted: RS256")
    finally:
        await a.close()


class _From:
    """A time this many seconds from when the test runs. A time computed while the suite is
    collected was in the past by the time a slow run reached the test (nbf "600 s from now"
    after 17 minutes of other tests)."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds


@pytest.mark.parametrize(
    ("claims", "words"),
    [
        ({"exp": _From(-60)}, ["expired at"]),
        ({"nbf": _From(600)}, ["not valid before"]),
        ({"iat": _From(600), "nbf": None}, ["issued at", "future"]),
        ({"aud": "api://someone-else"}, ["audience", "api://someone-else", AUDIENCE]),
        ({"iss": "https://evil.example"}, ["issuer", "https://evil.example", "not one this"]),
        ({"exp": None}, ["required claim 'exp'"]),
        ({"sub": None}, ["'sub'"]),
        ({"tid": None}, ["'tid'"]),
    ],
)
async def test_each_invalid_claim_is_refused_with_its_reason(
    auth: Authenticator, issuer: Issuer, claims: dict[str, Any], words: list[str]
) -> None:
    now = int(time.time())  # when the test runs, not when the suite was collected
    claims = {k: now + v.seconds if isinstance(v, _From) else v for k, v in claims.items()}
    await refused(auth, issuer.token(**claims), *words)


async def test_leeway_tolerates_small_clock_skew(auth: Authenticator, issuer: Issuer) -> None:
    await login(auth, issuer.token(exp=int(time.time()) - 2, nbf=int(time.time()) + 2))


async def test_tampered_payload_fails_the_signature(auth: Authenticator, issuer: Issuer) -> None:
    token = issuer.token()
    head, _, sig = token.split(".")
    other = issuer.token(sub="admin-1").split(".")[1]
    await refused(auth, f"{head}.{other}.{sig}", "signature does not verify")


async def test_token_without_a_mapped_role_is_forbidden(
    auth: Authenticator, issuer: Issuer
) -> None:
    with pytest.raises(PermissionDenied, match="no value of roles, groups"):
        await login(auth, issuer.token(groups=["marketing"]))


async def test_default_role_and_fixed_tenant(issuer: Issuer, tmp_path: Path) -> None:
    s = spec(
        issuer, tenant="globex", tenant_claim=None, tenant_map={}, role_map={}, default_role="app"
    )
    a = Authenticator(KeyStore(tmp_path / "k.db"), s)
    try:
        p = await login(a, issuer.token(groups=["anything"]))
    finally:
        await a.close()
    assert (p.tenant, p.roles) == ("globex", {"app"})


async def test_nested_role_claims_as_keycloak_sends_them(issuer: Issuer, tmp_path: Path) -> None:
    s = spec(issuer, role_claims=["realm_access.roles"], role_map={"gw-admin": "admin"})
    a = Authenticator(KeyStore(tmp_path / "k.db"), s)
    try:
        p = await login(a, issuer.token(realm_access={"roles": ["gw-admin", "offline"]}))
    finally:
        await a.close()
    assert p.roles == {"admin"}


async def test_unmapped_tenant_is_forbidden(auth: Authenticator, issuer: Issuer) -> None:
    with pytest.raises(PermissionDenied, match="tenant_map"):
        await login(auth, issuer.token(tid="tid-unknown"))


async def test_unreachable_issuer_is_a_503_not_a_silent_accept(tmp_path: Path) -> None:
    s = AuthSpec.model_validate(
        {
            "oidc": [
                {
                    "issuer": "http://127.0.0.1:9/nowhere",
                    "audience": "x",
                    "tenant": "acme",
                    "default_role": "app",
                    "http_timeout_seconds": 1,
                }
            ]
        }
    )
    a = Authenticator(KeyStore(tmp_path / "k.db"), s)
    await a.start()  # logs, does not fail start-up
    key = new_key("RS256")
    import jwt as pyjwt

    now = int(time.time())
    token = pyjwt.encode(
        {"iss": "http://127.0.0.1:9/nowhere", "aud": "x", "sub": "s", "iat": now, "exp": now + 60},
        key.private,
        algorithm="RS256",
        headers={"kid": key.kid},
    )
    try:
        with pytest.raises(ServiceUnavailable, match="cannot fetch the signing keys"):
            await login(a, token)
    finally:
        await a.close()


async def test_an_issuer_that_fails_is_asked_once_per_interval_not_once_per_request(
    issuer: Issuer, tmp_path: Path
) -> None:
    """With no keys cached, every request fetched again, one after another behind a lock:
    eight requests waited 2, 4 … 16 s, and forged tokens made sekisho hammer the provider."""
    issuer.down = True
    a = Authenticator(KeyStore(tmp_path / "k.db"), spec(issuer), tenants={"acme"})
    try:
        tokens = [issuer.token() for _ in range(8)]
        results = await asyncio.gather(*(login(a, t) for t in tokens), return_exceptions=True)
        assert all(isinstance(r, ServiceUnavailable) for r in results), results
        assert all(r.code == "issuer_unreachable" for r in results)  # type: ignore[union-attr]
        assert issuer.discovery_hits == 1  # one attempt answered them all
        with pytest.raises(ServiceUnavailable) as again:
            await login(a, issuer.token())
        assert issuer.discovery_hits == 1 and again.value.headers["retry-after"] == "30"
    finally:
        await a.close()


async def test_a_discovered_jwks_uri_in_clear_off_this_machine_is_refused(
    issuer: Issuer, tmp_path: Path
) -> None:
    """A configured jwks_uri must be https (http on loopback only); one named by discovery was
    taken as it came: anyone on the path could swap the keys and mint tokens."""
    issuer.jwks_uri = "http://192.0.2.2:8080/realms/acme/keys"
    a = Authenticator(KeyStore(tmp_path / "k.db"), spec(issuer), tenants={"acme"})
    try:
        with pytest.raises(ServiceUnavailable, match="must be an https:// URL"):
            await login(a, issuer.token())
        assert issuer.jwks_hits == 0
    finally:
        await a.close()


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
async def test_a_date_claim_that_is_not_a_number_is_refused(
    auth: Authenticator, issuer: Issuer, claim: str
) -> None:
    """exp "9999999999" (a string) was read as a number by PyJWT, and the principal then had
    no expiry: a developer's keys made with it never expired."""
    value = str(int(time.time()) + (3600 if claim == "exp" else -10))
    await refused(auth, issuer.token(**{claim: value}), f"'{claim}' claim is not a number")


async def test_jwt_without_configured_issuers_explains(tmp_path: Path, issuer: Issuer) -> None:
    a = Authenticator(KeyStore(tmp_path / "k.db"), None)
    await refused(a, issuer.token(), "no OIDC issuer is configured")


async def test_api_key_header_and_bearer_key(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "k.db")
    key, info = store.create("acme", role="app")
    a = Authenticator(store, None)
    assert (await a.authenticate(f"Bearer {key}", None)).key_id == info.key_id
    assert (await a.authenticate(None, key)).key_id == info.key_id
    hdrs = [(b"api-key", key.encode())]
    assert (await a.authenticate_headers(hdrs)).key_id == info.key_id


@pytest.mark.parametrize(
    ("authorization", "api_key", "words"),
    [
        (None, None, "didn't provide credentials"),
        ("Basic dXNlcjpwdw==", None, "scheme 'Basic'"),
        ("Bearer ", None, "didn't provide credentials"),
        ("Bearer hello", None, "start with 'sk-sekisho-'"),
    ],
)
async def test_missing_or_malformed_credentials(
    tmp_path: Path, authorization: str | None, api_key: str | None, words: str
) -> None:
    a = Authenticator(KeyStore(tmp_path / "k.db"), None)
    with pytest.raises(AuthenticationFailed, match=words):
        await a.authenticate(authorization, api_key)


async def test_a_tab_or_several_spaces_after_bearer_are_accepted(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "k.db")
    key, info = store.create("acme", role="app")
    a = Authenticator(store, None)
    for sep in ("\t", "  ", " \t "):
        assert (await a.authenticate(f"Bearer{sep}{key}", None)).key_id == info.key_id


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    header=st.text(min_size=1, max_size=80),
    secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=8, max_size=43),
)
async def test_a_refused_authorization_header_never_repeats_its_credential(
    tmp_path: Path, header: str, secret: str
) -> None:
    """Whatever precedes, follows or replaces the scheme, a refusal repeats at most a plain
    scheme word: never a part of the key (`Bearer<TAB>sk-sekisho-26...` once echoed 13 chars)."""
    a = Authenticator(KeyStore(tmp_path / "k.db"), None)
    credential = f"sk-sekisho-26f0{secret}"  # 26f0: in no message sekisho writes
    for sent in (f"{header}{credential}", f"{header} {credential}", f"Bearer\v{credential}"):
        try:
            await a.authenticate(sent, None)
        except AuthenticationFailed as exc:
            assert "26f0" not in exc.message, exc.message
            scheme = re.search(r"scheme '(.*)' is not supported", exc.message)
            assert scheme is None or re.fullmatch(r"[A-Za-z]{1,20}", scheme[1]), exc.message


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    token=st.one_of(
        st.text(min_size=1, max_size=200),
        st.lists(
            st.text(
                alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=",
                max_size=60,
            ),
            min_size=3,
            max_size=3,
        ).map(".".join),
    )
)
async def test_arbitrary_bearer_strings_only_ever_fail_authentication(
    auth: Authenticator, token: str
) -> None:
    try:
        await auth.authenticate(f"Bearer {token}", None)
    except AuthenticationFailed as exc:
        assert exc.status == 401
    else:
        raise AssertionError("an arbitrary string authenticated")


@pytest.mark.parametrize("parts", [2, 4, 5])
async def test_a_jwt_of_the_wrong_shape_is_an_invalid_token_not_an_invalid_api_key(
    auth: Authenticator, issuer: Issuer, parts: int
) -> None:
    """Two, four or five parts (a JWE has five) were answered "Invalid API key: sekisho keys
    start with 'sk-sekisho-'": the caller was sent looking for the wrong mistake."""
    head, body, sig = issuer.token().split(".")
    token = ".".join([head, body, sig, "x", "y"][:parts])
    with pytest.raises(AuthenticationFailed) as info:
        await login(auth, token)
    assert info.value.code == "invalid_token"
    assert f"{parts} parts" in info.value.message and body not in info.value.message
