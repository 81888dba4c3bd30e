"""An endpoint's ``tls`` block: a private CA, a client certificate (mutual TLS), a minimum TLS
version. Checked end to end: the official openai client, the gateway on a loopback port, and a
simulator speaking https that asks for a client certificate from the same private CA."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from harness import Harness, example_config, request, start_example
from pki import CA
from proxy_server import ConnectProxy
from sekisho.config import parse_config
from sekisho.errors import ConfigError
from sekisho.routing.catalogue import TLS
from sekisho.tls import client_context

TOKYO = "sim-domestic-tokyo"
ONLY_TOKYO = "llama-3.1-swallow-70b"  # served by no other endpoint: no failover hides a failure
WHERE = f"sekisho.yaml: endpoints[0]({TOKYO}).tls"  # how config problems name the tls block


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pki")
    ca = CA(d)
    other = CA(d, "some other CA")
    server = ca.issue("tokyo-gpu.internal")
    client = ca.issue("sekisho-gateway", client=True)
    locked = ca.issue("sekisho-locked", client=True, password=b"s3cret")
    stranger = other.issue("stranger", client=True)
    return {"ca": ca, "other": other, "server": server, "client": client, "locked": locked,
            "stranger": stranger, "dir": d}  # fmt: skip


def server_context(pki: dict[str, Any], *, mutual: bool = True, tls12_only: bool = False) -> Any:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*pki["server"])
    if mutual:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(pki["ca"].cert_path))
    if tls12_only:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def with_tls(tls: dict[str, Any] | None, **extra: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        ep = next(e for e in raw["endpoints"] if e["id"] == TOKYO)
        if tls is not None:
            ep["tls"] = tls
        ep.update(extra)

    return mutate


@pytest.fixture
def gateway(gateways: Callable[..., Harness], pki: dict[str, Any]) -> Callable[..., Harness]:
    def start(tls: dict[str, Any] | None, **server: Any) -> Harness:
        return gateways(with_tls(tls), sim_tls={TOKYO: server_context(pki, **server)})

    return start


def mtls(pki: dict[str, Any]) -> dict[str, Any]:
    cert, key = pki["client"]
    return {"ca_file": str(pki["ca"].cert_path), "client_cert": str(cert), "client_key": str(key)}


def ask(h: Harness, model: str = ONLY_TOKYO) -> Any:
    c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
    return c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "こんにちは"}]
    )


# -- through the gateway ------------------------------------------------------------------------


def test_private_ca_and_client_certificate_reach_a_mutual_tls_endpoint(
    gateway: Callable[..., Harness], pki: dict[str, Any]
) -> None:
    h = gateway(mtls(pki))
    first, second = ask(h), ask(h)
    assert first.headers["x-sekisho-endpoint"] == TOKYO
    assert "SIMULATOR" in second.parse().choices[0].message.content
    stats = h.sims[TOKYO].stats
    assert stats.chat == 2
    # One handshake, presenting the configured client certificate; the second request reused it.
    assert stats.client_certs == ["sekisho-gateway"]


def test_the_system_trust_store_does_not_know_a_private_ca(
    gateway: Callable[..., Harness], pki: dict[str, Any]
) -> None:
    h = gateway(None)  # no tls block: the system's CAs, which never issued the endpoint's cert
    with pytest.raises(openai.APIStatusError) as err:
        ask(h)
    assert err.value.status_code == 502
    assert "certificate verify failed" in str(err.value)
    assert h.sims[TOKYO].stats.chat == 0
    # The gateway stays up and other endpoints are unaffected.
    assert ask(h, "gpt-4.1").headers["x-sekisho-endpoint"] == "sim-global-useast"


def test_a_ca_file_pins_the_endpoint_to_that_ca(
    gateway: Callable[..., Harness], pki: dict[str, Any]
) -> None:
    # Trusting only another CA: the endpoint's certificate, valid under its own CA, is refused.
    tls = {**mtls(pki), "ca_file": str(pki["other"].cert_path)}
    h = gateway(tls)
    with pytest.raises(openai.APIStatusError) as err:
        ask(h)
    assert err.value.status_code == 502
    assert "certificate verify failed" in str(err.value)


@pytest.mark.parametrize("client", [None, "stranger"])
def test_an_endpoint_that_wants_a_client_certificate_refuses_none_or_a_strangers(
    gateway: Callable[..., Harness], pki: dict[str, Any], client: str | None
) -> None:
    tls: dict[str, Any] = {"ca_file": str(pki["ca"].cert_path)}
    if client is not None:
        tls["client_cert"], tls["client_key"] = map(str, pki[client])
    h = gateway(tls)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        ask(h)
    assert err.value.status_code == 502
    assert time.monotonic() - started < 5  # a clear failure, not a hang until a timeout
    assert "check the endpoint's tls.client_cert" in str(err.value)
    assert h.sims[TOKYO].stats.chat == 0


def test_min_version_refuses_an_endpoint_that_only_speaks_tls_1_2(
    gateway: Callable[..., Harness], pki: dict[str, Any]
) -> None:
    h = gateway({**mtls(pki), "min_version": "1.3"}, tls12_only=True)
    with pytest.raises(openai.APIStatusError) as err:
        ask(h)
    assert err.value.status_code == 502
    assert "during the TLS handshake" in str(err.value) and "tls.min_version" in str(err.value)
    assert h.sims[TOKYO].stats.chat == 0


def test_min_version_1_2_still_talks_to_that_endpoint(
    gateway: Callable[..., Harness], pki: dict[str, Any]
) -> None:
    h = gateway(mtls(pki), tls12_only=True)
    assert ask(h).headers["x-sekisho-endpoint"] == TOKYO


def test_an_encrypted_client_key_opens_with_its_password_from_the_environment(
    gateway: Callable[..., Harness], pki: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKYO_CLIENT_KEY_PASSWORD", "s3cret")
    cert, key = pki["locked"]
    tls = {
        "ca_file": str(pki["ca"].cert_path),
        "client_cert": str(cert),
        "client_key": str(key),
        "client_key_password": "${TOKYO_CLIENT_KEY_PASSWORD}",
    }
    h = gateway(tls)
    ask(h)
    assert h.sims[TOKYO].stats.client_certs == ["sekisho-locked"]


# -- rotation: a reload reads the files again ------------------------------------------------------


def test_a_reload_presents_the_renewed_client_certificate_on_new_connections(
    gateways: Callable[..., Harness], pki: dict[str, Any], tmp_path: Path
) -> None:
    """Short-lived client certificates are renewed in place (same paths): a policy reload
    (SIGHUP or the admin API) picks them up without a restart or a failed request."""
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"

    def install(issued: tuple[Path, Path]) -> None:
        cert.write_bytes(issued[0].read_bytes())
        key.write_bytes(issued[1].read_bytes())

    install(pki["client"])
    tls = {"ca_file": str(pki["ca"].cert_path), "client_cert": str(cert), "client_key": str(key)}
    h = gateways(
        with_tls(tls), sim_tls={TOKYO: server_context(pki)}, config_path=tmp_path / "sekisho.yaml"
    )
    stats = h.sims[TOKYO].stats
    ask(h)
    install(pki["ca"].issue("sekisho-gateway-renewed", client=True, days=90))
    ask(h)  # renewed on disk, not yet reloaded: the pooled connection, the old certificate
    assert stats.client_certs == ["sekisho-gateway"]

    result = h.call(h.gateway.reload_policy())
    expiry = datetime.datetime.fromisoformat(result["certificates"][f"endpoint/{TOKYO}"])
    assert datetime.timedelta(days=89) < expiry - datetime.datetime.now(datetime.UTC)
    assert ask(h).headers["x-sekisho-endpoint"] == TOKYO
    assert stats.client_certs == ["sekisho-gateway", "sekisho-gateway-renewed"]
    # The connection made with the old certificate was closed, not left open in a lost pool.
    deadline = time.monotonic() + 5
    while stats.closed < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stats.closed == 1
    # The expiry alert reads the renewed certificate.
    metrics = request("GET", f"{h.root}/metrics").text
    line = next(
        x for x in metrics.splitlines()
        if x.startswith("sekisho_tls_certificate_expiry_timestamp_seconds{")
        and f'endpoint="{TOKYO}"' in x
    )  # fmt: skip
    assert abs(float(line.rsplit(" ", 1)[1]) - expiry.timestamp()) < 1

    # A renewal gone wrong (a truncated file) is refused, naming the key; requests go on with
    # the certificate in force.
    cert.write_text(cert.read_text()[:100])
    with pytest.raises(ConfigError) as err:
        h.call(h.gateway.reload_policy())
    assert f"endpoints[0]({TOKYO}).tls.client_cert" in str(err.value)
    assert ask(h).headers["x-sekisho-endpoint"] == TOKYO


# -- active probes take the way requests take -----------------------------------------------------


class _LoopThread:
    """An event loop of its own in a thread, for a peer that must exist before the gateway."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_an_active_probe_goes_through_the_proxy_with_the_endpoints_tls_and_key(
    tmp_path: Path, pki: dict[str, Any]
) -> None:
    side = _LoopThread()
    proxy = side.call(ConnectProxy().start())
    via = f"http://user:p%40ss@127.0.0.1:{proxy.port}"

    def mutate(raw: dict[str, Any]) -> None:
        with_tls(mtls(pki), proxy=via, api_key="tokyo-key")(raw)
        raw["routing"]["health"].update(
            {"probe_interval_seconds": 0.1, "backoff_initial_seconds": 60}
        )

    h = start_example(tmp_path, mutate, sim_tls={TOKYO: server_context(pki)})
    try:
        health = h.gateway.health
        h.loop.call_soon_threadsafe(health.failure, TOKYO, "marked down by the test")
        deadline = time.monotonic() + 10
        while h.sims[TOKYO].stats.requests == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        # Backoff alone would keep it down for 60 s: only the probe's answer brings it back.
        while not health.is_up(TOKYO) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health.is_up(TOKYO)
        stats = h.sims[TOKYO].stats
        assert stats.paths[0] == "/v1/models"
        assert stats.headers[0]["authorization"] == "Bearer tokyo-key"
        assert stats.client_certs[0] == "sekisho-gateway"
        port = h.sims[TOKYO].port
        assert proxy.connects[0].startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.1".encode())
        assert ask(h).headers["x-sekisho-endpoint"] == TOKYO
    finally:
        h.stop()
        side.call(proxy.close())
        side.stop()


