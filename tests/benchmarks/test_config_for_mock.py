"""benchmarks/config_for_mock.sh: the config that puts sekisho in front of any mock upstream."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sekisho.config import Config, parse_config
from sekisho.types import Action, Level

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "config_for_mock.sh"
MOCK_URL = "http://127.0.0.1:18000/v1"


def _generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=10, check=False
    )


def _config(url: str = MOCK_URL) -> Config:
    result = _generate(url)
    assert result.returncode == 0, result.stderr
    return parse_config(result.stdout, "config_for_mock.sh output", env={})


def test_output_is_a_valid_config_serving_mock_gpt_at_the_given_url() -> None:
    config = _config()
    routes = config.catalogue.routes("mock-gpt")
    assert [r.endpoint.base_url for r in routes] == [MOCK_URL]
    assert config.catalogue.kind("mock-gpt") == "chat"
    assert set(config.tenants) == {"demo"}
    assert config.tenants["demo"].home_country == "JP"


@pytest.mark.parametrize(
    ("findings", "level"),
    [({}, Level.INTERNAL), ({"PERSON": 1, "BANK_ACCOUNT_JP": 1}, Level.CONFIDENTIAL)],
)
def test_jp_appi_policy_allows_the_benchmark_request_to_the_domestic_mock(
    findings: dict[str, int], level: Level
) -> None:
    # The benchmark's prompt names a customer and an account: it must still be served, or the
    # benchmark would measure refusals instead of the pipeline.
    config = _config()
    decision = config.policies["demo"].decide(
        model="mock-gpt",
        routes=config.catalogue.routes("mock-gpt"),
        level=level,
        finding_counts=findings,
    )
    assert not decision.denied
    assert decision.action is Action.ALLOW
    assert decision.eligible_ids == ("bench-mock-tokyo",)


def test_port_argument_sets_the_server_port() -> None:
    result = _generate(MOCK_URL, "18123")
    assert result.returncode == 0, result.stderr
    assert parse_config(result.stdout, env={}).server.port == 18123


@pytest.mark.parametrize("bad", [["127.0.0.1:18000"], ["http://x/v1", "port"], []])
def test_bad_arguments_are_refused_with_usage(bad: list[str]) -> None:
    result = _generate(*bad)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip()
