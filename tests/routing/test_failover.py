"""Retries and failover: on connect errors, 5xx, 429, timeouts and garbage, before the first
byte reaches the client, and only among the endpoints serving the model."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from harness import (
    Harness,
    ledger_entries,
    ledger_incomplete,
    metric_sample,
    receipt,
    request,
    start_example,
)


def only_global(raw: dict[str, Any]) -> None:
    """Serve gpt-4o from the two global endpoints only, with tight timeouts."""
    for ep in raw["endpoints"]:
        ep["timeouts"] = {"connect": 1, "first_byte": 1, "total": 5}
    raw["endpoints"][0]["models"][0]["aliases"] = ["chat-default"]


@pytest.fixture
def two(tmp_path: Path) -> Any:
    h = start_example(tmp_path, only_global)
    yield h
    h.stop()


def chat(h: Harness, key: str, stream: bool = False) -> Any:
    c = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0)
    return c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "failover"}], stream=stream
    )


@pytest.mark.parametrize(
    "fault",
    [
        {"mode": "status", "status": 500},
        {"mode": "status", "status": 503},
        {"mode": "status", "status": 429, "retry_after": "2"},
        {"mode": "hang"},
        {"mode": "garbage"},
        {"mode": "gzip"},
        {"mode": "wrong_type"},
        {"mode": "close"},
    ],
)
def test_failing_endpoint_fails_over_to_the_other(two: Harness, fault: dict[str, Any]) -> None:
    key = two.key()
    for ep in ("sim-global-japaneast", "sim-global-useast"):
        two.fault(ep, **fault)
        other = "sim-global-useast" if ep == "sim-global-japaneast" else "sim-global-japaneast"
        for _ in range(4):
            raw = chat(two, key)
            assert raw.headers["x-sekisho-endpoint"] == other
        two.fault(ep, mode="none")
        two.gateway.health.success(ep)  # type: ignore[union-attr]


def test_a_failed_endpoint_is_marked_down_and_skipped(two: Harness) -> None:
    key = two.key()
    two.fault("sim-global-japaneast", mode="status", status=500)
    # The two share a tier (neither is a domestic operator): the weighted choice reaches the
    # failing one within a few requests, and its failure marks it down.
    for _ in range(30):
        chat(two, key)
        if two.sims["sim-global-japaneast"].stats.requests:
            break
    before = two.sims["sim-global-japaneast"].stats.requests
    assert before >= 1
    for _ in range(5):
        assert chat(two, key).headers["x-sekisho-endpoint"] == "sim-global-useast"
    assert two.sims["sim-global-japaneast"].stats.requests == before  # in backoff: not tried


@pytest.mark.parametrize("status", [401, 403, 407])
def test_a_refusal_of_sekishos_own_credentials_fails_over_and_never_reaches_the_client(
    two: Harness, status: int
) -> None:
    """407 comes from an endpoint's egress proxy (a plain-http endpoint's proxy answers in its
    place): it reached clients as their own 407, nine in twenty, though another endpoint was
    up, and the endpoint was never marked down."""
    key = two.key()
    two.fault("sim-global-japaneast", mode="status", status=status)
    # The two share a tier: the weighted choice reaches the refusing one within a few requests.
    for _ in range(30):
        assert chat(two, key).headers["x-sekisho-endpoint"] == "sim-global-useast"
        if two.sims["sim-global-japaneast"].stats.requests:
            break
    assert two.sims["sim-global-japaneast"].stats.requests >= 1
    assert not two.gateway.health.is_up("sim-global-japaneast")  # type: ignore[union-attr]


def test_client_error_from_upstream_is_not_retried(two: Harness) -> None:
    key = two.key()
    two.fault("sim-global-japaneast", mode="status", status=400)
    two.fault("sim-global-useast", mode="status", status=400)
    with pytest.raises(openai.BadRequestError) as e:
        chat(two, key)
    assert "rejected" in e.value.message
    total = two.sims["sim-global-japaneast"].stats.chat + two.sims["sim-global-useast"].stats.chat
    assert total == 0 or total == 1


def test_all_endpoints_down_is_502_naming_what_was_tried(two: Harness) -> None:
    key = two.key()
    two.fault("sim-global-japaneast", mode="status", status=500)
    two.fault("sim-global-useast", mode="status", status=502)
    with pytest.raises(openai.InternalServerError) as e:
        chat(two, key)
    assert e.value.status_code == 502
    assert "sim-global-japaneast" in e.value.message and "sim-global-useast" in e.value.message
    # The decision was made and recorded before anything was sent: the error carries its
    # headers (receipt, classification, policy digest) as an answer would.
    headers = e.value.response.headers
    assert headers["x-sekisho-classification"] == "internal"
    assert headers["x-sekisho-policy-digest"].startswith("sha256:")
    got = receipt(two, headers["x-request-id"], key).json()
    assert headers["x-sekisho-receipt"].split()[0] == str(got["index"])
    decision, outcome = ledger_entries(got)
    assert decision["classification"] == "internal"
    assert outcome is not None and outcome["status"] == 502


def test_metrics_say_when_no_endpoint_serving_a_model_is_up(two: Harness) -> None:
    """The series an alert on a model nobody can answer reads: per name clients ask for."""

    def up(model: str) -> float | None:
        return metric_sample(two.root, "sekisho_model_endpoints_up", model=model)

    assert (up("gpt-4o"), up("gpt-4.1"), up("chat-default")) == (2, 1, 1)
    two.fault("sim-global-japaneast", mode="status", status=500)
    two.fault("sim-global-useast", mode="status", status=502)
    with pytest.raises(openai.InternalServerError):
        chat(two, two.key())
    # Both global endpoints are down: gpt-4o and gpt-4.1 (served in the US only) have none
    # left; the domestic endpoint still answers to its alias.
    assert (up("gpt-4o"), up("gpt-4.1"), up("chat-default")) == (0, 0, 1)
    assert up("llama-3.1-swallow-70b") == 1


def test_all_endpoints_slow_is_504_and_the_sdk_does_not_start_it_again(two: Harness) -> None:
    """The gateway already waited for (and failed over among) the endpoints: the 504 says
    ``x-should-retry: false``, so the SDK's default two retries do not start every
    generation again."""
    two.fault("sim-global-japaneast", mode="hang")
    two.fault("sim-global-useast", mode="hang")
    sent: list[str] = []
    http = openai.DefaultHttpxClient(event_hooks={"request": [lambda r: sent.append("x")]})
    c = openai.OpenAI(base_url=two.base_url, api_key=two.key(), http_client=http)
    with pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 504 and e.value.code == "upstream_timeout"
    assert e.value.response.headers["x-should-retry"] == "false"
    assert "first-byte timeout" in e.value.message and "timeouts.first_byte" in e.value.message
    assert "stream it" in e.value.message  # a whole answer: streaming would help
    assert len(sent) == 1
    assert sum(s.stats.requests for s in two.sims.values()) == 2  # one try per endpoint
    with pytest.raises(openai.InternalServerError) as streamed:
        c.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert streamed.value.status_code == 504
    assert "stream it" not in streamed.value.message  # it was streamed: no such advice
    assert "did not begin its answer in time" in streamed.value.message


def test_stream_that_dies_before_its_first_event_fails_over(two: Harness) -> None:
    key = two.key()
    two.fault("sim-global-japaneast", mode="close")
    for _ in range(3):
        raw = chat(two, key, stream=True)
        assert raw.headers["x-sekisho-endpoint"] == "sim-global-useast"
        assert "failover" in "".join(
            c.choices[0].delta.content or "" for c in raw.parse() if c.choices
        )


def test_stream_that_breaks_midway_ends_with_an_error_event(two: Harness) -> None:
    key = two.key()
    two.fault("sim-global-japaneast", mode="drop_midstream")
    two.fault("sim-global-useast", mode="drop_midstream")
    c = openai.OpenAI(base_url=two.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.APIError) as e:
        for _ in c.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "one two three four five"}],
            stream=True,
        ):
            pass
    assert "broke" in str(e.value)
    # Counted as it ended (502, as the ledger says), not as the 200 it began with.
    scraped = request("GET", two.root + "/metrics").text
    broke = [
        line for line in scraped.splitlines()
        if line.startswith("sekisho_requests_total{") and 'status="502"' in line
    ]  # fmt: skip
    assert broke and float(broke[0].rsplit(" ", 1)[1]) >= 1


def test_client_disconnect_cancels_the_upstream_request(
    two: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import time

    caplog.set_level(logging.INFO, logger="sekisho.app")
    key = two.key()
    two.fault("sim-global-japaneast", mode="hang")
    two.fault("sim-global-useast", mode="hang")
    s = raw_post(two, key, "bye")
    deadline = time.time() + 5
    while two.gateway.in_flight == 0 and time.time() < deadline:  # type: ignore[union-attr]
        time.sleep(0.01)
    assert two.gateway.in_flight == 1  # type: ignore[union-attr]
    s.close()
    deadline = time.time() + 5
    while two.gateway.in_flight and time.time() < deadline:  # type: ignore[union-attr]
        time.sleep(0.01)
    assert two.gateway.in_flight == 0  # type: ignore[union-attr]
    states = two.gateway.health.snapshot()  # type: ignore[union-attr]
    assert all(s["in_flight"] == 0 for s in states.values())
    # The decision has its outcome: a client that left is not a request a crash cut short.
    assert ledger_incomplete(two) == []
    # The log line says who left, as every request's does (chargeback from the log alone).
    (left,) = [r for r in caplog.records if getattr(r, "status", None) == 499]
    assert left.msg == "request" and left.error == "client_disconnected"  # type: ignore[attr-defined]
    assert left.tenant == "demo" and left.key_id == key.split("-")[2]  # type: ignore[attr-defined]
    # ... and where the prompt went: it reached an endpoint before the client left.
    assert left.endpoint in ("sim-global-japaneast", "sim-global-useast")  # type: ignore[attr-defined]
    scraped = request("GET", two.root + "/metrics").text
    (counted,) = [
        line for line in scraped.splitlines()
        if line.startswith("sekisho_requests_total{") and 'status="499"' in line
    ]  # fmt: skip
    assert f'endpoint="{left.endpoint}"' in counted and 'jurisdiction="-"' not in counted  # type: ignore[attr-defined]


def raw_post(h: Harness, key: str, content: str) -> Any:
    import socket

    body = b'{"model":"gpt-4o","messages":[{"role":"user","content":"' + content.encode() + b'"}]}'
    s = socket.create_connection(("127.0.0.1", h.port))
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
        + key.encode()
        + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    return s


def test_a_client_that_leaves_while_its_decision_is_made_durable_still_gets_an_outcome(
    two: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision entry is written whatever the client does; its outcome (499) must be too,
    or `ledger audit` counts the request with those a crash cut short."""
    from sekisho.ledger.storage import SQLiteStorage

    key = two.key()
    two.gateway.health.success("sim-global-japaneast")  # type: ignore[union-attr]
    sequence = SQLiteStorage.sequence
    slow = {"on": True}

    def slowly(self: Any, batch: Any) -> int:
        if slow["on"]:
            time.sleep(0.3)  # a slow disk: the decision is not yet durable
        return sequence(self, batch)

    monkeypatch.setattr(SQLiteStorage, "sequence", slowly)
    socks = [raw_post(two, key, f"leaving {i}") for i in range(3)]
    deadline = time.time() + 5
    while two.gateway.in_flight < 3 and time.time() < deadline:  # type: ignore[union-attr]
        time.sleep(0.005)
    for s in socks:
        s.close()  # gone while the decision is being committed
    while two.gateway.in_flight and time.time() < deadline:  # type: ignore[union-attr]
        time.sleep(0.01)
    slow["on"] = False
    assert two.gateway.in_flight == 0  # type: ignore[union-attr]
    assert not any(sim.stats.requests for sim in two.sims.values())  # nothing was sent
    time.sleep(0.5)  # the outcome entries' commit
    assert ledger_incomplete(two) == []