# -- config validation: each bad setting named by its key path -------------------------------------


def problems_for(tls: dict[str, Any], base_url: str = "https://127.0.0.1:1/v1") -> list[str]:
    raw = example_config()
    with_tls(tls, base_url=base_url)(raw)
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_dump(raw, allow_unicode=True), "sekisho.yaml")
    return [str(p) for p in err.value.problems]


def test_config_names_a_missing_or_unreadable_ca_file(tmp_path: Path, pki: dict[str, Any]) -> None:
    missing = tmp_path / "nope.pem"
    assert problems_for({"ca_file": str(missing)}) == [f"{WHERE}.ca_file: no such file: {missing}"]
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    [problem] = problems_for({"ca_file": str(junk)})
    assert problem.startswith(f"{WHERE}.ca_file: cannot load CA")
    key_only = pki["client"][1]  # a PEM file, but of a key: no CA certificate in it
    [problem] = problems_for({"ca_file": str(key_only)})
    assert problem.startswith(f"{WHERE}.ca_file:")


def test_config_names_a_client_key_that_does_not_fit(pki: dict[str, Any]) -> None:
    ca = str(pki["ca"].cert_path)
    cert, _ = pki["client"]
    _, other_key = pki["stranger"]
    mismatched = {"ca_file": ca, "client_cert": str(cert), "client_key": str(other_key)}
    [problem] = problems_for(mismatched)
    assert problem.startswith(f"{WHERE}.client_cert: cannot load")
    locked_cert, locked_key = pki["locked"]
    [problem] = problems_for(
        {"ca_file": ca, "client_cert": str(locked_cert), "client_key": str(locked_key)}
    )
    assert problem == (
        f"{WHERE}.client_key: {locked_key}: the key is encrypted: set client_key_password "
        "(use ${ENV_VAR})"
    )
    [problem] = problems_for(
        {
            "ca_file": ca,
            "client_cert": str(locked_cert),
            "client_key": str(locked_key),
            "client_key_password": "wrong",
        }
    )
    assert problem.startswith(f"{WHERE}.client_cert: cannot load")


