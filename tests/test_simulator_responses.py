"""The simulator serves OpenAI's Responses API (``POST /v1/responses``) in the real wire format:
checked with the official openai client, plain and streamed, with a function tool, with a
reasoning summary, and on an endpoint without the Responses API (404)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest

from harness import request
from sekisho.simulator import Faults, SimulatorServer

StartSim = Callable[..., Awaitable[SimulatorServer]]

TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "find_orders",
        "description": "Look up a customer's orders",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]

MESSAGE_EVENTS = [
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]
REASONING_EVENTS = [
    "response.output_item.added",
    "response.reasoning_summary_part.added",
    "response.reasoning_summary_text.delta",
    "response.reasoning_summary_text.done",
    "response.reasoning_summary_part.done",
    "response.output_item.done",
]
CALL_EVENTS = [
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
]


def client(sim: SimulatorServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0)


def collapse(types: list[str]) -> list[str]:
    """The event types with runs of the same delta event collapsed to one."""
    out: list[str] = []
    for t in types:
        if not (out and out[-1] == t and t.endswith(".delta")):
            out.append(t)
    return out


async def collect(stream: Any) -> list[Any]:
    return [event async for event in stream]


async def test_plain_response(start_sim: StartSim) -> None:
    sim = await start_sim()
    c = client(sim)
    r = await c.responses.create(
        model="sim-chat",
        input="hello there, simulator",
        instructions="Be brief.",
        metadata={"case": "plain"},
    )
    assert r.object == "response" and r.status == "completed"
    assert r.id.startswith("resp_sim_")
    assert r.output_text == sim.reply_for("hello there, simulator")
    assert r.output_text.startswith("[Test endpoint · SIMULATOR] You said: hello there")
    assert r.instructions == "Be brief." and r.metadata == {"case": "plain"}
    assert r.model == "sim-chat" and r.to_dict()["store"] is True and r.tools == []
    assert r.usage is not None
    assert r.usage.input_tokens > 0
    assert r.usage.output_tokens == len(r.output_text.split())
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens == 0
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    [item] = r.output
    assert item.type == "message" and item.id.startswith("msg_sim_")
    assert item.role == "assistant" and item.status == "completed"
    assert sim.stats.responses == 1 and sim.stats.chat == 0
    await c.close()


async def test_input_items_answer_the_last_user_text(start_sim: StartSim) -> None:
    sim = await start_sim()
    c = client(sim)
    r = await c.responses.create(
        model="sim-chat",
        input=[
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "second "},
                    {"type": "input_text", "text": "question"},
                ],
            },
        ],
    )
    assert r.output_text == sim.reply_for("second question")
    # The same text through chat completions gets the same answer.
    chat = await c.chat.completions.create(
        model="sim-chat", messages=[{"role": "user", "content": "second question"}]
    )
    assert chat.choices[0].message.content == r.output_text
    await c.close()


async def test_streamed_response(start_sim: StartSim) -> None:
    sim = await start_sim()
    c = client(sim)
    stream = await c.responses.create(model="sim-chat", input="stream this please", stream=True)
    events = await collect(stream)
    types = [e.type for e in events]
    assert collapse(types) == [
        "response.created",
        "response.in_progress",
        *MESSAGE_EVENTS,
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created = events[0].response
    assert created.status == "in_progress" and created.output == [] and created.usage is None
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 3
    [done] = [e for e in events if e.type == "response.output_text.done"]
    assert "".join(deltas) == done.text == sim.reply_for("stream this please")
    completed = events[-1].response
    assert completed.id == created.id and completed.status == "completed"
    assert completed.output_text == done.text
    assert completed.usage is not None and completed.usage.output_tokens > 0
    assert completed.usage.input_tokens > 0
    assert sim.stats.responses == 1
    await c.close()


async def test_stream_helper_accumulates(start_sim: StartSim) -> None:
    """The SDK's ``responses.stream`` helper builds its snapshot from the events."""
    sim = await start_sim(chunk_chars=5)
    c = client(sim)
    async with c.responses.stream(model="sim-chat", input="in small pieces") as stream:
        text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
        final = await stream.get_final_response()
    assert text == final.output_text == sim.reply_for("in small pieces")
    await c.close()


