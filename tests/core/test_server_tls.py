"""``server.tls``: `sekisho serve` speaks HTTPS, and with ``client_ca_file`` admits only clients
presenting a certificate from that CA (mutual TLS). Run as users run it, in its own process, with
the official openai client (its default HTTP client, given the private CA)."""

from __future__ import annotations

import datetime
import http.client
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from harness import request
from pki import CA
from serve_process import ServeProcess, Simulators, write_config


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("server-pki")
    ca, other = CA(d), CA(d, "some other CA")
    return {
        "ca": ca,
        "other": other,
        "server": ca.issue("sekisho.internal"),
        "client": ca.issue("payments-app", client=True),
        "locked": ca.issue("sekisho-locked-server", password=b"pw"),
        "stranger": other.issue("stranger", client=True),
    }


@pytest.fixture(scope="module")
def sims() -> Iterator[Simulators]:
    s = Simulators().start()
    yield s
    s.stop()


def trusting(pki: dict[str, Any], client: str | None = None) -> ssl.SSLContext:
    """A client context that trusts the private CA, presenting ``client``'s certificate."""
    ctx = ssl.create_default_context(cafile=str(pki["ca"].cert_path))
    if client is not None:
        ctx.load_cert_chain(*map(str, pki[client]))
    return ctx


def serve(
    tmp_path: Path, sims: Simulators, tls: dict[str, Any], ctx: ssl.SSLContext, **kw: Any
) -> ServeProcess:
    def mutate(raw: dict[str, Any]) -> None:
        raw["server"]["tls"] = tls

    config = write_config(tmp_path / "sekisho.yaml", sims.config(mutate))
    return ServeProcess(config, tmp_path / "data", tls=ctx, **kw)


def chat(gw: ServeProcess, ctx: ssl.SSLContext, *, stream: bool = False) -> Any:
    client = openai.OpenAI(
        base_url=gw.base_url,
        api_key=gw.key(),
        max_retries=0,
        http_client=openai.DefaultHttpxClient(verify=ctx, timeout=10),
    )
    messages = [{"role": "user", "content": "口座番号は書かないでください"}]
    if stream:
        return "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(model="gpt-4o", messages=messages, stream=True)
            if c.choices
        )
    return client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages)


def server_files(pki: dict[str, Any], name: str = "server") -> dict[str, str]:
    cert, key = pki[name]
    return {"cert_file": str(cert), "key_file": str(key)}


def test_serves_https_to_the_openai_client_and_nothing_in_plain_http(
    tmp_path: Path, sims: Simulators, pki: dict[str, Any]
) -> None:
    ctx = trusting(pki)
    with serve(tmp_path, sims, server_files(pki), ctx) as gw:
        raw = chat(gw, ctx)
        assert raw.headers["x-sekisho-endpoint"] and raw.parse().choices[0].message.content
        assert "SIMULATOR" in chat(gw, ctx, stream=True)
        # The same port does not answer plain HTTP: nothing readable leaves unencrypted.
        plain = f"http://127.0.0.1:{gw.port}/healthz"
        with pytest.raises((http.client.HTTPException, OSError)):
            request("GET", plain, timeout=5)
        # A client that does not trust the gateway's CA refuses to talk to it.
        with pytest.raises(openai.APIConnectionError):
            chat(gw, ssl.create_default_context())
        assert request("GET", f"{gw.root}/healthz", tls=ctx).status_code == 200
        # A head past server.max_header_bytes is answered (431) before the connection closes:
        # over TLS too, where dropping the connection at once would lose the answer.
        raw_sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        with raw_sock, ctx.wrap_socket(raw_sock, server_hostname="localhost") as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 70_000)
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 431 ") and b"server.max_header_bytes" in answer
        # The openai clients above keep idle TLS connections open: shutting down must not wait
        # for them to answer close_notify (it waited the full 30 s).
        started = time.monotonic()
        gw.signal(signal.SIGTERM)
        gw.wait(15)
        assert time.monotonic() - started < 5


def test_client_ca_file_admits_only_clients_with_that_cas_certificate(
    tmp_path: Path, sims: Simulators, pki: dict[str, Any]
) -> None:
    tls = {**server_files(pki), "client_ca_file": str(pki["ca"].cert_path)}
    admitted = trusting(pki, "client")
    with serve(tmp_path, sims, tls, admitted) as gw:
        assert chat(gw, admitted).headers["x-sekisho-endpoint"]
        for refused in (trusting(pki), trusting(pki, "stranger")):
            with pytest.raises(openai.APIConnectionError):
                chat(gw, refused)
        # The gateway is still up for the clients it admits.
        assert "SIMULATOR" in chat(gw, admitted, stream=True)