def test_config_refuses_tls_settings_that_cannot_apply(pki: dict[str, Any]) -> None:
    [problem] = problems_for({"ca_file": str(pki["ca"].cert_path)}, "http://127.0.0.1:1/v1")
    assert "endpoints[0](sim-domestic-tokyo)" in problem and "https://" in problem
    [problem] = problems_for({"client_key": str(pki["client"][1])})
    assert "endpoints[0](sim-domestic-tokyo).tls" in problem and "need client_cert" in problem
    [problem] = problems_for({"min_version": "1.1"})
    assert "endpoints[0](sim-domestic-tokyo).tls.min_version" in problem
    [problem] = problems_for({"verify": False})  # there is no switch to turn checks off
    assert "endpoints[0](sim-domestic-tokyo).tls.verify" in problem


def test_every_context_verifies_certificates_and_hostnames(pki: dict[str, Any]) -> None:
    for tls in (TLS(), TLS(ca_file=str(pki["ca"].cert_path), min_version="1.3")):
        ctx = client_context(tls)
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    pinned = client_context(TLS(ca_file=str(pki["ca"].cert_path)))
    assert [c["subject"] for c in pinned.get_ca_certs()] == [
        ((("commonName", "sekisho test CA"),),)
    ]


def test_a_reload_that_adds_server_tls_is_refused_and_changes_nothing(
    gateways: Callable[..., Harness], pki: dict[str, Any], tmp_path: Path
) -> None:
    """Whether the listener speaks TLS is fixed when it starts: a reload that adds (or
    removes) server.tls says so, and the gateway keeps serving as before."""
    config = tmp_path / "sekisho.yaml"
    h = gateways(None, config_path=config)
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    cert, key = pki["server"]
    raw["server"]["tls"] = {"cert_file": str(cert), "key_file": str(key)}
    config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        h.call(h.gateway.reload_policy())
    assert "server.tls: adding or removing server.tls needs a restart" in str(err.value)
    assert ask(h, "gpt-4o").status_code == 200


