"""Requests that would have the provider keep the completion (store) or take words of the prompt
to a web search engine go beyond what the endpoint's data terms declare: refused unless the
tenant allows the feature, and then passed through unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest
import yaml

from harness import Harness, example_config
from sekisho.config import parse_config
from sekisho.errors import ConfigError

FEATURES = {
    "store": {"store": True, "metadata": {"team": "payments"}},
    "web_search": {"web_search_options": {"search_context_size": "low"}},
    "audio_output": {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}},
}


@pytest.fixture
def gateway(gateways: Callable[..., Harness]) -> Callable[..., Harness]:
    def start(allowed: list[str]) -> Harness:
        def mutate(raw: dict[str, Any]) -> None:
            raw["tenants"]["demo"]["provider_features"] = allowed

        return gateways(mutate, keep_bodies=True)

    return start


def ask(h: Harness, extra: dict[str, Any]) -> Any:
    c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
    return c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hello"}], extra_body=extra
    )


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_a_provider_feature_the_tenant_has_not_allowed_is_refused_before_anything_is_sent(
    gateway: Callable[..., Harness], feature: str
) -> None:
    h = gateway([])
    before = h.bytes_received()
    with pytest.raises(openai.BadRequestError) as err:
        ask(h, FEATURES[feature])
    body = err.value.body
    assert isinstance(body, dict)
    assert body["code"] == "provider_feature_not_allowed"
    assert body["param"] == next(iter(FEATURES[feature]))
    assert f"provider_features: [{feature}]" in body["message"]
    assert h.bytes_received() == before
    # store: false, or no such field at all, is what every request does anyway
    assert ask(h, {"store": False}).headers["x-sekisho-endpoint"]


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_an_allowed_provider_feature_goes_upstream_as_asked(
    gateway: Callable[..., Harness], feature: str
) -> None:
    h = gateway([feature])
    raw = ask(h, FEATURES[feature])
    sent = orjson.loads(h.sims[raw.headers["x-sekisho-endpoint"]].stats.bodies[-1])
    for key, value in FEATURES[feature].items():
        assert sent[key] == value


def test_an_unknown_provider_feature_is_a_config_error() -> None:
    raw = example_config()
    raw["tenants"]["demo"]["provider_features"] = ["storage"]
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_dump(raw, allow_unicode=True), "sekisho.yaml")
    assert "tenants.demo.provider_features" in str(err.value)


def test_an_audio_parameter_alone_asks_for_a_spoken_answer_too(
    gateway: Callable[..., Harness],
) -> None:
    h = gateway([])
    with pytest.raises(openai.BadRequestError) as err:
        ask(h, {"audio": {"voice": "alloy", "format": "wav"}})
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "audio"
    assert "cannot inspect audio" in body["message"]
