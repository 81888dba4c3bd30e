"""`sekisho endpoints check`: the catalogue against real endpoints on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness import endpoints_check, free_port, start_example


def check(tmp_path: Path, raw: dict[str, Any], *args: str) -> tuple[int, list[dict[str, Any]]]:
    done = endpoints_check(tmp_path, raw, "--json", *args)
    assert not done.stderr.strip() or done.returncode == 2, done.stderr
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else []


def test_every_endpoint_reached_authenticated_and_serving_its_models_is_ok(
    tmp_path: Path,
) -> None:
    h = start_example(tmp_path / "gw")
    try:
        rc, reports = check(tmp_path, h.raw, "--chat")
        assert rc == 0, reports
        assert {r["endpoint"] for r in reports} == {
            "sim-domestic-tokyo", "sim-global-japaneast", "sim-global-useast",
        }  # fmt: skip
        for r in reports:
            assert r["ok"] and r["reached"].startswith("HTTP 200")
            assert r["models"].startswith("all ")
            assert r["requests"] and all(": ok in " in line for line in r["requests"])
        # --chat sent each model one "ping", nothing else.
        bodies = [json.loads(b) for s in h.sims.values() for b in s.stats.bodies if b]
        assert bodies and all(
            b.get("messages") == [{"role": "user", "content": "ping"}]
            or b.get("input") == "ping"
            or b.get("prompt") == "ping"
            for b in bodies
        )
        # The APIs an endpoint declares beside chat were each proved with a ping of their own.
        tokyo = next(r for r in reports if r["endpoint"] == "sim-domestic-tokyo")
        assert any("(responses API" in line and ": ok in " in line for line in tokyo["requests"])
        assert any("(completions API" in line for line in tokyo["requests"])
        assert h.sims["sim-domestic-tokyo"].stats.responses == 1
        assert h.sims["sim-domestic-tokyo"].stats.completions == 1
    finally:
        h.stop()


def test_what_does_not_match_the_catalogue_is_named_and_fails_the_check(tmp_path: Path) -> None:
    h = start_example(tmp_path / "gw")
    try:
        raw = h.raw
        h.sims["sim-domestic-tokyo"].spec.require_key = "another key"  # sekisho's is wrong
        raw["endpoints"][1]["models"].append({"id": "gpt-5-preview"})  # not served there
        raw["endpoints"][2]["base_url"] = f"http://127.0.0.1:{free_port()}/v1"  # nobody there
        rc, reports = check(tmp_path, raw)
        assert rc == 1
        by_id = {r["endpoint"]: r for r in reports}
        tokyo = by_id["sim-domestic-tokyo"]
        assert not tokyo["ok"] and "refused (HTTP 401)" in tokyo["auth"]
        assert "refused sekisho's credentials" in tokyo["problems"][0]
        japan = by_id["sim-global-japaneast"]
        assert not japan["ok"] and "missing gpt-5-preview" in japan["models"]
        us = by_id["sim-global-useast"]
        assert not us["ok"] and us["reached"] == "no" and "cannot reach" in us["problems"][0]

        rc, reports = check(tmp_path, raw, "--endpoint", "sim-global-japaneast")
        assert rc == 1 and [r["endpoint"] for r in reports] == ["sim-global-japaneast"]
        rc, _ = check(tmp_path, raw, "--endpoint", "no-such-endpoint")
        assert rc == 2
    finally:
        h.stop()


def test_an_api_declared_but_not_served_fails_the_check(tmp_path: Path) -> None:
    h = start_example(tmp_path / "gw")
    try:
        h.sims["sim-domestic-tokyo"].spec.serves_responses = False  # an older vLLM, say
        rc, reports = check(tmp_path, h.raw, "--chat", "--endpoint", "sim-domestic-tokyo")
        assert rc == 1
        (tokyo,) = reports
        assert not tokyo["ok"]
        assert any(
            "(responses API, declared by responses_api: true)" in p and "404" in p
            for p in tokyo["problems"]
        ), tokyo["problems"]
    finally:
        h.stop()


async def test_a_ping_refused_says_why_and_a_reasoning_model_is_asked_its_own_way() -> None:
    """A refused ping read "HTTP 400" with none of the endpoint's words; and reasoning models
    (o-series, gpt-5) refuse max_tokens, naming max_completion_tokens: such a healthy
    deployment read as failed."""
    import orjson

    from sekisho.providers.base import UpstreamStatusError
    from sekisho.routing.catalogue import Endpoint
    from sekisho.routing.check import EndpointReport, _ping

    ep = Endpoint.model_validate(
        {
            "id": "o-series", "family": "openai", "base_url": "http://127.0.0.1:9/v1",
            "models": [{"id": "o4-mini"}],
            "jurisdiction": {"country": "JP", "region": "tokyo"},
            "operator": {"name": "Op", "country": "JP"},
            "data_terms": {"retention_days": 0, "trains_on_data": False},
        }
    )  # fmt: skip

    class Answer:
        async def read(self) -> bytes:
            return b'{"choices": []}'

        def close(self) -> None:
            pass

    class Transport:
        def __init__(self, refusal: str, times: int) -> None:
            self.bodies: list[dict[str, Any]] = []
            self.refusal, self.times = refusal, times

        def credentials(self, ep: Any) -> tuple[str, ...]:
            return ()

        async def open(self, route: Any, kind: str, body: dict[str, Any], stream: bool) -> Any:
            self.bodies.append(body)
            if len(self.bodies) <= self.times:
                raw = orjson.dumps({"error": {"message": self.refusal}})
                raise UpstreamStatusError("o-series", 400, raw, None)
            return Answer()

    from sekisho.routing.catalogue import Route

    route = Route(ep, ep.models[0])
    said = "Unsupported parameter: 'max_tokens'. Use 'max_completion_tokens' instead."
    reasoning = Transport(said, 1)
    report = EndpointReport("o-series", "JP/tokyo")
    line = await _ping(ep, reasoning, route, report)  # type: ignore[arg-type]
    assert ": ok in " in line and not report.problems
    assert "max_tokens" not in reasoning.bodies[-1]
    assert reasoning.bodies[-1]["max_completion_tokens"]
    refused = Transport("model is overloaded today", 9)
    report = EndpointReport("o-series", "JP/tokyo")
    assert (await _ping(ep, refused, route, report)).endswith("failed")  # type: ignore[arg-type]
    assert report.problems == ["o4-mini: HTTP 400: model is overloaded today"]


def test_a_key_read_from_a_file_is_reported_as_such(tmp_path: Path) -> None:
    """It said 'none configured' for an endpoint whose key comes from api_key_file."""
    h = start_example(tmp_path / "gw")
    try:
        raw = json.loads(json.dumps(h.raw))
        ep = raw["endpoints"][0]
        key_file = tmp_path / "upstream.key"
        key_file.write_text(ep.pop("api_key") + "\n", encoding="utf-8")
        key_file.chmod(0o600)
        ep["api_key_file"] = str(key_file)
        rc, reports = check(tmp_path, raw)
        assert rc == 0, reports
        first = next(r for r in reports if r["endpoint"] == ep["id"])
        assert first["auth"] == f"api key from {key_file}"
    finally:
        h.stop()


def test_an_endpoint_echoing_sekishos_key_in_its_refusal_is_reported_without_it(
    tmp_path: Path,
) -> None:
    """`endpoints check` runs in deploy pipelines, whose logs many read: a refused ping is
    reported in the endpoint's words, with sekisho's key for it (and its secret headers)
    masked, as a client's error is."""
    key, header = "upstream-credential-7f3a9c2e1b5d", "tenant-secret-4d8e6f1a0c2b"

    def credentials(raw: dict[str, Any]) -> None:
        raw["endpoints"][0]["api_key"] = key
        raw["endpoints"][0]["headers"] = {"x-upstream-secret": header}

    h = start_example(tmp_path / "gw", credentials)
    try:
        said = f"invalid key {key} (x-upstream-secret: {header})"
        error = json.dumps({"error": {"message": said}})
        h.fault("sim-domestic-tokyo", mode="status", status=400, body=error)
        done = endpoints_check(tmp_path, h.raw, "--chat", "--endpoint", "sim-domestic-tokyo")
        out = done.stdout + done.stderr
        assert "invalid key [SECRET]" in out, out  # the endpoint's words, masked
        assert key not in out and header not in out, out
    finally:
        h.stop()
