"""Upstream access tokens (OAuth 2.0 client credentials, Entra ID for Azure OpenAI) and
upstream 401/403, against a real token endpoint and simulators on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from harness import Harness, endpoints_check, example_config, start_example
from sekisho.config import parse_config
from sekisho.errors import ConfigError
from serve_process import LoopThread
from token_server import CLIENT_ID, CLIENT_SECRET, TokenServer

AZURE = "sim-global-japaneast"  # becomes an Azure OpenAI resource with key auth switched off


@pytest.fixture
def tokens() -> Iterator[TokenServer]:
    loop = LoopThread()
    server = loop.call(TokenServer().start())
    yield server
    loop.call(server.stop())
    loop.stop()


def entra(server: TokenServer, **auth: Any) -> Any:
    def mutate(raw: dict[str, Any]) -> None:
        # No domestic preference: the weighted choice sends some requests to the Azure one.
        raw["tenants"]["demo"]["policy"].pop("prefer", None)
        for ep in raw["endpoints"]:
            ep["timeouts"] = {"connect": 1, "first_byte": 2, "total": 5}
        ep = raw["endpoints"][1]
        ep["family"] = "azure_openai"
        ep["api_version"] = "2024-10-21"
        del ep["api_key"]
        ep["auth"] = {
            k: v
            for k, v in {
                "type": "azure_entra",
                "tenant_id": "contoso.onmicrosoft.com",
                "token_url": server.url,  # Entra's own URL is derived from tenant_id
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                **auth,
            }.items()
            if v is not None
        }
        ep["models"] = [{"id": "gpt-4o", "deployment": "prod-gpt4o"}]

    return mutate


def gateway(tmp_path: Path, server: TokenServer, **auth: Any) -> Harness:
    """The example gateway with the Azure endpoint on Entra tokens from ``server``; its
    simulator accepts only the token issued last (the gateway fetches one as it starts)."""
    issued: list[str] = []
    sims: list[Any] = []

    def on_issue(token: str) -> None:
        issued.append(token)
        for sim in sims:
            sim.spec.require_key = token

    server.on_issue = on_issue
    h = start_example(tmp_path, entra(server, **auth))
    sim = h.sims[AZURE]
    sim.spec.require_key = issued[-1] if issued else "no token issued yet"
    sims.append(sim)
    if issued and sim.spec.require_key != issued[-1]:  # one came in meanwhile
        sim.spec.require_key = issued[-1]
    return h


def chat(h: Harness, key: str) -> Any:
    c = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0)
    return c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hello"}]
    )


def to_azure(h: Harness, key: str, tries: int = 20) -> Any:
    """A request that the weighted choice sent to the Azure endpoint (the other serves too)."""
    for _ in range(tries):
        raw = chat(h, key)
        if raw.headers["x-sekisho-endpoint"] == AZURE:
            return raw
    raise AssertionError("the Azure endpoint was never chosen")


def test_an_entra_token_is_fetched_once_shared_and_sent_as_bearer(
    tmp_path: Path, tokens: TokenServer
) -> None:
    h = gateway(tmp_path, tokens)
    try:
        key = h.key()
        with ThreadPoolExecutor(8) as pool:
            raws = list(pool.map(lambda _: chat(h, key), range(16)))
        assert {r.http_response.status_code for r in raws} == {200}
        to_azure(h, key)
        assert tokens.issued == ["tok-1"]  # one fetch, shared by every request since
        form = tokens.forms[0]
        assert form == {
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scope": "https://cognitiveservices.azure.com/.default",
        }
        headers = h.sims[AZURE].stats.headers[-1]
        assert headers["authorization"] == "Bearer tok-1"
        assert "api-key" not in headers
    finally:
        h.stop()


def test_a_token_is_replaced_before_it_expires(tmp_path: Path, tokens: TokenServer) -> None:
    tokens.lifetime = "6"  # as a string, as some servers send it: replaced after 3 s
    h = gateway(tmp_path, tokens)
    try:
        key = h.key()
        to_azure(h, key)
        assert tokens.issued == ["tok-1"]
        time.sleep(3.2)
        to_azure(h, key)
        assert tokens.issued == ["tok-1", "tok-2"]
        assert h.sims[AZURE].stats.headers[-1]["authorization"] == "Bearer tok-2"
    finally:
        h.stop()


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        ("refuse", "HTTP 401 invalid_client: AADSTS7000215: Invalid client secret provided."),
        # /readyz, which anyone may read, and the log show why, never the secret it quotes
        ("echo", "HTTP 401 invalid_client: invalid client_secret '[SECRET]' for"),
        ("down", "HTTP 503"),
        ("garbage", "answered 200 with a body that is not a JSON object"),
    ],
)
def test_no_token_fails_over_and_says_why_without_the_secret(
    tmp_path: Path, tokens: TokenServer, mode: str, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    tokens.mode = mode
    h = gateway(tmp_path, tokens)
    try:
        key = h.key()
        # The weighted choice picks the Azure endpoint only now and then: ask until it has
        # (its token fetch failed and it was marked down); another endpoint answers each time.
        for _ in range(60):
            assert chat(h, key).headers["x-sekisho-endpoint"] != AZURE
            state = h.gateway.health.snapshot()[AZURE]  # type: ignore[union-attr]
            if state["consecutive_failures"]:
                break
        assert h.sims[AZURE].stats.requests == 0  # nothing went there without a token
        # Marked down (for a backoff that may have passed by now), with the reason.
        assert state["consecutive_failures"] >= 1 and said in str(state["last_error"])
        assert "127.0.0.1" in str(state["last_error"])  # names the token endpoint

        for other in h.sims:  # now nothing can answer: the client hears why
            if other != AZURE:
                h.fault(other, mode="status", status=500)
        h.gateway.health.success(AZURE)  # type: ignore[union-attr]
        with pytest.raises(openai.InternalServerError) as e:
            chat(h, key)
        assert e.value.status_code == 502
        assert CLIENT_SECRET not in e.value.response.text
        assert CLIENT_SECRET not in caplog.text
    finally:
        h.stop()


def test_a_failed_refresh_keeps_using_the_valid_token(tmp_path: Path, tokens: TokenServer) -> None:
    tokens.lifetime = 8  # replaced after 4 s, valid for 8 s
    h = gateway(tmp_path, tokens)
    try:
        key = h.key()
        to_azure(h, key)
        tokens.mode = "down"
        time.sleep(4.2)
        raw = to_azure(h, key)
        assert raw.http_response.status_code == 200
        assert h.sims[AZURE].stats.headers[-1]["authorization"] == "Bearer tok-1"
        assert len(tokens.forms) == 2  # the refresh was tried, and is not tried on every request
    finally:
        h.stop()


def test_a_token_the_endpoint_refuses_is_replaced_and_the_request_fails_over(
    tmp_path: Path, tokens: TokenServer
) -> None:
    h = gateway(tmp_path, tokens)
    try:
        key = h.key()
        to_azure(h, key)
        h.sims[AZURE].spec.require_key = "rotated"  # the endpoint stops accepting tok-1
        before = h.sims[AZURE].stats.requests
        for _ in range(40):
            raw = chat(h, key)
            assert raw.http_response.status_code == 200  # never the client's 401
            if h.sims[AZURE].stats.requests > before:
                break  # the Azure endpoint refused tok-1, and the request failed over
        else:
            raise AssertionError("the refused token was never tried")
        assert raw.headers["x-sekisho-endpoint"] != AZURE
        assert h.sims[AZURE].stats.headers[-1]["authorization"] == "Bearer tok-1"
        h.gateway.health.success(AZURE)  # type: ignore[union-attr]
        to_azure(h, key)  # a new token was fetched, and the endpoint takes it
        assert len(tokens.issued) >= 2  # renewed with the new assertion
        assert h.sims[AZURE].stats.headers[-1]["authorization"] == "Bearer tok-2"
    finally:
        h.stop()


def test_an_endpoint_refusing_sekishos_key_is_never_the_clients_authentication_error(
    tmp_path: Path,
) -> None:
    """Before, the endpoint's 401 reached the client as its own 401 (the SDK's
    AuthenticationError): the client was told its key was wrong when sekisho's was."""
    h = start_example(tmp_path)
    try:
        for sim in h.sims.values():
            sim.spec.require_key = "the upstream key sekisho does not have"
        key = h.key()
        with pytest.raises(openai.InternalServerError) as e:
            chat(h, key)
        assert e.value.status_code == 502
        message = e.value.response.json()["error"]["message"]
        assert "HTTP 401 (the endpoint refused sekisho's credentials" in message
    finally:
        h.stop()