async def test_raw_stream_format(start_sim: StartSim) -> None:
    """Each event named on an ``event:`` line; no ``data: [DONE]`` at the end."""
    sim = await start_sim()
    body = {"model": "m", "input": "raw", "stream": True}
    r = await asyncio.to_thread(request, "POST", f"{sim.base_url}/responses", json_body=body)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream"
    blocks = [b for b in r.text.split("\n\n") if b]
    assert "[DONE]" not in r.text
    for block in blocks:
        event, data = block.split("\n")
        assert event.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data.removeprefix("data: "))["type"] == event.removeprefix("event: ")
    assert blocks[-1].startswith("event: response.completed\n")


async def test_function_call(start_sim: StartSim) -> None:
    sim = await start_sim()
    c = client(sim)
    r = await c.responses.create(model="sim-chat", input="orders of taro", tools=TOOLS)
    [call] = r.output
    assert call.type == "function_call" and call.id is not None
    assert call.id.startswith("fc_sim_") and call.call_id == "call_0"
    assert call.name == "find_orders" and call.status == "completed"
    assert json.loads(call.arguments) == {"simulated": True, "query": "orders of taro"}
    assert r.output_text == "" and r.tools[0].type == "function"

    stream = await c.responses.create(
        model="sim-chat", input="orders of hanako", tools=TOOLS, stream=True
    )
    events = await collect(stream)
    assert collapse([e.type for e in events]) == [
        "response.created",
        "response.in_progress",
        *CALL_EVENTS,
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = events[2].item
    assert added.type == "function_call" and added.arguments == "" and added.name == "find_orders"
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) > 1 and all(len(d) <= 7 for d in deltas)
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert "".join(deltas) == done.arguments
    assert json.loads(done.arguments) == {"simulated": True, "query": "orders of hanako"}
    final = events[-1].response.output[0]
    assert final.type == "function_call" and final.arguments == done.arguments
    await c.close()


async def test_reasoning_summary(start_sim: StartSim) -> None:
    sim = await start_sim(reasoning=True)
    c = client(sim)
    r = await c.responses.create(model="sim-chat", input="think about this")
    reasoning, message = r.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_sim_")
    assert reasoning.summary[0].type == "summary_text"
    assert "think about this" in reasoning.summary[0].text
    assert message.type == "message"
    assert r.output_text == sim.reply_for("think about this")

    stream = await c.responses.create(model="sim-chat", input="think again", stream=True)
    events = await collect(stream)
    assert collapse([e.type for e in events]) == [
        "response.created",
        "response.in_progress",
        *REASONING_EVENTS,
        *MESSAGE_EVENTS,
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    summary = [e for e in events if e.type.startswith("response.reasoning_summary_text")]
    assert all(e.output_index == 0 and e.summary_index == 0 for e in summary)
    deltas = [e.delta for e in summary if e.type.endswith(".delta")]
    assert len(deltas) > 1 and "".join(deltas) == summary[-1].text
    assert all(e.output_index == 1 for e in events if e.type == "response.output_text.delta")
    completed = events[-1].response
    assert [o.type for o in completed.output] == ["reasoning", "message"]
    assert completed.output[0].summary[0].text == summary[-1].text
    await c.close()


async def test_endpoint_without_responses_api(start_sim: StartSim) -> None:
    sim = await start_sim(serves_responses=False)
    c = client(sim)
    with pytest.raises(openai.NotFoundError) as err:
        await c.responses.create(model="sim-chat", input="anyone there?")
    assert err.value.status_code == 404
    assert err.value.body == {
        "message": "Not Found: /v1/responses",
        "type": "invalid_request_error",
    }
    assert sim.stats.responses == 0
    chat = await c.chat.completions.create(
        model="sim-chat", messages=[{"role": "user", "content": "chat still works"}]
    )
    assert chat.choices[0].message.content == sim.reply_for("chat still works")
    await c.close()


async def test_faults_apply(start_sim: StartSim) -> None:
    sim = await start_sim()
    c = client(sim)
    sim.faults = Faults(mode="status", status=503, count=1)
    with pytest.raises(openai.InternalServerError):
        await c.responses.create(model="sim-chat", input="x")
    sim.faults = Faults(mode="drop_midstream", count=1)
    stream = await c.responses.create(model="sim-chat", input="one two three four", stream=True)
    seen: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        async for event in stream:
            seen.append(event.type)
    assert "response.output_text.delta" in seen and "response.completed" not in seen
    r = await c.responses.create(model="sim-chat", input="after the faults")
    assert r.output_text == sim.reply_for("after the faults")
    assert sim.stats.responses == 2  # the 503 came before any answer
    await c.close()