def test_no_connection_in_time_is_a_504_the_sdk_may_retry(tmp_path: Path) -> None:
    """A connect timeout sent nothing anywhere: unlike a first-byte timeout, a retry starts
    no second generation, so the 504 does not say x-should-retry: false, and it names the
    connect timeout, not first_byte (an audit found it did)."""
    import socket

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)  # its accept queue fills at once: later connects are never answered
    fillers = []
    for _ in range(4):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(hole.getsockname())
        fillers.append(f)

    def black_hole(raw: dict[str, Any]) -> None:
        import copy

        ep = copy.deepcopy(raw["endpoints"][1])
        ep.update(id="black-hole", base_url=f"http://127.0.0.1:{hole.getsockname()[1]}/v1")
        ep["models"] = [{"id": "hole-model"}]
        ep["timeouts"] = {"connect": 0.3, "first_byte": 5, "total": 10}
        raw["endpoints"].append(ep)

    h = start_example(tmp_path, black_hole)
    try:
        sent: list[str] = []
        hook = {"request": [lambda r: sent.append("x")]}
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=1,
                          http_client=openai.DefaultHttpxClient(event_hooks=hook))  # fmt: skip
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(
                model="hole-model", messages=[{"role": "user", "content": "x"}]
            )
        assert e.value.status_code == 504 and e.value.code == "upstream_connect_timeout"
        assert "Nothing was sent" in e.value.message and "connect timeout" in e.value.message
        assert "x-should-retry" not in e.value.response.headers
        assert len(sent) == 2  # the SDK tried again
    finally:
        h.stop()
        for f in fillers:
            f.close()
        hole.close()


