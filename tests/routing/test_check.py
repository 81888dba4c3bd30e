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
