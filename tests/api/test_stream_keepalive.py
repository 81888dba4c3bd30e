"""server.stream_keepalive_seconds: a stream whose endpoint is slow to send its first event (a
reasoning model thinking) starts at once and is kept alive with SSE comments, so idle timers
between client and gateway (AWS ALB, nginx: 60 s) do not cut it."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import Harness, ledger_entries, ledger_incomplete, receipt, request, start_example

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "think first"}], "stream": True}


def keepalive(seconds: float) -> Any:
    def mutate(raw: dict[str, Any]) -> None:
        raw["server"]["stream_keepalive_seconds"] = seconds
        for ep in raw["endpoints"]:
            ep["timeouts"] = {"connect": 2, "first_byte": 5, "total": 10}

    return mutate


def raw_stream(h: Harness, key: str) -> tuple[dict[str, str], list[tuple[float, str]]]:
    """Response headers, and each line of the body with the time it arrived."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=15)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps(BODY),
            headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        )
        resp = conn.getresponse()
        assert resp.status == 200
        lines: list[tuple[float, str]] = []
        while line := resp.readline():
            lines.append((time.monotonic() - started, line.decode().rstrip("\r\n")))
        return {k.lower(): v for k, v in resp.getheaders()}, [x for x in lines if x[1]]
    finally:
        conn.close()


def first_token_timings(h: Harness) -> dict[str, float]:
    """sekisho_time_to_first_token_seconds' count of streams, by endpoint label."""
    text = request("GET", f"{h.root}/metrics").text
    return {
        s.labels["endpoint"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "sekisho_time_to_first_token_seconds_count"
    }


def sdk_text(h: Harness, key: str) -> str:
    """The streamed answer as the OpenAI SDK reads it (SSE comments ignored)."""
    c = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0)
    chunks = c.chat.completions.create(**BODY)
    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)


def test_a_slow_first_event_is_preceded_by_keep_alive_comments(tmp_path: Path) -> None:
    h = start_example(tmp_path, keepalive(0.2), delay_ms=1200)
    try:
        key = h.key()
        headers, lines = raw_stream(h, key)
        comments = [(t, line) for t, line in lines if line.startswith(":")]
        pings = [t for t, line in comments if line == ": keep-alive"]
        first_data = next(t for t, line in lines if line.startswith("data:"))
        assert len(pings) >= 3 and pings[0] < first_data - 0.4  # started long before the answer
        assert first_data > 1.0
        assert headers["x-sekisho-keepalive"] == "on"
        assert headers["x-sekisho-classification"]  # the decision was known; the route was not
        assert "x-sekisho-endpoint" not in headers
        # Where the answer came from arrives as comments, before its first event.
        endpoint = next(line for _, line in comments if line.startswith(": x-sekisho-endpoint:"))
        assert endpoint.split(": ")[-1] in h.sims
        assert lines[-1][1] == "data: [DONE]"

        # The OpenAI SDK ignores the comments and reads the answer as usual.
        assert "SIMULATOR" in sdk_text(h, key)
        # Its time to first token is its endpoint's, as for any stream.
        timings = first_token_timings(h)
        assert timings.get(endpoint.split(": ")[-1], 0) >= 1 and "-" not in timings
    finally:
        h.stop()


def test_a_fast_first_event_keeps_every_header(tmp_path: Path) -> None:
    h = start_example(tmp_path, keepalive(2.0))
    try:
        headers, lines = raw_stream(h, h.key())
        assert "x-sekisho-keepalive" not in headers
        assert headers["x-sekisho-endpoint"] in h.sims
        assert not any(line.startswith(":") for _, line in lines)
    finally:
        h.stop()


def test_a_failure_after_the_stream_started_is_an_error_event_and_recorded(
    tmp_path: Path,
) -> None:
    h = start_example(tmp_path, keepalive(0.2))
    try:
        for eid in h.sims:
            h.fault(eid, mode="status", status=503, delay_ms=700)
        key = h.key()
        c = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0)
        with pytest.raises(openai.APIError) as err:
            for _ in c.chat.completions.create(**BODY):
                pass
        assert "Every eligible endpoint failed" in str(err.value)
        # The SDK's stream helper raises the same error, with its code.
        helper = c.chat.completions.stream(
            model="gpt-4o", messages=[{"role": "user", "content": "think first"}]
        )
        with pytest.raises(openai.APIError) as err, helper as events:
            for _ in events:
                pass
        assert err.value.code == "upstream_failed"
        headers, lines = raw_stream(h, key)
        assert any(line == ": keep-alive" for _, line in lines)
        assert not any(line == "data: [DONE]" for _, line in lines)
        error = next(line for _, line in lines if line.startswith("data:"))
        assert '"code":"upstream_failed"' in error
        # The ledger holds the request's outcome: 502, whatever the 200 on the wire said.
        _, outcome = ledger_entries(receipt(h, headers["x-sekisho-request-id"], key).json())
        assert outcome is not None and outcome["status"] == 502
        assert first_token_timings(h) == {}  # an error, not a first token: nothing timed
    finally:
        h.stop()


