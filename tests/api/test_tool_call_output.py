"""The answer's tool calls get what its text gets: pseudonyms re-identified and the tenant's
output rule applied, in complete answers and in streamed argument pieces.

A model given ``<EMAIL_1>`` passes it on to the tool it calls; the client's tool must receive
the real address, and an address the output rule masks must not slip out through a tool call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest

from harness import Harness

EMAIL = "taro@example.co.jp"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "find_orders",
            "description": "Look up a customer's orders",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]


def tenant(**detection: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        demo = raw["tenants"]["demo"]
        demo["policy"]["classification"] = {"actions": {"EMAIL": "pseudonymise"}}
        demo["detection"]["output"] = detection or {"action": "none", "types": []}

    return mutate


@pytest.fixture
def gateway(gateways: Callable[..., Harness]) -> Callable[..., Harness]:
    return lambda mutate, **sim: gateways(mutate, keep_bodies=True, **sim)


def call_tool(h: Harness, *, stream: bool) -> tuple[str, str | None, Any]:
    """(the tool call's arguments, the finish reason, the raw response) as the client sees them."""
    c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
    messages = [{"role": "user", "content": f"{EMAIL} の注文を調べて"}]
    if not stream:
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=messages, tools=TOOLS
        )
        choice = raw.parse().choices[0]
        calls = choice.message.tool_calls or []
        return (calls[0].function.arguments if calls else ""), choice.finish_reason, raw
    args, finish = "", None
    with c.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=messages, tools=TOOLS, stream=True
    ) as raw:
        for chunk in raw.parse():
            for choice in chunk.choices:
                for tc in choice.delta.tool_calls or ():
                    args += tc.function.arguments or "" if tc.function else ""
                finish = choice.finish_reason or finish
    return args, finish, raw


@pytest.mark.parametrize("stream", [False, True])
def test_a_pseudonym_the_model_passes_to_a_tool_is_re_identified(
    gateway: Callable[..., Harness], stream: bool
) -> None:
    h = gateway(tenant(), chunk_chars=5)  # streamed arguments split the placeholder
    args, finish, raw = call_tool(h, stream=stream)
    assert json.loads(args)["query"] == f"{EMAIL} の注文を調べて"
    assert finish == "tool_calls"
    sent = h.sims[raw.headers["x-sekisho-endpoint"]].stats.bodies[-1]
    assert EMAIL.encode() not in sent and b"<EMAIL_1>" in sent  # upstream saw the pseudonym


@pytest.mark.parametrize("stream", [False, True])
def test_the_output_rule_masks_tool_call_arguments(
    gateway: Callable[..., Harness], stream: bool
) -> None:
    h = gateway(tenant(action="mask", types=["EMAIL"]))
    args, _, raw = call_tool(h, stream=stream)
    assert EMAIL not in args
    assert json.loads(args)["query"] == "[EMAIL] の注文を調べて"  # still valid JSON
    if not stream:
        assert raw.headers["x-sekisho-output"] == "masked"


def test_cut_drops_a_tool_call_rather_than_deliver_a_broken_one(
    gateway: Callable[..., Harness],
) -> None:
    h = gateway(tenant(action="cut", types=["EMAIL"]))
    args, finish, raw = call_tool(h, stream=False)
    assert args == ""  # no tool call at all
    assert finish == "content_filter"
    assert raw.headers["x-sekisho-output"] == "cut"


def test_an_answer_with_several_verdicts_records_the_most_severe() -> None:
    from sekisho._output import _worse

    assert _worse(None, "output_masked") == "output_masked"
    assert _worse("output_cut", "output_masked") == "output_cut"
    assert _worse("output_masked", "output_cut") == "output_cut"
    assert _worse("output_inspection_failed", "output_cut") == "output_inspection_failed"


@pytest.mark.parametrize("stream", [False, True])
def test_a_value_restored_into_tool_arguments_keeps_them_valid_json(
    gateway: Callable[..., Harness], stream: bool
) -> None:
    codename = 'Project "Falcon"'  # the quotes must be escaped inside the JSON arguments

    def mutate(raw: dict[str, Any]) -> None:
        demo = raw["tenants"]["demo"]
        demo["policy"]["classification"] = {"actions": {"CUSTOM": "pseudonymise"}}
        demo["detection"]["custom"] = [{"name": "codenames", "terms": [codename]}]
        demo["detection"]["output"] = {"action": "none", "types": []}

    h = gateway(mutate, chunk_chars=4)
    c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
    messages = [{"role": "user", "content": f"{codename} の進捗"}]
    if stream:
        args = ""
        for chunk in c.chat.completions.create(
            model="gpt-4o", messages=messages, tools=TOOLS, stream=True
        ):
            for choice in chunk.choices:
                for tc in choice.delta.tool_calls or ():
                    args += (tc.function.arguments or "") if tc.function else ""
    else:
        answer = c.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS)
        calls = answer.choices[0].message.tool_calls or []
        args = calls[0].function.arguments
    assert json.loads(args)["query"] == f"{codename} の進捗"
    sent = b"".join(sim.stats.bodies[-1] for sim in h.sims.values() if sim.stats.bodies)
    assert b"<CUSTOM_1>" in sent and b"Falcon" not in sent  # the upstream saw the pseudonym


def test_held_back_text_goes_out_with_the_finishing_event_and_more_text_after_is_inspected() -> (
    None
):
    """Unit level: the pseudonym split across events is restored; the tail held back for it
    rides on the event with the finish reason; an empty delta after the finish (some servers
    send one) is inspected afresh instead of failing the stream closed."""
    import yaml

    from harness import example_config
    from sekisho._output import StreamOutput
    from sekisho.classify.redact import Pseudonymiser
    from sekisho.config import parse_config, scanner_for

    raw = example_config()
    raw["tenants"]["demo"]["detection"]["output"] = {"action": "mask", "types": ["MY_NUMBER"]}
    tenant = parse_config(yaml.safe_dump(raw), "t.yaml").tenants["demo"]
    pseudo = Pseudonymiser()
    placeholder = pseudo.placeholder_for("EMAIL", EMAIL)
    out = StreamOutput(pseudo, tenant, scanner_for(tenant))

    def event(content: str | None, finish: str | None = None) -> dict[str, Any]:
        delta = {} if content is None else {"content": content}
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events = [
        event("Mail " + placeholder[:4]),
        event(placeholder[4:] + " soon " + placeholder[:3]),
        event(None, "stop"),
        event(""),
    ]
    for e in events:
        out.apply(e)
    assert out.finish() is None  # nothing was left to send after the stream
    sent = [e["choices"][0]["delta"].get("content", "") for e in events]
    assert "".join(sent) == f"Mail {EMAIL} soon {placeholder[:3]}"
    assert sent[2].endswith(placeholder[:3])  # the held-back tail, on the finishing event
    assert sent[3] == ""
    assert out.error_code is None