def _config_with_auth(auth: dict[str, Any], api_key: str | None = None) -> None:
    raw = example_config()
    ep = raw["endpoints"][0]
    ep.pop("api_key", None)
    if api_key is not None:
        ep["api_key"] = api_key
    ep["auth"] = auth
    import yaml

    parse_config(yaml.safe_dump(raw), "sekisho.yaml")


@pytest.mark.parametrize(
    ("auth", "api_key", "reason"),
    [
        ({"type": "azure_entra", "client_id": "a", "client_secret": "b"}, None, "tenant_id"),
        (
            {"type": "oauth2_client_credentials", "client_id": "a", "client_secret": "b"},
            None,
            "token_url",
        ),
        (
            {"type": "azure_entra", "tenant_id": "t", "client_id": "a", "client_secret": "b"},
            "k",
            "one of api_key, api_key_file and auth",
        ),
        ({"type": "azure_entra", "tenant_id": "t", "client_id": "a"}, None, "client_secret"),
    ],
)
def test_an_incomplete_auth_block_is_a_config_error_naming_it(
    auth: dict[str, Any], api_key: str | None, reason: str
) -> None:
    with pytest.raises(ConfigError) as e:
        _config_with_auth(auth, api_key)
    text = str(e.value)
    assert "endpoints[0]" in text and reason in text