def test_a_client_leaving_while_the_endpoint_thinks_cancels_the_upstream_request(
    tmp_path: Path,
) -> None:
    import socket

    h = start_example(tmp_path, keepalive(0.2), delay_ms=3000)
    try:
        key = h.key()
        body = json.dumps(BODY).encode()
        s = socket.create_connection(("127.0.0.1", h.port))
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {key}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        got = b""
        while b": keep-alive" not in got:
            got += s.recv(4096)
        s.close()  # gone while the endpoint is still thinking
        deadline = time.monotonic() + 3
        gw: Any = h.gateway
        while time.monotonic() < deadline and (
            gw.in_flight or any(st["in_flight"] for st in gw.health.snapshot().values())
        ):
            time.sleep(0.02)
        assert gw.in_flight == 0
        assert all(st["in_flight"] == 0 for st in gw.health.snapshot().values())
        assert sum(sim.stats.closed for sim in h.sims.values()) >= 1  # upstream request dropped
        assert ledger_incomplete(h) == []  # its decision has an outcome (499)
    finally:
        h.stop()


def test_a_pause_in_the_middle_of_a_stream_is_kept_alive_too(tmp_path: Path) -> None:
    """A model that stops for a while between two pieces of its answer: the silence is filled
    with the same comments, and every piece still arrives, in order."""
    h = start_example(tmp_path, keepalive(0.2), chunk_delay_ms=300)
    try:
        key = h.key()
        headers, lines = raw_stream(h, key)
        assert "x-sekisho-endpoint" in headers  # the first event came in time: all headers
        data = [i for i, (_, line) in enumerate(lines) if line.startswith("data:")]
        pings = [i for i, (_, line) in enumerate(lines) if line == ": keep-alive"]
        assert pings and data[0] < pings[0] < data[-1]  # between events, not only before
        assert lines[-1][1] == "data: [DONE]"
        assert "SIMULATOR" in sdk_text(h, key)
    finally:
        h.stop()


def test_a_responses_stream_failing_before_its_first_event_tells_the_sdk_helper_why(
    tmp_path: Path,
) -> None:
    """Every endpoint fails after the 200 went out: the stream is a response that failed, as
    OpenAI streams one: response.created (in_progress), then response.failed carrying the
    error. The SDK's stream helper builds every event onto response.created; a stream that
    began with an error event made it raise about that missing event, hiding the real error.
    The response is kept as failed, and the ledger records 502."""
    h = start_example(tmp_path, keepalive(0.2))
    try:
        for eid in h.sims:
            h.fault(eid, mode="status", status=503, delay_ms=700)
        key = h.key()
        c = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0)
        with c.responses.stream(model="gpt-4o", input="think first") as stream:
            events = list(stream)
            with pytest.raises(RuntimeError, match=r"`response\.completed`"):
                stream.get_final_response()  # as for any failed response
        assert [e.type for e in events] == ["response.created", "response.failed"]
        created, failed = events
        assert created.response.status == "in_progress"  # type: ignore[union-attr]
        assert [e.sequence_number for e in events] == [0, 1]
        response = failed.response  # type: ignore[union-attr]
        assert response.id == created.response.id  # type: ignore[union-attr]
        assert response.id.startswith("resp_sk") and response.status == "failed"
        assert response.error is not None and response.error.code == "upstream_failed"
        assert response.error.message.startswith("Every eligible endpoint failed (tried: ")
        assert response.output == [] and response.model == "gpt-4o"

        # Kept as what it was: a failed response, never a completed one.
        kept = c.responses.retrieve(response.id)
        assert kept.status == "failed" and kept.error is not None and kept.output == []
        request_id = "req_" + response.id.removeprefix("resp_sk")
        _, outcome = ledger_entries(receipt(h, request_id, key).json())
        assert outcome is not None and outcome["status"] == 502
        assert outcome["error_code"] == "upstream_failed"
        assert ledger_incomplete(h) == []
    finally:
        h.stop()