def test_an_endpoints_own_4xx_names_the_endpoint_it_came_from(two: Harness) -> None:
    """The prompt reached that endpoint: headers, the log's and metrics' labels and the
    ledger's outcome say which (the audit saw endpoint "-")."""
    two.fault("sim-global-japaneast", mode="status", status=400)
    two.fault("sim-global-useast", mode="status", status=400)
    with pytest.raises(openai.BadRequestError) as e:
        chat(two, two.key())
    headers = e.value.response.headers
    assert headers["x-sekisho-endpoint"] in ("sim-global-japaneast", "sim-global-useast")
    assert headers["x-sekisho-jurisdiction"] in ("JP/japaneast", "US/us-east")
    metrics = request("GET", two.root + "/metrics").text
    rows = [x for x in metrics.splitlines()
            if x.startswith("sekisho_requests_total{") and 'status="400"' in x]  # fmt: skip
    assert rows and all(f'endpoint="{headers["x-sekisho-endpoint"]}"' in x for x in rows), rows
    assert ledger_incomplete(two) == []


def test_a_wait_longer_than_the_sdks_wait_out_is_not_retried_automatically(
    two: Harness,
) -> None:
    """A provider asking for minutes (a quota's Retry-After: 600) is passed on as it is, with
    x-should-retry: false: the Node SDK sleeps for any Retry-After, however long, twice, and
    an application hung for 20 minutes on one request; the Python SDK gives up past 120 s. A
    short wait is still the SDKs' to retry."""
    key = two.key()
    auth = {"authorization": f"Bearer {key}"}
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "wait"}]}
    for ep in ("sim-global-japaneast", "sim-global-useast"):
        two.fault(ep, mode="status", status=429, retry_after="600", count=1)
    for _ in range(2):  # asked of the endpoints, then of what they asked (nothing sent)
        r = request("POST", two.base_url + "/chat/completions", json_body=body, headers=auth)
        assert r.status_code == 429 and r.json()["error"]["code"] == "upstream_rate_limited"
        assert 590 <= int(r.headers["retry-after"]) <= 600
        assert r.headers.get("x-should-retry") == "false"

    for ep in ("sim-global-japaneast", "sim-global-useast"):
        two.gateway.health.success(ep)  # type: ignore[union-attr]
        two.fault(ep, mode="status", status=429, retry_after="3", count=1)
    r = request("POST", two.base_url + "/chat/completions", json_body=body, headers=auth)
    assert (r.status_code, r.headers["retry-after"]) == (429, "3")
    assert "x-should-retry" not in r.headers