def test_the_token_request_is_form_encoded(tokens: TokenServer) -> None:
    """The secret travels form-encoded (RFC 6749 2.3.1), whatever characters it holds."""
    from sekisho.providers.h1 import H1Client
    from sekisho.providers.oauth import TokenSource
    from sekisho.routing.catalogue import Endpoint

    raw = example_config()["endpoints"][0]
    raw.pop("api_key")
    raw["auth"] = {
        "type": "oauth2_client_credentials",
        "token_url": tokens.url,
        "client_id": CLIENT_ID,
        "client_secret": "a&b=c+d%e",
        "scope": "api://llm/.default offline",
    }
    ep = Endpoint.model_validate(raw)
    loop = LoopThread()
    try:

        async def fetch() -> None:
            client = H1Client()
            try:
                with pytest.raises(Exception, match="invalid_client"):
                    await TokenSource(ep, client).token()
            finally:
                await client.close()

        loop.call(fetch())
    finally:
        loop.stop()
    form = tokens.forms[-1]
    assert form["client_secret"] == "a&b=c+d%e"
    assert form["scope"] == "api://llm/.default offline"


def test_endpoints_check_reports_a_token_the_server_will_not_give(
    tmp_path: Path, tokens: TokenServer
) -> None:
    import json

    tokens.mode = "refuse"
    h = gateway(tmp_path / "gw", tokens)
    try:
        done = endpoints_check(tmp_path, h.raw, "--endpoint", AZURE, "--json")
        assert done.returncode == 1, done.stderr
        (report,) = json.loads(done.stdout)
        assert report["auth"].startswith("no token")
        assert "invalid_client" in report["problems"][0]
        assert CLIENT_SECRET not in done.stdout + done.stderr
        tokens.mode = "ok"
        done = endpoints_check(tmp_path, h.raw, "--endpoint", AZURE, "--chat")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "token from 127.0.0.1" in done.stdout and "gpt-4o: ok in" in done.stdout
    finally:
        h.stop()


