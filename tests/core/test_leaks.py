"""A prompt's values, and what an endpoint says back about them, stay out of everything a
gateway shows outside its encrypted home-region store: logs at every level, /metrics,
/healthz, /readyz, the admin API, the ledger and the data directory's files. The client that
sent them may read them back; nobody else."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from harness import Harness, request, start_example
from observed import PROMPT, VALUES, capture_everything, leaked

# Prompt text no detector finds: a company's confidential figures, as an endpoint echoes them.
CONFIDENTIAL = "the board approves the merger at 4,200 yen per share"


@pytest.fixture
def gw(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Any:
    capture_everything(caplog)
    h = start_example(tmp_path)
    yield h
    h.stop()


def chat(h: Harness, key: str, **extra: Any) -> Any:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}], **extra}
    return request(
        "POST",
        h.base_url + "/chat/completions",
        json_body=body,
        headers={"authorization": f"Bearer {key}"},
    )


def echoed(text: str) -> str:
    return json.dumps({"error": {"message": f"Input rejected: {text} ({CONFIDENTIAL})"}})


def test_an_endpoints_error_event_echoing_the_prompt_reaches_only_its_client(
    gw: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """An endpoint that gives up with an error event repeating the prompt: the client reads
    the endpoint's words (its own data, masked); the log, the endpoint's health in /readyz
    (which anyone may read) and the admin API's endpoint list say only what went wrong."""
    key = gw.key()
    first = json.dumps({"choices": [{"index": 0, "delta": {"content": "ok"}}]})
    # Mid-stream: the stream breaks after its first event.
    gw.fault(
        "sim-domestic-tokyo",
        mode="sse",
        body=f"data: {first}\n\ndata: {echoed(PROMPT)}\n\n",
        count=1,
    )
    r = chat(gw, key, stream=True)
    assert r.status_code == 200 and CONFIDENTIAL in r.text  # the client hears why
    # Before the first event: nothing reached the client, the request fails over (here to
    # no other endpoint: only the domestic one may see a My Number).
    gw.fault("sim-domestic-tokyo", mode="sse", body=f"data: {echoed(PROMPT)}\n\n", count=1)
    r = chat(gw, key, stream=True)
    assert r.status_code == 502 and CONFIDENTIAL in r.text
    # A Responses stream's error event.
    event = json.dumps({"type": "error", "message": f"{PROMPT} ({CONFIDENTIAL})"})
    created = json.dumps({"type": "response.created", "response": {"id": "r", "output": []}})
    gw.fault(
        "sim-domestic-tokyo",
        mode="sse",
        body=f"event: response.created\ndata: {created}\n\nevent: error\ndata: {event}\n\n",
        count=1,
    )
    r = request(
        "POST",
        gw.base_url + "/responses",
        json_body={"model": "gpt-4o", "input": PROMPT, "stream": True},
        headers={"authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200 and CONFIDENTIAL in r.text
    assert leaked(gw, caplog, CONFIDENTIAL) == {}


@pytest.mark.parametrize(
    "code", [VALUES["my_number"], f"invalid email {VALUES['email']}", f"bad: {PROMPT}"]
)
def test_an_endpoints_error_code_echoing_the_prompt_is_not_recorded(
    gw: Harness, caplog: pytest.LogCaptureFixture, code: str
) -> None:
    """An endpoint's 4xx goes back to its client with the endpoint's code, which the ledger
    (kept for good: erasure cannot reach it) and the log record. A code that is not a plain
    word (OpenAI's context_length_exceeded, Azure's DeploymentNotFound) is no code but the
    endpoint's text: upstream_rejected stands for it."""
    key = gw.key()
    error = {"message": "rejected", "type": "invalid_request_error", "code": code}
    gw.fault("sim-domestic-tokyo", mode="status", status=400, body=json.dumps({"error": error}))
    r = chat(gw, key)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "upstream_rejected"
    assert leaked(gw, caplog) == {}


def test_an_endpoints_error_code_that_is_a_word_is_kept(gw: Harness) -> None:
    key = gw.key()
    for code in ("context_length_exceeded", "DeploymentNotFound"):
        error = {"message": "too long", "type": "invalid_request_error", "code": code}
        body = json.dumps({"error": error})
        gw.fault("sim-domestic-tokyo", mode="status", status=400, body=body, count=1)
        r = chat(gw, key)
        assert r.status_code == 400 and r.json()["error"]["code"] == code


UPSTREAM_KEY = "upstream-credential-7f3a9c2e1b5d"
UPSTREAM_HEADER = "tenant-secret-4d8e6f1a0c2b"


@pytest.fixture
def keyed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Any:
    """The example's gateway with a key and a secret header for its domestic endpoint."""
    capture_everything(caplog)

    def credentials(raw: dict[str, Any]) -> None:
        ep = raw["endpoints"][0]
        assert ep["id"] == "sim-domestic-tokyo"
        ep["api_key"] = UPSTREAM_KEY
        ep["headers"] = {"x-upstream-secret": UPSTREAM_HEADER}

    h = start_example(tmp_path, credentials)
    yield h
    h.stop()


def test_an_endpoint_echoing_sekishos_own_credentials_shows_them_to_no_client(
    keyed: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Proxies and servers repeat the credentials they were sent in their errors ("invalid
    header x-api-key: …"). What the endpoint wrote reaches the client (its request's error);
    sekisho's key for the endpoint, and the secret headers it sends there, must not: every
    client could read them by making the endpoint fail."""
    key = keyed.key()
    said = f"auth {UPSTREAM_KEY} and x-upstream-secret: {UPSTREAM_HEADER} rejected"
    error = json.dumps({"error": {"message": said, "type": "invalid_request_error"}})
    first = json.dumps({"choices": [{"index": 0, "delta": {"content": "ok"}}]})
    failed = json.dumps(
        {"type": "response.failed", "response": {"id": "r", "object": "response",
                                                 "status": "failed", "output": [],
                                                 "error": {"code": "x", "message": said}}}
    )  # fmt: skip
    faults = [
        ("chat", {"mode": "status", "status": 400, "body": error}),  # a 4xx passed on
        ("chat-stream", {"mode": "sse", "body": f"data: {error}\n\n"}),  # the first event
        ("chat-stream", {"mode": "sse", "body": f"data: {first}\n\ndata: {error}\n\n"}),
        ("responses", {"mode": "body", "body": json.loads(failed)["response"]}),
        (
            "responses-stream",
            {"mode": "sse", "body": f"event: response.failed\ndata: {failed}\n\n"},
        ),
    ]
    for kind, fault in faults:
        if isinstance(fault.get("body"), dict):
            fault["body"] = json.dumps(fault["body"])
        keyed.fault("sim-domestic-tokyo", count=1, **fault)
        if kind.startswith("chat"):
            r = chat(keyed, key, stream=kind.endswith("stream"))
        else:
            body = {"model": "gpt-4o", "input": PROMPT, "stream": kind.endswith("stream")}
            r = request(
                "POST",
                keyed.base_url + "/responses",
                json_body=body,
                headers={"authorization": f"Bearer {key}"},
            )
        assert "rejected" in r.text, (kind, r.text)  # the endpoint's words reach the client
        assert UPSTREAM_KEY not in r.text and UPSTREAM_HEADER not in r.text, (kind, r.text)
    assert leaked(keyed, caplog, UPSTREAM_KEY, UPSTREAM_HEADER) == {}


def test_a_defect_whose_error_quotes_the_prompt_logs_its_traceback_without_the_values(
    gw: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error is logged with its traceback for the operator to fix the defect;
    Python's errors quote what they choke on (int('…') names the text, a KeyError its key),
    and that can be the request: each value found in a traceback is masked, as in a refusal."""
    from sekisho.pipeline import Pipeline

    def defect(*args: Any, **kw: Any) -> Any:
        int(PROMPT)  # ValueError: invalid literal for int() with base 10: '…'

    key = gw.key()
    monkeypatch.setattr(Pipeline, "inspect", defect)  # before the request's decision
    r = chat(gw, key)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    monkeypatch.undo()
    for transport in gw.gateway.transports.values():  # after it: dispatch fails
        monkeypatch.setattr(transport, "open", defect)
    r = chat(gw, key, stream=True)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    tracebacks = [r for r in caplog.records if r.exc_info and "int()" in str(r.exc_info[1])]
    assert len(tracebacks) >= 2  # the operator still has them
    assert leaked(gw, caplog) == {}


def pseudonymising_tenant(raw: dict[str, Any]) -> None:
    """The example, with a second tenant that pseudonymises and redacts instead of refusing,
    and endpoints quick to time out."""
    for ep in raw["endpoints"]:
        ep["timeouts"] = {"first_byte": 1}
    raw["tenants"]["pseudo"] = {
        "home_region": "jp",
        "policy": {
            "extends": ["jp-appi"],
            "classification": {
                "actions": {
                    "EMAIL": "pseudonymise",
                    "PHONE_JP": "pseudonymise",
                    "ADDRESS_JP": "pseudonymise",
                    "MY_NUMBER": "redact",
                    "CREDIT_CARD": "redact",
                    "SECRET": "redact",
                }
            },
            "storage": {"pseudonymise": ["EMAIL", "PHONE_JP"]},
        },
        "retention": {"mode": "full", "days": 7},
    }


def test_a_prompt_full_of_values_leaves_them_nowhere_on_any_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every way a request goes, answered or not: the values stay in the encrypted store."""
    import socket

    capture_everything(caplog)
    h = start_example(tmp_path, pseudonymising_tenant)
    try:
        keys = [h.key(), h.key("pseudo")]
        messages = [{"role": "user", "content": PROMPT}]
        calls: list[tuple[str, dict[str, Any]]] = []
        for stream in (False, True):
            calls += [
                ("chat/completions", {"model": "gpt-4o", "messages": messages, "stream": stream}),
                ("responses", {"model": "gpt-4o", "input": PROMPT, "stream": stream}),
                ("completions", {"model": "gpt-4o", "prompt": PROMPT, "stream": stream}),
            ]
        calls += [
            ("embeddings", {"model": "text-embedding-3-small", "input": PROMPT}),
            ("chat/completions", {"model": "gpt-4.1", "messages": messages}),  # refused
            # a value to rewrite where nothing can be rewritten: 400 (pseudo)
            (
                "chat/completions",
                {"model": "gpt-4o", "messages": messages, "logit_bias": {VALUES["my_number"]: 1}},
            ),
            ("chat/completions", {"model": "gpt-4o", "messages": messages, "user": PROMPT}),
        ]

        def send(path: str, body: Any, key: str) -> Any:
            return request(
                "POST",
                f"{h.base_url}/{path}",
                json_body=body,
                headers={"authorization": f"Bearer {key}"},
            )

        statuses = set()
        for key in keys:
            for path, body in calls:
                statuses.add(send(path, body, key).status_code)
            echo = json.dumps({"error": {"message": PROMPT, "code": VALUES["my_number"]}})
            for fault in (
                {"mode": "status", "status": 400, "body": echo},
                {"mode": "status", "status": 500, "body": echo},
                {"mode": "body", "body": f"not JSON {PROMPT}"},
                {"mode": "hang"},
                {"mode": "drop_midstream"},
            ):
                for sim in h.sims:
                    h.fault(sim, **fault)
                for stream in (False, True):
                    body = {"model": "gpt-4o", "messages": messages, "stream": stream}
                    statuses.add(send("chat/completions", body, key).status_code)
                for sim in h.sims:
                    h.fault(sim, mode="none")
            # a client that leaves mid-stream, one whose body is cut, one too large
            raw = json.dumps({"model": "gpt-4o", "messages": messages, "stream": True}).encode()
            head = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}"
                f"\r\nContent-Type: application/json\r\nContent-Length: {{}}\r\n\r\n"
            )
            for length, cut in ((len(raw), False), (len(raw) + 100, True)):
                with socket.create_connection(("127.0.0.1", h.port), timeout=10) as s:
                    s.sendall(head.format(length).encode() + raw)
                    if not cut:
                        s.recv(100)
            big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 5_000_000}]}
            big["messages"].append(messages[0])
            statuses.add(send("chat/completions", big, key).status_code)
        assert {200, 400, 403, 413, 502, 504} <= statuses, statuses
        time.sleep(0.5)  # the requests cut short are recorded
        assert leaked(h, caplog) == {}
    finally:
        h.stop()


def test_values_a_client_puts_in_a_url_or_an_admin_request_are_not_recorded(
    gw: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A path, an id, a tenant or a key name a client chose is written to the request's log
    line and, for the admin API, to the ledger, which no erasure reaches: each value the
    detectors find in them is masked there. The client's answer still names what it sent."""
    key = gw.key()
    admin = gw.key(role="admin")
    mail, number, aws = VALUES["email"], VALUES["my_number"], VALUES["aws_key"]
    for method, path, who, body in (
        ("GET", f"/v1/{mail}", None, None),  # unknown path, no key needed
        ("GET", f"/v1/models/{aws}", key, None),
        ("GET", f"/v1/responses/resp_sk{mail}", key, None),
        ("GET", f"/ledger/receipts/{mail}", key, None),
        ("GET", f"/admin/v1/tenants/{number}", admin, None),
        ("GET", f"/admin/v1/tenants/{mail}", admin, None),
        ("GET", f"/admin/v1/keys/{aws}", admin, None),
        ("GET", f"/admin/v1/keys?tenant={mail}", admin, None),
        ("GET", f"/admin/v1/usage?tenant={number}&model={mail}", admin, None),
        ("POST", "/admin/v1/keys", admin, {"tenant": "demo", "name": f"{mail} {number}"}),
        ("POST", "/admin/v1/keys", admin, {"tenant": "demo", "models": [aws]}),
    ):
        headers = {"authorization": f"Bearer {who}"} if who else {}
        r = request(method, gw.root + path, headers=headers, json_body=body)
        assert r.status_code < 500, (path, r.text)
    r = request(
        "GET", f"{gw.root}/admin/v1/tenants/{mail}", headers={"authorization": f"Bearer {admin}"}
    )
    assert mail in r.text  # the client is told what it sent
    # A key's name and models stay where keys are kept (identity.db): the keys' listing.
    assert leaked(gw, caplog, skip=("identity.db",)) == {}


def test_a_path_too_long_to_read_is_withheld_from_the_log_whole(
    gw: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A path is scanned before it is logged, on the event loop: a 60 KB path took ~10 ms of
    every client's time, and a cut one could keep half a value. Past 2 KiB the log says how
    long the path was, and nothing of it."""
    mail, number = VALUES["email"], VALUES["my_number"]
    long_path = "/v1/" + "x" * 60_000 + f"/{mail}/{number}"
    r = request("GET", gw.root + long_path)
    assert r.status_code == 404
    deadline = time.monotonic() + 5
    while True:  # the request's line is logged once its answer is sent
        paths = [getattr(x, "path", None) for x in caplog.records if x.getMessage() == "request"]
        if paths or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert paths == [f"(withheld: {len(long_path)} characters)"], paths
    assert leaked(gw, caplog, "x" * 100) == {}


SECRET_ENV = "s3cr3t-from-the-environment-9f2c"


@pytest.mark.parametrize(
    "place",
    [
        lambda raw: raw["endpoints"][0]["jurisdiction"].update(country="${WRONG_VAR}"),
        lambda raw: raw["endpoints"][0].update(id="${WRONG_VAR}"),
        lambda raw: raw["endpoints"][0].update(weight="${WRONG_VAR}"),
        lambda raw: raw["server"].update(log_level="${WRONG_VAR}"),
        lambda raw: raw["endpoints"][0].update(base_url="${WRONG_VAR}"),
        lambda raw: raw["tenants"]["demo"]["policy"].update(extends=["${WRONG_VAR}"]),
    ],
)
def test_a_config_problem_never_prints_a_value_from_the_environment(
    tmp_path: Path, place: Any
) -> None:
    """A secret referenced in the wrong place (a country, an id, a number: a variable's name
    mistyped, two lines swapped) is a config problem; `config check` and `serve` name the
    reference (${WRONG_VAR}) where they quote the value, never the secret: their output goes
    to terminals, CI logs and the gateway's log."""
    import subprocess
    import sys

    import yaml

    from harness import example_config

    raw = example_config()
    place(raw)
    config = tmp_path / "sekisho.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    env = {"WRONG_VAR": SECRET_ENV, "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    for args in (["config", "check", str(config)], ["serve", "--config", str(config)]):
        done = subprocess.run(
            [sys.executable, "-m", "sekisho", *args],
            capture_output=True, text=True, timeout=60, check=False, env=env,
        )  # fmt: skip
        assert done.returncode != 0, done.stdout + done.stderr
        assert SECRET_ENV not in done.stdout + done.stderr, done.stdout + done.stderr


def test_an_endpoint_url_with_a_password_is_refused_at_load_without_printing_it(
    tmp_path: Path,
) -> None:
    """A base_url with user:password@ was accepted, and every request to it failed with
    "upstream URL 'http://user:PASSWORD@…' has credentials in it" in the client's 502, the
    log and /readyz, which anyone may read. The config is refused at load instead, naming the
    key and not the password."""
    import subprocess
    import sys

    import yaml

    from harness import example_config

    password = "UrLPassW0rd-7f3a9c2e1b"
    raw = example_config()
    raw["endpoints"][0]["base_url"] = f"http://user:{password}@127.0.0.1:9101/v1"
    config = tmp_path / "sekisho.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "sekisho", "config", "check", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "endpoints[0](sim-domestic-tokyo).base_url" in out and "api_key" in out, out
    assert password not in out, out
