"""The legacy completions API (``POST /v1/completions``): what code-completion tools (fill in
the middle, e.g. Continue or Tabby against vLLM) send. A developer's buffer often holds a
secret; it is inspected like a chat message, plain and streamed, prompt and suffix alike, and
the answer's text is re-identified and filtered."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest

from harness import Harness, ledger_entries, receipt, request

AWS_KEY = (
    "AKIA" + "4HV7QW2ZLMXN3PRT"
)  # an access key id (split: no secret-shaped literal in the repo)
EMAIL = "taro@example.co.jp"


def tenant(output: dict[str, Any] | None = None) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        demo = raw["tenants"]["demo"]
        demo["policy"]["classification"] = {
            "actions": {"EMAIL": "pseudonymise", "SECRET": "redact"}
        }
        demo["detection"]["output"] = output or {"action": "none", "types": []}

    return mutate


@pytest.fixture
def gateway(gateways: Callable[..., Harness]) -> Callable[..., Harness]:
    return lambda mutate=None, **sim: gateways(mutate or tenant(), keep_bodies=True, **sim)


def client(h: Harness) -> openai.OpenAI:
    return openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)


def test_a_completion_is_served_with_headers_usage_and_a_receipt(
    gateway: Callable[..., Harness],
) -> None:
    h = gateway()
    raw = client(h).completions.with_raw_response.create(
        model="chat-default", prompt="def add(a, b):", suffix="\n\nprint(add(1, 2))", max_tokens=16
    )
    done = raw.parse()
    endpoint = raw.headers["x-sekisho-endpoint"]
    assert endpoint == "sim-domestic-tokyo"
    assert raw.headers["x-sekisho-jurisdiction"] == "JP/tokyo"
    assert "You said: def add(a, b):" in done.choices[0].text
    assert done.usage is not None and done.usage.prompt_tokens > 0
    stats = h.sims[endpoint].stats
    assert stats.paths[-1] == "/v1/completions"
    sent = orjson.loads(stats.bodies[-1])
    assert sent["model"] == "llama-3.1-swallow-70b" and sent["max_tokens"] == 16
    r = receipt(h, raw.headers["x-sekisho-request-id"], h.key())
    assert r.status_code == 200, r.text
    decision, outcome = ledger_entries(r.json())
    assert decision["model"] == "chat-default"
    assert outcome is not None and outcome["completion_tokens"] == done.usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_a_secret_in_the_code_is_redacted_in_prompt_and_suffix(
    gateway: Callable[..., Harness], stream: bool
) -> None:
    h = gateway()
    prompt = f'AWS_ACCESS_KEY_ID = "{AWS_KEY}"\nclient = boto3.client('
    suffix = f"  # {AWS_KEY}\n"
    if stream:
        with client(h).completions.with_streaming_response.create(
            model="chat-default", prompt=prompt, suffix=suffix, stream=True
        ) as raw:
            text = "".join(c.choices[0].text for c in raw.parse() if c.choices)
    else:
        raw = client(h).completions.with_raw_response.create(
            model="chat-default", prompt=prompt, suffix=suffix
        )
        text = raw.parse().choices[0].text
    sent = h.sims[raw.headers["x-sekisho-endpoint"]].stats.bodies[-1]
    assert AWS_KEY.encode() not in sent
    body = orjson.loads(sent)
    assert "[SECRET]" in body["prompt"] and "[SECRET]" in body["suffix"]
    assert AWS_KEY not in text


@pytest.mark.parametrize("stream", [False, True])
def test_a_pseudonym_in_the_answer_is_re_identified_and_the_output_rule_applies(
    gateway: Callable[..., Harness], stream: bool
) -> None:
    question = f"# mail {EMAIL}\n"
    for output, expected in (
        (None, f"You said: {question}"),
        ({"action": "mask", "types": ["EMAIL"]}, "You said: # mail [EMAIL]\n"),
    ):
        h = gateway(tenant(output), chunk_chars=4)  # chunks of four split <EMAIL_1>
        if stream:
            with client(h).completions.with_streaming_response.create(
                model="chat-default", prompt=question, stream=True
            ) as raw:
                chunks = list(raw.parse())
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            assert chunks[-1].choices[0].finish_reason == "stop"
        else:
            raw = client(h).completions.with_raw_response.create(
                model="chat-default", prompt=question
            )
            text = raw.parse().choices[0].text
        assert expected in text
        assert "<EMAIL_1>" not in text
        sent = h.sims[raw.headers["x-sekisho-endpoint"]].stats.bodies[-1]
        assert EMAIL.encode() not in sent and b"<EMAIL_1>" in sent


def test_stream_usage_reaches_only_a_client_that_asked(gateway: Callable[..., Harness]) -> None:
    h = gateway()
    c = client(h)
    asked = list(
        c.completions.create(
            model="chat-default",
            prompt="x = ",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert asked[-1].usage is not None and asked[-1].usage.completion_tokens > 0
    plain = list(c.completions.create(model="chat-default", prompt="x = ", stream=True))
    assert all(chunk.usage is None for chunk in plain)
    sent = orjson.loads(h.sims["sim-domestic-tokyo"].stats.bodies[-1])
    assert sent["stream_options"] == {"include_usage": True}  # asked all the same: token limits


def test_token_id_prompts_are_counted_as_uninspected(gateway: Callable[..., Harness]) -> None:
    def blocking(raw: dict[str, Any]) -> None:
        tenant()(raw)
        raw["tenants"]["demo"]["policy"]["classification"]["findings"] = {
            "UNINSPECTED_TOKENS": "restricted"
        }

    h = gateway(blocking)
    raw = client(h).completions.with_raw_response.create(
        model="gpt-4o", prompt=[101, 102, 103], max_tokens=4
    )
    assert raw.headers["x-sekisho-classification"] == "restricted"


def test_only_endpoints_with_the_completions_api_are_routed_to(
    gateways: Callable[..., Harness],
) -> None:
    def mutate(raw: dict[str, Any]) -> None:
        for ep in raw["endpoints"]:
            ep["completions_api"] = ep["id"] == "sim-global-japaneast"

    h = gateways(mutate, keep_bodies=True)
    c = client(h)
    for _ in range(4):
        raw = c.completions.with_raw_response.create(model="gpt-4o", prompt="hi")
        assert raw.headers["x-sekisho-endpoint"] == "sim-global-japaneast"
    with pytest.raises(openai.BadRequestError) as err:
        c.completions.create(model="chat-default", prompt="hi")
    assert isinstance(err.value.body, dict)
    assert err.value.body["code"] == "model_not_supported"
    assert "completions_api: true" in err.value.body["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-4o"}, "prompt"),
        ({"model": "gpt-4o", "prompt": {"a": 1}}, "prompt"),
        ({"model": "gpt-4o", "prompt": []}, "prompt"),
        ({"model": "gpt-4o", "prompt": ["a", 1]}, "prompt"),
        ({"model": "gpt-4o", "prompt": "x", "suffix": 3}, "suffix"),
        ({"model": "gpt-4o", "prompt": "x", "echo": "yes"}, "echo"),
        ({"model": "gpt-4o", "prompt": "x", "logprobs": 9}, "logprobs"),
        ({"model": "gpt-4o", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        (
            {"model": "gpt-4o", "prompt": "x", "stream_options": {"include_usage": True}},
            "stream_options",
        ),
    ],
)
def test_a_malformed_completion_request_is_a_400_naming_the_parameter(
    gateway: Callable[..., Harness], body: dict[str, Any], param: str
) -> None:
    h = gateway()
    before = h.bytes_received()
    r = request(
        "POST",
        f"{h.base_url}/completions",
        json_body=body,
        headers={"authorization": f"Bearer {h.key()}"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert h.bytes_received() == before


async def test_the_async_client_completes(gateway: Callable[..., Harness]) -> None:
    h = gateway()
    c = openai.AsyncOpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
    done = await c.completions.create(model="chat-default", prompt="async ", n=2)
    assert [ch.index for ch in done.choices] == [0, 1]
    stream = await c.completions.create(model="chat-default", prompt="async ", stream=True)
    text = "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])
    assert "You said: async" in text
    await c.close()