def test_an_encrypted_server_key_opens_with_its_password_from_the_environment(
    tmp_path: Path, sims: Simulators, pki: dict[str, Any]
) -> None:
    tls = {**server_files(pki, "locked"), "key_password": "${SEKISHO_TLS_KEY_PASSWORD}"}
    ctx = trusting(pki)
    env = {"SEKISHO_TLS_KEY_PASSWORD": "pw"}
    with serve(tmp_path, sims, tls, ctx, extra_env=env) as gw:
        assert chat(gw, ctx).headers["x-sekisho-endpoint"]


def test_every_worker_serves_https(tmp_path: Path, sims: Simulators, pki: dict[str, Any]) -> None:
    ctx = trusting(pki)
    with serve(tmp_path, sims, server_files(pki), ctx, workers=2) as gw:
        for _ in range(4):
            assert chat(gw, ctx).headers["x-sekisho-endpoint"]


def presented(gw: ServeProcess, ctx: ssl.SSLContext) -> str:
    """The common name of the certificate the gateway presents on a new connection."""
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    with raw, ctx.wrap_socket(raw, server_hostname="localhost") as conn:
        peer = conn.getpeercert()
    return next(v for rdn in peer["subject"] for k, v in rdn if k == "commonName")


def reloaded(gw: ServeProcess, message: str, count: int) -> dict[str, Any]:
    """Wait for the ``count``-th log line with ``message`` (a SIGHUP's outcome); return it."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = [e for e in gw.log() if e.get("msg") == message]
        if len(found) >= count:
            return found[count - 1]
        time.sleep(0.05)
    raise AssertionError(f"no {message!r} in the log:\n{gw.stderr()}")


def test_sighup_rotates_the_certificate_and_client_cas_without_a_restart(
    tmp_path: Path, sims: Simulators, pki: dict[str, Any]
) -> None:
    """Certificates are renewed in place (same paths; certbot, cert-manager, an internal PKI):
    SIGHUP makes every new connection get the new certificate and the new client CAs, and
    connections already open carry on."""
    files = tmp_path / "tls"
    files.mkdir()
    cert, key, clients = files / "gateway.pem", files / "gateway.key", files / "clients.pem"

    def install(issued: tuple[Path, Path]) -> None:
        cert.write_bytes(issued[0].read_bytes())
        key.write_bytes(issued[1].read_bytes())

    install(pki["server"])
    clients.write_bytes(pki["ca"].cert_path.read_bytes())
    tls = {"cert_file": str(cert), "key_file": str(key), "client_ca_file": str(clients)}
    admitted, stranger = trusting(pki, "client"), trusting(pki, "stranger")
    with serve(tmp_path, sims, tls, admitted) as gw:
        assert presented(gw, admitted) == "sekisho.internal"
        kept = openai.OpenAI(
            base_url=gw.base_url,
            api_key=gw.key(),
            max_retries=0,
            http_client=openai.DefaultHttpxClient(verify=admitted, timeout=10),
        )
        ask = {"model": "gpt-4o", "messages": [{"role": "user", "content": "こんにちは"}]}
        assert kept.chat.completions.create(**ask).choices  # type: ignore[call-overload]

        # Renewed: a new certificate, and the client CA bundle now the other CA's.
        install(pki["ca"].issue("sekisho.internal.renewed", days=90))
        clients.write_bytes(pki["other"].cert_path.read_bytes())
        gw.signal(signal.SIGHUP)
        entry = reloaded(gw, "policy reloaded (SIGHUP)", 1)
        expiry = datetime.datetime.fromisoformat(entry["certificates"]["listener"])
        assert datetime.timedelta(days=89) < expiry - datetime.datetime.now(datetime.UTC)

        assert presented(gw, stranger) == "sekisho.internal.renewed"
        assert chat(gw, stranger).headers["x-sekisho-endpoint"]
        with pytest.raises(openai.APIConnectionError):
            chat(gw, admitted)  # its CA is no longer trusted, on a new connection
        # The connection opened before the reload was not cut.
        assert kept.chat.completions.create(**ask).choices  # type: ignore[call-overload]
        metrics = request("GET", f"{gw.root}/metrics", tls=stranger).text
        line = next(
            x for x in metrics.splitlines()
            if x.startswith("sekisho_tls_certificate_expiry_timestamp_seconds{")
            and 'use="listener"' in x
        )  # fmt: skip
        assert abs(float(line.rsplit(" ", 1)[1]) - expiry.timestamp()) < 1

        # A renewal gone wrong (the key of another certificate) is refused, naming the key;
        # the gateway keeps serving the certificate in force.
        key.write_bytes(pki["client"][1].read_bytes())
        gw.signal(signal.SIGHUP)
        refused = reloaded(gw, "policy reload refused; the old policy keeps serving", 1)
        assert any("server.tls.cert_file" in p for p in refused["problems"])
        assert presented(gw, stranger) == "sekisho.internal.renewed"
        assert chat(gw, stranger).headers["x-sekisho-endpoint"]


def test_min_version_1_3_refuses_a_tls_1_2_client(
    tmp_path: Path, sims: Simulators, pki: dict[str, Any]
) -> None:
    ctx = trusting(pki)
    with serve(tmp_path, sims, {**server_files(pki), "min_version": "1.3"}, ctx) as gw:
        assert chat(gw, ctx).headers["x-sekisho-endpoint"]
        old = trusting(pki)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            presented(gw, old)
        with pytest.raises(openai.APIConnectionError):
            chat(gw, old)


def check(tmp_path: Path, sims: Simulators, tls: dict[str, Any]) -> tuple[int, str]:
    def mutate(raw: dict[str, Any]) -> None:
        raw["server"]["tls"] = tls

    config = write_config(tmp_path / "sekisho.yaml", sims.config(mutate))
    done = subprocess.run(
        [sys.executable, "-m", "sekisho", "config", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr


def test_config_check_names_each_bad_server_tls_setting(
    tmp_path: Path, sims: Simulators, pki: dict[str, Any]
) -> None:
    missing = tmp_path / "gateway.pem"
    code, out = check(tmp_path, sims, {"cert_file": str(missing)})
    assert code != 0 and f"server.tls.cert_file: no such file: {missing}" in out
    cert, _ = pki["server"]
    _, wrong_key = pki["client"]
    code, out = check(tmp_path, sims, {"cert_file": str(cert), "key_file": str(wrong_key)})
    assert code != 0 and "server.tls.cert_file: cannot load the certificate and key" in out
    locked_cert, locked_key = pki["locked"]
    code, out = check(tmp_path, sims, {"cert_file": str(locked_cert), "key_file": str(locked_key)})
    assert code != 0
    assert f"server.tls.key_file: {locked_key}: the key is encrypted: set key_password" in out
    code, out = check(
        tmp_path, sims, {**server_files(pki), "client_ca_file": str(tmp_path / "apps-ca.pem")}
    )
    assert code != 0 and "server.tls.client_ca_file: no such file" in out
    code, out = check(tmp_path, sims, {"key_file": str(wrong_key)})
    assert code != 0 and "server.tls.cert_file" in out and "missing" in out
    code, out = check(tmp_path, sims, server_files(pki))
    assert code == 0, out


@pytest.mark.parametrize(
    ("host", "tls", "warned"),
    [
        ("127.0.0.1", False, False),
        ("::1", False, False),
        ("[::1]", False, False),
        ("localhost", False, False),
        ("0.0.0.0", False, True),
        ("::", False, True),
        ("10.1.2.3", False, True),
        ("gateway.corp.example", False, True),
        ("0.0.0.0", True, False),
    ],
)
def test_plain_http_off_loopback_is_warned_about(host: str, tls: bool, warned: bool) -> None:
    from sekisho.cli import plain_http_warning

    message = plain_http_warning(host, tls)
    assert (message is not None) == warned
    if message:
        assert host in message and "server.tls" in message


def test_an_encrypted_key_without_its_password_does_not_wait_at_a_terminal_prompt(
    tmp_path: Path, sims: Simulators, pki: dict[str, Any]
) -> None:
    """OpenSSL asked "Enter PEM pass phrase:" on the controlling terminal: `config check` (and
    `serve`) run from a shell stopped there; without a terminal it said "Invalid argument"."""
    import fcntl
    import os
    import pty
    import termios

    locked_cert, locked_key = pki["locked"]

    def mutate(raw: dict[str, Any]) -> None:
        raw["server"]["tls"] = {"cert_file": str(locked_cert), "key_file": str(locked_key)}

    config = write_config(tmp_path / "sekisho.yaml", sims.config(mutate))
    controller, terminal = pty.openpty()

    def on_the_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    done = subprocess.run(
        [sys.executable, "-m", "sekisho", "config", "check", str(config)],
        stdin=terminal, capture_output=True, text=True, timeout=60,
        preexec_fn=on_the_terminal,
    )  # fmt: skip
    os.close(terminal)
    os.close(controller)
    assert done.returncode == 2, done.stderr
    assert f"{locked_key}: the key is encrypted: set key_password" in done.stderr
    # A reload (SIGHUP, the admin API) loads the files the same way: refused, nothing asked.
    from sekisho.config import ServerTLS
    from sekisho.tls import Listener, TLSSettingError

    listener = Listener(ServerTLS(**server_files(pki)))
    with pytest.raises(TLSSettingError, match="the key is encrypted: set key_password"):
        listener.reload(ServerTLS(cert_file=str(locked_cert), key_file=str(locked_key)))
