"""The simulator answers the options clients rely on as OpenAI's API does, checked with the
official openai client on real loopback sockets: ``logprobs`` (chat, streamed chat, legacy
completions, the Responses API), ``n`` choices in a stream, a JSON ``response_format`` (so the
SDK's ``parse`` helpers work) and embeddings with ``dimensions`` and ``encoding_format``."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import enum
import json
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from sekisho.simulator import SimulatedEndpoint, SimulatorServer

StartSim = Callable[..., Awaitable[SimulatorServer]]


def client(sim: SimulatorServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0)


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def check_token_logprobs(tokens: list[Any], top: int) -> None:
    """Each token's bytes are its UTF-8, its logprob negative, and its ``top`` alternatives
    start with itself, most likely first."""
    for t in tokens:
        assert t.bytes == list(t.token.encode())
        assert t.logprob < 0
        assert len(t.top_logprobs) == top
        if top:
            assert t.top_logprobs[0].token == t.token
            assert t.top_logprobs[0].logprob == t.logprob
        logprobs = [a.logprob for a in t.top_logprobs]
        assert logprobs == sorted(logprobs, reverse=True)
        assert all(a.bytes == list(a.token.encode()) for a in t.top_logprobs)


# -- logprobs ------------------------------------------------------------------------------


async def test_chat_logprobs_are_tokens_that_join_to_the_content(start_sim: StartSim) -> None:
    sim = await start_sim()
    c = client(sim)
    r = await c.chat.completions.create(
        model="sim-chat", messages=user("how likely is this?"), logprobs=True, top_logprobs=3, n=2
    )
    for choice in r.choices:
        assert choice.logprobs is not None and choice.logprobs.refusal is None
        tokens = choice.logprobs.content
        assert tokens is not None and len(tokens) > 3
        assert "".join(t.token for t in tokens) == choice.message.content
        check_token_logprobs(tokens, 3)
    # Deterministic: the same request, the same logprobs; without logprobs, none.
    again = await c.chat.completions.create(
        model="sim-chat", messages=user("how likely is this?"), logprobs=True, top_logprobs=3
    )
    assert again.choices[0].logprobs == r.choices[0].logprobs
    plain = await c.chat.completions.create(model="sim-chat", messages=user("how likely?"))
    assert plain.choices[0].logprobs is None
    bare = await c.chat.completions.create(
        model="sim-chat", messages=user("how likely?"), logprobs=True
    )
    assert bare.choices[0].logprobs is not None and bare.choices[0].logprobs.content
    check_token_logprobs(bare.choices[0].logprobs.content, 0)
    await c.close()


async def test_streamed_chat_chunks_carry_the_logprobs_of_their_delta(start_sim: StartSim) -> None:
    sim = await start_sim(chunk_chars=5)
    c = client(sim)
    stream = await c.chat.completions.create(
        model="sim-chat",
        messages=user("stream the odds"),
        logprobs=True,
        top_logprobs=2,
        stream=True,
    )
    text, tokens = "", []
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content is None:
                continue
            assert choice.logprobs is not None and choice.logprobs.content is not None
            assert "".join(t.token for t in choice.logprobs.content) == choice.delta.content
            text += choice.delta.content
            tokens += choice.logprobs.content
    check_token_logprobs(tokens, 2)
    whole = await c.chat.completions.create(
        model="sim-chat", messages=user("stream the odds"), logprobs=True, top_logprobs=2
    )
    assert text == whole.choices[0].message.content
    assert whole.choices[0].logprobs is not None
    assert tokens == whole.choices[0].logprobs.content  # the same tokens, streamed or not
    await c.close()


async def test_top_logprobs_out_of_range_is_refused(start_sim: StartSim) -> None:
    sim = await start_sim()
    c = client(sim)
    with pytest.raises(openai.BadRequestError) as err:
        await c.chat.completions.create(
            model="sim-chat", messages=user("x"), logprobs=True, top_logprobs=21
        )
    assert err.value.body == {
        "message": "top_logprobs must be an integer from 0 to 20, not 21",
        "type": "invalid_request_error",
        "param": "top_logprobs",
        "code": "invalid_value",
    }
    with pytest.raises(openai.BadRequestError, match="logprobs must be an integer from 0 to 5"):
        await c.completions.create(model="sim-chat", prompt="x", logprobs=6)
    assert sim.stats.chat == 0 and sim.stats.completions == 0
    await c.close()


async def test_a_function_tool_that_is_not_an_object_is_refused_as_openai_refuses_it(
    start_sim: StartSim,
) -> None:
    """``"function": "f"`` made the simulator raise and never answer; stream or not, it is a
    400 now, as OpenAI answers."""
    sim = await start_sim()
    c = client(sim)
    for stream in (False, True):
        for tools, param in (
            ([{"type": "function", "function": "f"}], "tools[0].function"),
            ([{"type": "function", "function": {}}], "tools[0].function.name"),
            (["f"], "tools[0]"),
            ("f", "tools"),
        ):
            with pytest.raises(openai.BadRequestError) as err:
                await c.chat.completions.create(
                    model="sim-chat", messages=user("x"), tools=tools, stream=stream
                )
            assert err.value.body["param"] == param, err.value.body  # type: ignore[index]
    assert sim.stats.chat == 0
    r = await c.chat.completions.create(
        model="sim-chat", messages=user("x"), tools=[{"type": "custom", "custom": {"name": "g"}}]
    )
    assert r.choices[0].message.tool_calls[0].function.name == "tool"  # type: ignore[index,union-attr]
    await c.close()


async def test_legacy_completion_logprobs(start_sim: StartSim) -> None:
    sim = await start_sim()
    c = client(sim)
    prompt = "Once upon a time"
    r = await c.completions.create(model="sim-chat", prompt=prompt, logprobs=2)
    [choice] = r.choices
    lp = choice.logprobs
    assert lp is not None and lp.tokens and lp.text_offset and lp.token_logprobs
    assert lp.top_logprobs is not None
    assert "".join(lp.tokens) == choice.text
    # Offsets count from the start of the prompt, as OpenAI's do.
    assert lp.text_offset[0] == len(prompt)
    for token, offset in zip(lp.tokens, lp.text_offset, strict=True):
        assert (prompt + choice.text)[offset : offset + len(token)] == token
    assert all(p < 0 for p in lp.token_logprobs)
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 2 and next(iter(top.items())) == (token, logprob)
    echoed = await c.completions.create(model="sim-chat", prompt=prompt, logprobs=0, echo=True)
    assert echoed.choices[0].logprobs is not None
    assert echoed.choices[0].logprobs.text_offset is not None
    assert echoed.choices[0].logprobs.text_offset[0] == 0
    plain = await c.completions.create(model="sim-chat", prompt=prompt)
    assert plain.choices[0].logprobs is None

    stream = await c.completions.create(model="sim-chat", prompt=prompt, logprobs=2, stream=True)
    streamed: list[str] = []
    offsets: list[int] = []
    async for chunk in stream:
        for ch in chunk.choices:
            if ch.text:
                assert ch.logprobs is not None and ch.logprobs.tokens is not None
                assert ch.logprobs.text_offset is not None
                assert "".join(ch.logprobs.tokens) == ch.text
                streamed += ch.logprobs.tokens
                offsets += ch.logprobs.text_offset
    assert streamed == lp.tokens and offsets == lp.text_offset
    await c.close()


async def test_responses_output_text_logprobs(start_sim: StartSim) -> None:
    sim = await start_sim()
    c = client(sim)
    include: Any = ["message.output_text.logprobs"]
    r = await c.responses.create(
        model="sim-chat", input="weigh these words", include=include, top_logprobs=2
    )
    [message] = r.output
    assert message.type == "message"
    [part] = message.content
    assert part.type == "output_text" and part.logprobs is not None
    assert "".join(t.token for t in part.logprobs) == part.text == r.output_text
    check_token_logprobs(part.logprobs, 2)
    plain = await c.responses.create(model="sim-chat", input="weigh these words")
    assert plain.output[0].type == "message" and plain.output[0].content[0].type == "output_text"
    assert not plain.output[0].content[0].logprobs

    stream = await c.responses.create(
        model="sim-chat", input="weigh these words", include=include, top_logprobs=2, stream=True
    )
    deltas: list[Any] = []
    done: Any = None
    async for event in stream:
        if event.type == "response.output_text.delta":
            assert "".join(t.token for t in event.logprobs) == event.delta
            deltas += event.logprobs
        elif event.type == "response.output_text.done":
            done = event
    assert [t.token for t in deltas] == [t.token for t in part.logprobs]
    assert [t.logprob for t in deltas] == [t.logprob for t in part.logprobs]
    assert done is not None and [t.token for t in done.logprobs] == [t.token for t in deltas]
    await c.close()


class SimThread:
    """Simulators in a background event loop, for the sync client and for hypothesis, which
    drives a test many times in one call."""

    def __init__(self, **specs: SimulatedEndpoint) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sims = {name: SimulatorServer(spec) for name, spec in specs.items()}
        for sim in self.sims.values():
            asyncio.run_coroutine_threadsafe(sim.start(), self.loop).result(10)

    def stop(self) -> None:
        for sim in self.sims.values():
            asyncio.run_coroutine_threadsafe(sim.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def echoing_sims() -> Iterator[dict[str, openai.OpenAI]]:
    """Clients of two simulators that repeat the whole prompt: one streaming word by word,
    one in pieces of 4 characters."""
    sims = SimThread(
        words=SimulatedEndpoint("sim-words", "Words", echo_chars=10_000),
        pieces=SimulatedEndpoint("sim-pieces", "Pieces", echo_chars=10_000, chunk_chars=4),
    )
    clients = {
        name: openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
        for name, sim in sims.sims.items()
    }
    try:
        yield clients
    finally:
        for c in clients.values():
            c.close()
        sims.stop()


prompts = st.text(st.characters(exclude_categories=("Cs",)), max_size=80)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(prompt=prompts, top=st.integers(0, 20))
def test_logprob_tokens_always_join_to_the_content(
    echoing_sims: dict[str, openai.OpenAI], prompt: str, top: int
) -> None:
    for c in echoing_sims.values():
        r = c.chat.completions.create(
            model="sim-chat", messages=user(prompt), logprobs=True, top_logprobs=top
        )
        content = r.choices[0].message.content
        assert content is not None and prompt in content
        assert r.choices[0].logprobs is not None and r.choices[0].logprobs.content is not None
        tokens = r.choices[0].logprobs.content
        assert "".join(t.token for t in tokens) == content
        assert all(t.token for t in tokens)
        check_token_logprobs(tokens, top)
        stream = c.chat.completions.create(
            model="sim-chat", messages=user(prompt), logprobs=True, top_logprobs=top, stream=True
        )
        streamed = [
            t.token
            for chunk in stream
            for ch in chunk.choices
            if ch.logprobs is not None and ch.logprobs.content is not None
            for t in ch.logprobs.content
        ]
        assert "".join(streamed) == content


# -- n choices in a stream -----------------------------------------------------------------


async def test_streamed_chat_with_n_sends_every_choice(start_sim: StartSim) -> None:
    sim = await start_sim()
    c = client(sim)

    async def streamed(n: int) -> tuple[dict[int, str], dict[int, list[str]], Any]:
        stream = await c.chat.completions.create(
            model="sim-chat",
            messages=user("three ways"),
            n=n,
            stream=True,
            stream_options={"include_usage": True},
        )
        texts: dict[int, str] = {}
        finishes: dict[int, list[str]] = {}
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
            for ch in chunk.choices:
                texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
                if ch.finish_reason:
                    finishes.setdefault(ch.index, []).append(ch.finish_reason)
        return texts, finishes, usage

    texts, finishes, usage = await streamed(3)
    one_text, _, one_usage = await streamed(1)
    whole = await c.chat.completions.create(model="sim-chat", messages=user("three ways"))
    assert texts == {i: whole.choices[0].message.content for i in range(3)}
    assert finishes == {0: ["stop"], 1: ["stop"], 2: ["stop"]}
    assert one_text == {0: whole.choices[0].message.content}
    assert usage.completion_tokens == 3 * one_usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    await c.close()


async def test_stream_helper_accumulates_every_choice_and_tool_call(start_sim: StartSim) -> None:
    sim = await start_sim()
    c = client(sim)
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    async with c.chat.completions.stream(
        model="sim-chat", messages=user("call it twice"), n=2, tools=tools
    ) as stream:
        final = await stream.get_final_completion()
    assert [ch.index for ch in final.choices] == [0, 1]
    for ch in final.choices:
        assert ch.finish_reason == "tool_calls"
        [call] = ch.message.tool_calls or []
        assert call.id == f"call_{ch.index}" and call.type == "function"
        assert call.function.name == "lookup"
        assert json.loads(call.function.arguments) == {"simulated": True, "query": "call it twice"}
    await c.close()


async def test_streamed_legacy_completion_with_n_sends_every_choice(start_sim: StartSim) -> None:
    sim = await start_sim()
    c = client(sim)
    stream = await c.completions.create(model="sim-chat", prompt="twice", n=2, stream=True)
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    async for chunk in stream:
        for ch in chunk.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
    assert texts == {0: sim.reply_for("twice"), 1: sim.reply_for("twice")}
    assert finishes == {0: "stop", 1: "stop"}
    await c.close()


async def test_usage_counts_every_choice_streamed_or_not(start_sim: StartSim) -> None:
    """With n=3 the answer has three choices' tokens: a whole answer and a stream say the same,
    and each is three times what n=1 says (a gateway bills and limits by these counts)."""
    sim = await start_sim()
    c = client(sim)
    one = await c.chat.completions.create(model="sim-chat", messages=user("count me"))
    three = await c.chat.completions.create(model="sim-chat", messages=user("count me"), n=3)
    stream = await c.chat.completions.create(
        model="sim-chat",
        messages=user("count me"),
        n=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed = [chunk.usage async for chunk in stream if chunk.usage is not None]
    assert one.usage is not None and three.usage is not None
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    assert [u.completion_tokens for u in streamed] == [three.usage.completion_tokens]
    legacy_one = await c.completions.create(model="sim-chat", prompt="count me")
    legacy = await c.completions.create(model="sim-chat", prompt="count me", n=3)
    assert legacy_one.usage is not None and legacy.usage is not None
    assert legacy.usage.completion_tokens == 3 * legacy_one.usage.completion_tokens
    await c.close()


# -- structured output ---------------------------------------------------------------------


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Address(BaseModel):
    city: str
    postcode: str | None


class Order(BaseModel):
    kind: Literal["order"]
    colour: Colour
    quantity: int = Field(ge=3, le=9)
    price: float
    paid: bool
    placed_at: dt.datetime
    tags: list[str]
    ship_to: Address
    bill_to: Address | None
    reference: str = Field(max_length=10)


async def test_chat_parse_returns_an_instance_of_the_model(start_sim: StartSim) -> None:
    sim = await start_sim()
    c = client(sim)
    r = await c.chat.completions.parse(
        model="sim-chat", messages=user("order two red hats"), response_format=Order
    )
    order = r.choices[0].message.parsed
    assert isinstance(order, Order)
    assert order.kind == "order" and order.colour is Colour.RED and order.quantity == 3
    assert len(order.tags) == 1 and isinstance(order.ship_to, Address)
    assert len(order.reference) <= 10
    # A free string still says who answered: the simulator, echoing the user.
    assert order.ship_to.city == sim.reply_for("order two red hats")

    async with c.chat.completions.stream(
        model="sim-chat", messages=user("order two red hats"), response_format=Order
    ) as stream:
        streamed = await stream.get_final_completion()
    assert streamed.choices[0].message.parsed == order
    await c.close()


async def test_responses_parse_returns_an_instance_of_the_model(start_sim: StartSim) -> None:
    sim = await start_sim()
    c = client(sim)
    r = await c.responses.parse(model="sim-chat", input="order a green hat", text_format=Order)
    assert isinstance(r.output_parsed, Order)
    assert r.output_parsed.colour is Colour.RED and r.output_parsed.ship_to.postcode is not None
    await c.close()


async def test_raw_json_schema_features(start_sim: StartSim) -> None:
    """``$ref`` into ``definitions`` and ``$defs``, ``const``, ``oneOf``, nullable type lists,
    bounds, tuples and string formats each get a value the schema allows."""
    sim = await start_sim()
    c = client(sim)
    schema = {
        "type": "object",
        "properties": {
            "version": {"const": 2},
            "mode": {"oneOf": [{"type": "integer", "exclusiveMinimum": 5}, {"type": "string"}]},
            "note": {"type": ["null", "string"], "minLength": 200},
            "score": {"type": "number", "minimum": -3.5, "maximum": -1},
            "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}]},
            "many": {"type": "array", "items": {"type": "integer"}, "minItems": 2},
            "when": {"type": "string", "format": "date"},
            "owner": {"$ref": "#/definitions/Person"},
            "team": {"$ref": "#/$defs/Team"},
            "extra": {},
        },
        "required": ["version", "missing"],
        "definitions": {"Person": {"type": "object", "properties": {"id": {"type": "string"}}}},
        "$defs": {
            "Team": {
                "allOf": [
                    {"$ref": "#/definitions/Person"},
                    {"properties": {"size": {"type": "integer", "maximum": -4}}},
                ]
            }
        },
    }
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}}
    r = await c.chat.completions.create(
        model="sim-chat", messages=user("a thing"), response_format=fmt
    )
    value = json.loads(r.choices[0].message.content or "")
    echo = sim.reply_for("a thing")
    assert value == {
        "version": 2,
        "mode": 6,
        "note": echo + "." * (200 - len(echo)),
        "score": -1,
        "pair": [0, True],
        "many": [0, 0],
        "when": "2000-01-01",
        "owner": {"id": echo},
        "team": {"id": echo, "size": -4},
        "extra": echo,
        "missing": echo,
    }
    # The Responses API's format is flat: {"type": "json_schema", "schema": ...}.
    text: Any = {"format": {"type": "json_schema", "name": "thing", "schema": schema}}
    resp = await c.responses.create(model="sim-chat", input="a thing", text=text)
    assert json.loads(resp.output_text) == value
    await c.close()


async def test_recursive_schema_ends(start_sim: StartSim) -> None:
    class Node(BaseModel):
        name: str
        children: list[Node]
        parent: Node | None

    sim = await start_sim()
    c = client(sim)
    r = await c.chat.completions.parse(
        model="sim-chat", messages=user("tree"), response_format=Node
    )
    node = r.choices[0].message.parsed
    assert isinstance(node, Node) and node.children
    await c.close()


async def test_json_object_answers_a_json_object(start_sim: StartSim) -> None:
    sim = await start_sim()
    c = client(sim)
    r = await c.chat.completions.create(
        model="sim-chat", messages=user("as JSON please"), response_format={"type": "json_object"}
    )
    value = json.loads(r.choices[0].message.content or "")
    assert value == {"simulated": True, "answer": sim.reply_for("as JSON please")}
    resp = await c.responses.create(
        model="sim-chat", input="as JSON please", text={"format": {"type": "json_object"}}
    )
    assert json.loads(resp.output_text) == value
    await c.close()


# -- embeddings ----------------------------------------------------------------------------


def floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


async def test_embeddings_in_base64_and_floats_agree(start_sim: StartSim) -> None:
    sim = await start_sim(keep_bodies=True)
    c = client(sim)
    as_floats = await c.embeddings.create(
        model="sim-embed", input=["a", "b"], encoding_format="float"
    )
    vectors = [d.embedding for d in as_floats.data]
    assert [len(v) for v in vectors] == [16, 16] and vectors[0] != vectors[1]
    # Asked for base64: the string OpenAI sends, little-endian float32.
    as_base64 = await c.embeddings.create(
        model="sim-embed", input=["a", "b"], encoding_format="base64"
    )
    encoded: list[Any] = [d.embedding for d in as_base64.data]
    assert all(isinstance(e, str) for e in encoded)
    assert [floats(e) for e in encoded] == vectors
    # Not asked: the SDK asks for base64 itself and decodes it to the same floats.
    raw = await c.embeddings.with_raw_response.create(model="sim-embed", input=["a", "b"])
    assert json.loads(sim.stats.bodies[-1])["encoding_format"] == "base64"
    assert all(isinstance(d["embedding"], str) for d in json.loads(raw.content)["data"])
    assert [d.embedding for d in raw.parse().data] == vectors
    await c.close()


async def test_one_input_given_as_tokens_is_one_embedding(start_sim: StartSim) -> None:
    """A list of integers is one input's tokens, a list of such lists several inputs (the
    OpenAI reference); the simulator answered [1, 2, 3] with three embeddings."""
    sim = await start_sim()
    c = client(sim)
    one = await c.embeddings.create(model="sim-embed", input=[1, 2, 3])
    two = await c.embeddings.create(model="sim-embed", input=[[1, 2, 3], [4, 5]])
    assert [d.index for d in one.data] == [0] and [d.index for d in two.data] == [0, 1]
    await c.close()


async def test_embeddings_have_the_dimensions_asked_for(start_sim: StartSim) -> None:
    sim = await start_sim()
    c = client(sim)
    for size in (1, 8, 100, 1536):
        by_default = await c.embeddings.create(model="sim-embed", input="text", dimensions=size)
        explicit = await c.embeddings.create(
            model="sim-embed", input="text", dimensions=size, encoding_format="float"
        )
        [vector] = [d.embedding for d in explicit.data]
        assert len(vector) == size and by_default.data[0].embedding == vector
        assert all(-1 <= x < 1 for x in vector)
    long = await c.embeddings.create(model="sim-embed", input="text", dimensions=100)
    assert len(set(long.data[0].embedding)) > 50  # not one block repeated
    with pytest.raises(openai.BadRequestError, match="dimensions must be an integer from 1"):
        await c.embeddings.create(model="sim-embed", input="text", dimensions=0)
    with pytest.raises(openai.BadRequestError, match="encoding_format must be"):
        await c.embeddings.create(
            model="sim-embed", input="text", extra_body={"encoding_format": "hex"}
        )
    await c.close()


# -- tool calls and refusals -------------------------------------------------------------


class GetWeather(BaseModel):
    city: str
    days: int = Field(ge=1)


class GetTime(BaseModel):
    timezone: str


STRICT_TOOLS: Any = [
    openai.pydantic_function_tool(GetWeather, name="get_weather"),
    openai.pydantic_function_tool(GetTime, name="get_time"),
]


async def test_every_tool_is_called_in_parallel_unless_the_request_says_otherwise(
    start_sim: StartSim,
) -> None:
    """Parallel tool calls, streamed one call after another, strict arguments valid for the
    tool's parameters (so the SDK's helpers parse them); ``parallel_tool_calls: false`` calls
    one tool, ``tool_choice`` a named one or none."""
    sim = await start_sim()
    c = client(sim)
    r = await c.chat.completions.parse(
        model="sim-chat", messages=user("weather and time in Paris"), tools=STRICT_TOOLS
    )
    calls = r.choices[0].message.tool_calls or []
    assert [(t.id, t.function.name) for t in calls] == [
        ("call_0", "get_weather"),
        ("call_0_1", "get_time"),
    ]
    assert calls[0].function.parsed_arguments == GetWeather(
        city="weather and time in Paris", days=1
    )
    assert isinstance(calls[1].function.parsed_arguments, GetTime)
    async with c.chat.completions.stream(
        model="sim-chat", messages=user("weather and time in Paris"), tools=STRICT_TOOLS
    ) as stream:
        events = [e async for e in stream]
        streamed = await stream.get_final_completion()
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert [e.parsed_arguments for e in done] == [t.function.parsed_arguments for t in calls]
    assert not [e for e in events if e.type.startswith("content.")]  # content is null
    streamed_calls = streamed.choices[0].message.tool_calls or []
    assert [(t.id, t.function) for t in streamed_calls] == [(t.id, t.function) for t in calls]
    assert streamed.choices[0].finish_reason == "tool_calls"

    one = await c.chat.completions.create(
        model="sim-chat", messages=user("x"), tools=STRICT_TOOLS, parallel_tool_calls=False
    )
    assert [t.function.name for t in one.choices[0].message.tool_calls or []] == ["get_weather"]
    named = await c.chat.completions.create(
        model="sim-chat",
        messages=user("x"),
        tools=STRICT_TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert [t.function.name for t in named.choices[0].message.tool_calls or []] == ["get_time"]
    none = await c.chat.completions.create(
        model="sim-chat", messages=user("x"), tools=STRICT_TOOLS, tool_choice="none"
    )
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content
    assert none.choices[0].finish_reason == "stop"

    flat: Any = [{"type": "function", "name": "get_time", "strict": True,
                  "parameters": openai.pydantic_function_tool(GetTime)["function"]["parameters"]},
                 {"type": "function", "name": "lookup"}]  # fmt: skip
    resp = await c.responses.create(model="sim-chat", input="what time", tools=flat)
    assert [(o.type, getattr(o, "call_id", None)) for o in resp.output] == [
        ("function_call", "call_0"),
        ("function_call", "call_1"),
    ]
    assert json.loads(resp.output[0].arguments) == {"timezone": "what time"}  # type: ignore[union-attr]
    one_resp = await c.responses.create(
        model="sim-chat", input="what time", tools=flat, parallel_tool_calls=False
    )
    assert len(one_resp.output) == 1 and one_resp.parallel_tool_calls is False
    await c.close()


class Verdict(BaseModel):
    guilty: bool


async def test_a_request_the_model_refuses_is_answered_with_a_refusal(
    start_sim: StartSim,
) -> None:
    """Chat's ``message.refusal`` (content null), streamed in ``delta.refusal``; the Responses
    API's refusal part and ``response.refusal.delta``/``done`` events: the SDK's ``parse``
    helpers give the refusal and no parsed value."""
    sim = await start_sim()
    c = client(sim)
    asked = "[sim:refuse] judge him"
    r = await c.chat.completions.parse(
        model="sim-chat", messages=user(asked), response_format=Verdict, tools=STRICT_TOOLS
    )
    message = r.choices[0].message
    assert message.parsed is None and message.content is None and message.tool_calls is None
    assert (
        message.refusal and "I can't help with that" in message.refusal and asked in message.refusal
    )
    async with c.chat.completions.stream(
        model="sim-chat", messages=user(asked), response_format=Verdict
    ) as stream:
        kinds = [e.type async for e in stream]
        final = await stream.get_final_completion()
    assert "refusal.delta" in kinds and "refusal.done" in kinds and "content.delta" not in kinds
    assert final.choices[0].message.refusal == message.refusal

    parsed = await c.responses.parse(model="sim-chat", input=asked, text_format=Verdict)
    assert parsed.output_parsed is None
    [part] = parsed.output[0].content  # type: ignore[union-attr]
    assert part.type == "refusal" and part.refusal == message.refusal
    async with c.responses.stream(model="sim-chat", input=asked, text_format=Verdict) as rs:
        events = [e async for e in rs]
        final_response = await rs.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.refusal.delta")
    assert deltas == message.refusal
    [done] = [e for e in events if e.type == "response.refusal.done"]
    assert done.refusal == message.refusal
    assert final_response.output[0].content[0].refusal == message.refusal  # type: ignore[union-attr]
    await c.close()