def test_the_listener_refuses_to_add_or_drop_client_certificates_on_reload(
    pki: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sekisho import tls
    from sekisho.config import ServerTLS
    from sekisho.tls import Listener, TLSSettingError

    monkeypatch.setattr(tls, "_listener", None)  # the process's listener is restored after

    cert, key = map(str, pki["server"])
    listener = Listener(ServerTLS(cert_file=cert, key_file=key))
    bound = listener()
    with pytest.raises(TLSSettingError) as err:
        listener.reload(
            ServerTLS(cert_file=cert, key_file=key, client_ca_file=str(pki["ca"].cert_path))
        )
    assert err.value.field == "client_ca_file" and "needs a restart" in err.value.reason
    assert listener.settings.client_ca_file is None  # nothing changed
    # The minimum version can change: it is set on the context the listener is bound to.
    listener.reload(ServerTLS(cert_file=cert, key_file=key, min_version="1.3"))
    assert bound.minimum_version == ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize(("days", "problem"), [(90, False), (3, True)])
def test_endpoints_check_reports_when_the_endpoints_certificate_ends(
    tmp_path: Path, pki: dict[str, Any], days: int, problem: bool
) -> None:
    import json

    from harness import endpoints_check

    cert = pki["ca"].issue(f"tokyo-{days}d", days=days)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)
    h = start_example(
        tmp_path / "gw", with_tls({"ca_file": str(pki["ca"].cert_path)}), sim_tls={TOKYO: ctx}
    )
    try:
        done = endpoints_check(tmp_path, h.raw, "--endpoint", TOKYO, "--json")
        (report,) = json.loads(done.stdout)
        assert report["tls"].startswith("TLSv1.") and "certificate valid until" in report["tls"]
        assert (done.returncode == 1) is problem, report
        assert any("TLS certificate expires in" in p for p in report["problems"]) is problem
    finally:
        h.stop()