def test_workload_identity_sends_the_renewed_assertion_and_no_secret(
    tmp_path: Path, tokens: TokenServer
) -> None:
    """AKS workload identity: no secret in the config; a JWT the platform renews in a file."""
    assertion = tmp_path / "azure-identity-token"
    assertion.write_text("eyJhbGciOi.first.sig\n")
    tokens.assertions = {"eyJhbGciOi.first.sig", "eyJhbGciOi.second.sig"}
    tokens.lifetime = 4  # replaced after 2 s
    h = gateway(tmp_path / "gw", tokens, client_secret=None, client_assertion_file=str(assertion))
    try:
        key = h.key()
        to_azure(h, key)
        form = tokens.forms[-1]
        assert "client_secret" not in form
        assert form["client_assertion"] == "eyJhbGciOi.first.sig"
        assert form["client_assertion_type"] == (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        )
        assertion.write_text("eyJhbGciOi.second.sig")  # the platform renewed it
        time.sleep(2.2)
        to_azure(h, key)
        assert tokens.forms[-1]["client_assertion"] == "eyJhbGciOi.second.sig"
        assert len(tokens.issued) >= 2  # a new token, for the renewed assertion
        assertion.unlink()  # gone: the next token cannot be had, and the reason is named
        time.sleep(4.1)
        for _ in range(30):  # until the weighted choice has tried the Azure endpoint
            assert chat(h, key).headers["x-sekisho-endpoint"] != AZURE
            state = h.gateway.health.snapshot().get(AZURE)  # type: ignore[union-attr]
            if state and state["last_error"]:
                break
        assert state is not None
        assert "cannot read client_assertion_file" in str(state["last_error"])
    finally:
        h.stop()


@pytest.mark.parametrize("extra", [{"client_assertion_file": "/tmp/t"}, {"client_secret": None}])
def test_exactly_one_of_secret_and_assertion_file(extra: dict[str, Any]) -> None:
    auth = {"type": "azure_entra", "tenant_id": "t", "client_id": "a", "client_secret": "b"}
    auth.update(extra)
    with pytest.raises(ConfigError, match="client_secret or client_assertion_file"):
        _config_with_auth({k: v for k, v in auth.items() if v is not None})


def test_a_hanging_token_endpoint_fails_over_within_its_own_short_wait(
    tmp_path: Path, tokens: TokenServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request to the endpoint waits on the token fetch: it is bounded by a short wait of
    its own (10 s; 0.3 s here), not by the model's first-byte timeout."""
    import sekisho.providers.oauth as oauth

    monkeypatch.setattr(oauth, "_TOKEN_WAIT", 0.3)
    tokens.mode = "hang"
    h = gateway(tmp_path, tokens)
    try:
        key = h.key()
        health: Any = h.gateway.health  # type: ignore[union-attr]
        for _ in range(40):  # until the weighted choice has sent one to the Azure endpoint
            started = time.monotonic()
            assert chat(h, key).headers["x-sekisho-endpoint"] != AZURE
            assert time.monotonic() - started < 2  # the token wait, not first_byte (60 s)
            if health.snapshot()[AZURE]["last_error"]:
                break
        state = health.snapshot()[AZURE]
        assert "no access token from 127.0.0.1" in str(state["last_error"])
    finally:
        h.stop()


def test_the_first_token_is_fetched_as_the_gateway_starts(
    tmp_path: Path, tokens: TokenServer
) -> None:
    h = gateway(tmp_path, tokens)
    try:
        deadline = time.monotonic() + 5
        while not tokens.issued and time.monotonic() < deadline:
            time.sleep(0.02)
        assert tokens.issued == ["tok-1"]  # before any request asked for one
        to_azure(h, h.key())
        assert tokens.issued == ["tok-1"]  # and the first request used it
    finally:
        h.stop()


def test_a_token_url_that_would_send_the_secret_in_clear_text_is_refused() -> None:
    auth = {"type": "oauth2_client_credentials", "client_id": "a", "client_secret": "b"}
    with pytest.raises(ConfigError, match="token_url must be https"):
        _config_with_auth({**auth, "token_url": "http://idp.corp.example/token"})
    _config_with_auth({**auth, "token_url": "http://127.0.0.1:8443/token"})  # loopback: fine
    _config_with_auth({**auth, "token_url": "https://idp.corp.example/token"})