def test_every_endpoint_rate_limited_is_a_429_with_the_soonest_retry_after(two: Harness) -> None:
    """A provider's quota exhausted everywhere is a 429 the SDK backs off on (RateLimitError),
    waiting as long as the soonest endpoint asked, not a 502."""
    key = two.key()
    two.fault("sim-global-japaneast", mode="status", status=429, retry_after="7")
    two.fault("sim-global-useast", mode="status", status=429, retry_after="3")
    with pytest.raises(openai.RateLimitError) as e:
        chat(two, key)
    assert e.value.response.headers["retry-after"] == "3"
    body = e.value.body
    assert isinstance(body, dict) and body["code"] == "upstream_rate_limited"
    assert "sim-global-japaneast" in body["message"] and "sim-global-useast" in body["message"]
    # Inside the windows they asked for, nothing is sent to them: the client hears it at once.
    sent = sum(s.stats.requests for s in two.sims.values())
    with pytest.raises(openai.RateLimitError) as again:
        chat(two, key)
    assert int(again.value.response.headers["retry-after"]) <= 3
    assert "Nothing was sent" in again.value.message
    assert sum(s.stats.requests for s in two.sims.values()) == sent
    # One of them failing otherwise: not everyone is rate-limiting, so it stays a 502.
    for ep in ("sim-global-japaneast", "sim-global-useast"):
        two.gateway.health.success(ep)  # type: ignore[union-attr]
    two.fault("sim-global-useast", mode="status", status=500)
    with pytest.raises(openai.InternalServerError) as e2:
        chat(two, key)
    assert e2.value.status_code == 502


def capped(cap: int, connect: float) -> Any:
    def mutate(raw: dict[str, Any]) -> None:
        only_global(raw)
        for ep in raw["endpoints"]:
            ep["max_concurrency"] = cap
            ep["timeouts"].update(connect=connect, first_byte=5)

    return mutate


def test_max_concurrency_is_a_cap_requests_wait_for_a_slot_in_turn(tmp_path: Path) -> None:
    """With every endpoint at its limit, further requests wait for a slot instead of going
    over it; each endpoint never has more than its cap in flight, and all are answered."""
    h = start_example(tmp_path, capped(1, 5.0), delay_ms=150)
    try:
        key = h.key()
        with ThreadPoolExecutor(8) as pool:
            raws = list(pool.map(lambda _: chat(h, key), range(8)))
        assert all(r.http_response.status_code == 200 for r in raws)
        used = {r.headers["x-sekisho-endpoint"] for r in raws}
        assert used == {"sim-global-japaneast", "sim-global-useast"}
        for ep in used:
            assert h.sims[ep].stats.max_in_flight == 1
        states = h.gateway.health.snapshot()  # type: ignore[union-attr]
        assert all(s["in_flight"] == 0 and s["waiting"] == 0 for s in states.values())
    finally:
        h.stop()


def test_no_free_slot_within_the_connect_timeout_is_a_429_and_nothing_is_sent(
    tmp_path: Path,
) -> None:
    h = start_example(tmp_path, capped(1, 0.2), delay_ms=3000, chunk_delay_ms=0)
    try:
        key = h.key()
        with ThreadPoolExecutor(2) as pool:  # one slow request holds each endpoint's slot
            holding = [pool.submit(chat, h, key) for _ in range(2)]
            time.sleep(0.5)
            sent_before = sum(s.stats.requests for s in h.sims.values())
            started = time.monotonic()
            with pytest.raises(openai.RateLimitError) as e:
                chat(h, key)
            waited = time.monotonic() - started
            assert all(f.result().http_response.status_code == 200 for f in holding)
        assert 0.3 < waited < 2.5  # 0.2 s per endpoint, then the answer: not the 3 s request
        assert e.value.response.headers["retry-after"] == "1"
        body = e.value.body
        assert isinstance(body, dict) and body["code"] == "endpoints_busy"
        assert "sim-global-japaneast (all 1 slots busy for 0.2 s)" in body["message"]
        assert sum(s.stats.requests for s in h.sims.values()) == sent_before
        # Busy is not broken: both endpoints stay up and serve the next request at once.
        states = h.gateway.health.snapshot()  # type: ignore[union-attr]
        assert all(s["up"] and s["consecutive_failures"] == 0 for s in states.values())
        assert chat(h, key).http_response.status_code == 200
    finally:
        h.stop()


def _gauge(text: str, name: str, endpoint: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'endpoint="{endpoint}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_show_each_endpoints_concurrency_against_its_cap(tmp_path: Path) -> None:
    """While two requests hold the slot of a max_concurrency 1 endpoint (one in flight, one
    waiting), a scrape shows that; afterwards both gauges are back to 0."""
    h = start_example(tmp_path, capped(1, 8.0), delay_ms=1500)
    try:
        key = h.key()
        with ThreadPoolExecutor(4) as pool:
            calls = [pool.submit(chat, h, key) for _ in range(4)]  # 2 endpoints, 1 slot each
            time.sleep(0.5)  # all four in: two at the endpoints, two waiting (for 1.5 s)
            text = request("GET", f"{h.root}/metrics").text
            assert all(c.result().http_response.status_code == 200 for c in calls)
        endpoints = ("sim-global-japaneast", "sim-global-useast")
        in_flight = [_gauge(text, "sekisho_endpoint_in_flight", ep) for ep in endpoints]
        waiting = [_gauge(text, "sekisho_endpoint_waiting", ep) for ep in endpoints]
        assert in_flight == [1.0, 1.0], text
        assert sum(w or 0 for w in waiting) == 2, text
        caps = [_gauge(text, "sekisho_endpoint_max_concurrency", ep) for ep in endpoints]
        assert caps == [1.0, 1.0]
        after = request("GET", f"{h.root}/metrics").text
        assert [_gauge(after, "sekisho_endpoint_in_flight", ep) for ep in endpoints] == [0, 0]
        assert [_gauge(after, "sekisho_endpoint_waiting", ep) for ep in endpoints] == [0, 0]
    finally:
        h.stop()
