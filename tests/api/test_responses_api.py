"""OpenAI's Responses API (``POST /v1/responses``) through sekisho, with the official client:
plain and streamed answers, everything the upstream would read inspected and rewritten as in
chat, the answer's texts re-identified and filtered (also split across events, and in the
repeated "done" events and the final response), provider-side state and hosted tools refused
unless the tenant allows them, only endpoints with the Responses API routed to, and every
request in the ledger."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest

from harness import Harness, ledger_entries, receipt, request

MY_NUMBER = "1234 5678 9018"  # a valid check digit
EMAIL = "taro@example.co.jp"
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "find_orders",
        "description": "Look up a customer's orders",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]


def tenant(
    output: dict[str, Any] | None = None, features: list[str] | None = None
) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        demo = raw["tenants"]["demo"]
        demo["policy"]["classification"] = {"actions": {"EMAIL": "pseudonymise"}}
        demo["detection"]["output"] = output or {"action": "none", "types": []}
        if features is not None:
            demo["provider_features"] = features

    return mutate


@pytest.fixture
def gateway(gateways: Callable[..., Harness]) -> Callable[..., Harness]:
    return lambda mutate=None, **sim: gateways(mutate or tenant(), keep_bodies=True, **sim)


def client(h: Harness) -> openai.OpenAI:
    return openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)


def sent_body(h: Harness, endpoint: str) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(h.sims[endpoint].stats.bodies[-1])
    return body


def stream_events(h: Harness, via: openai.OpenAI | None = None, **kw: Any) -> tuple[list[Any], Any]:
    """Every event of a streamed response as the SDK parses it, and the raw response (sent
    with ``via``, else with a new key's client)."""
    with (via or client(h)).responses.with_streaming_response.create(stream=True, **kw) as raw:
        return list(raw.parse()), raw


def test_a_response_is_served_with_sovereignty_headers_usage_and_a_receipt(
    gateway: Callable[..., Harness],
) -> None:
    h = gateway()
    raw = client(h).responses.with_raw_response.create(
        model="chat-default", input="What is sekisho?", instructions="Answer in one line."
    )
    resp = raw.parse()
    endpoint = raw.headers["x-sekisho-endpoint"]
    assert endpoint == "sim-domestic-tokyo"  # chat-default is an alias served only there
    assert raw.headers["x-sekisho-jurisdiction"] == "JP/tokyo"
    assert "SIMULATOR] You said: What is sekisho?" in resp.output_text
    assert resp.usage is not None and resp.usage.input_tokens > 0
    assert resp.usage.output_tokens > 0
    sent = sent_body(h, endpoint)
    assert h.sims[endpoint].stats.paths[-1] == "/v1/responses"
    assert sent["model"] == "llama-3.1-swallow-70b"  # the alias, resolved
    assert sent["instructions"] == "Answer in one line."
    # The Responses API keeps every response unless told not to; the tenant has not allowed it.
    assert sent["store"] is False
    rid = raw.headers["x-sekisho-request-id"]
    r = receipt(h, rid, h.key())
    assert r.status_code == 200, r.text
    decision, outcome = ledger_entries(r.json())
    assert decision["model"] == "chat-default"
    assert outcome is not None and outcome["status"] == 200
    assert outcome["prompt_tokens"] == resp.usage.input_tokens
    assert outcome["completion_tokens"] == resp.usage.output_tokens


def test_personal_data_anywhere_in_the_request_is_inspected_before_it_is_sent(
    gateway: Callable[..., Harness],
) -> None:
    """An e-mail address in the instructions, a message part, an earlier tool call's output, a
    tool's description and the metadata: the tenant redacts addresses, and none reaches the
    endpoint. A My Number beside them makes the request restricted: only the domestic
    operator may see it."""

    def redacting(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["policy"]["classification"] = {"actions": {"EMAIL": "redact"}}

    h = gateway(redacting)
    tools = json.loads(json.dumps(TOOLS))
    tools[0]["description"] = f"Look up the orders of {EMAIL}"
    raw = client(h).responses.with_raw_response.create(
        model="gpt-4o",
        instructions=f"The customer is {EMAIL}.",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": f"宛先は{EMAIL}"}]},
            {"type": "function_call", "call_id": "c1", "name": "find_orders", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": f"owner {EMAIL}"},
            {"role": "user", "content": f"マイナンバーは{MY_NUMBER}"},
        ],
        tools=tools,
        metadata={"customer": EMAIL},
    )
    assert raw.headers["x-sekisho-classification"] == "restricted"
    endpoint = raw.headers["x-sekisho-endpoint"]
    assert endpoint == "sim-domestic-tokyo"
    sent = h.sims[endpoint].stats.bodies[-1]
    assert EMAIL.encode() not in sent, sent.decode()
    body = orjson.loads(sent)
    assert body["instructions"] == "The customer is [EMAIL]."
    assert body["input"][2]["output"] == "owner [EMAIL]"
    assert body["tools"][0]["description"] == "Look up the orders of [EMAIL]"
    assert body["tools"][0]["name"] == "find_orders"  # identifiers stay as they were
    assert body["input"][1]["call_id"] == "c1"


@pytest.mark.parametrize("stream", [False, True])
def test_a_pseudonym_in_the_answer_is_re_identified_even_split_across_events(
    gateway: Callable[..., Harness], stream: bool
) -> None:
    h = gateway(chunk_chars=5)  # deltas of five characters split <EMAIL_1>
    question = f"{EMAIL} に連絡して"
    if stream:
        events, raw = stream_events(h, model="gpt-4o", input=question)
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        done = next(e for e in events if e.type == "response.output_text.done")
        final = events[-1]
        assert final.type == "response.completed"
        text = final.response.output_text
        assert deltas == done.text == text  # what the client pieced together is what it got
        numbers = [e.sequence_number for e in events]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    else:
        raw = client(h).responses.with_raw_response.create(model="gpt-4o", input=question)
        text = raw.parse().output_text
    assert f"You said: {question}" in text
    sent = h.sims[raw.headers["x-sekisho-endpoint"]].stats.bodies[-1]
    assert EMAIL.encode() not in sent and b"<EMAIL_1>" in sent  # the upstream saw the pseudonym


@pytest.mark.parametrize("stream", [False, True])
def test_the_output_rule_masks_every_text_of_the_answer(
    gateway: Callable[..., Harness], stream: bool
) -> None:
    """Masked in the deltas, in the done events and in the final response alike: an SDK that
    reads only ``response.completed`` must not get what the deltas withheld."""
    h = gateway(tenant(output={"action": "mask", "types": ["EMAIL"]}), chunk_chars=4)
    question = f"mail {EMAIL} now"
    if stream:
        events, raw = stream_events(h, model="gpt-4o", input=question)
        blob = json.dumps([e.model_dump() for e in events], ensure_ascii=False)
        assert EMAIL not in blob and "<EMAIL_1>" not in blob
        text = events[-1].response.output_text
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert deltas == text
    else:
        raw = client(h).responses.with_raw_response.create(model="gpt-4o", input=question)
        assert raw.headers["x-sekisho-output"] == "masked"
        text = raw.parse().output_text
        assert EMAIL not in raw.text
    assert "mail [EMAIL] now" in text


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_arguments_are_re_identified_and_stay_valid_json(
    gateway: Callable[..., Harness], stream: bool
) -> None:
    h = gateway(chunk_chars=3)
    question = f"{EMAIL} の注文"
    if stream:
        events, _ = stream_events(h, model="gpt-4o", input=question, tools=TOOLS)
        args = "".join(
            e.delta for e in events if e.type == "response.function_call_arguments.delta"
        )
        done = next(e for e in events if e.type == "response.function_call_arguments.done")
        assert done.arguments == args
        item = events[-1].response.output[-1]
    else:
        item = client(h).responses.create(model="gpt-4o", input=question, tools=TOOLS).output[-1]
        args = item.arguments
    assert item.type == "function_call" and item.arguments == args
    assert json.loads(args)["query"] == question


def test_cut_ends_the_answer_where_the_identifier_starts_and_marks_it_incomplete(
    gateway: Callable[..., Harness],
) -> None:
    h = gateway(tenant(output={"action": "cut", "types": ["EMAIL"]}))
    raw = client(h).responses.with_raw_response.create(model="gpt-4o", input=f"a {EMAIL} b")
    resp = raw.parse()
    assert raw.headers["x-sekisho-output"] == "cut"
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "content_filter"
    assert resp.output_text.endswith("You said: a ")
    events, _ = stream_events(h, model="gpt-4o", input=f"a {EMAIL} b")
    assert events[-1].type == "response.incomplete"
    assert EMAIL not in json.dumps([e.model_dump() for e in events], ensure_ascii=False)


def test_reasoning_summaries_get_what_the_answer_gets(gateway: Callable[..., Harness]) -> None:
    h = gateway(tenant(output={"action": "mask", "types": ["EMAIL"]}), reasoning=True)
    events, _ = stream_events(h, model="gpt-4o", input=f"write to {EMAIL}")
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert "[EMAIL]" in summary and EMAIL not in summary
    final = events[-1].response
    assert final.output[0].type == "reasoning"
    assert final.output[0].summary[0].text == summary


def test_the_stream_names_each_event_and_ends_without_done(
    gateway: Callable[..., Harness],
) -> None:
    h = gateway()
    r = request(
        "POST",
        f"{h.base_url}/responses",
        json_body={"model": "gpt-4o", "input": "hi", "stream": True},
        headers={"authorization": f"Bearer {h.key()}"},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in r.text.split("\n\n") if b.strip()]
    for block in blocks:
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data[6:])["type"] == name[7:]
    assert blocks[-1].startswith("event: response.completed")
    assert "[DONE]" not in r.text


FEATURE_REQUESTS: dict[str, tuple[dict[str, Any], str, str]] = {
    "previous_response_id": ({"previous_response_id": "resp_abc"}, "store", "previous_response_id"),
    "prompt template": ({"prompt": {"id": "pmpt_abc", "version": "2"}}, "store", "prompt"),
    "web_search": ({"tools": [{"type": "web_search"}]}, "web_search", "tools[0].type"),
    "mcp": (
        {"tools": [{"type": "mcp", "server_label": "x", "server_url": "https://mcp.example"}]},
        "mcp",
        "tools[0].type",
    ),
}


def test_store_true_is_kept_by_sekisho_in_the_home_region_not_by_the_provider(
    gateway: Callable[..., Harness],
) -> None:
    """OpenAI's default, written out by many clients: accepted without the store leave; the
    provider is told not to keep it, sekisho keeps it and reads it back."""
    h = gateway()
    c = client(h)
    raw = c.responses.with_raw_response.create(model="gpt-4o", input="hello", store=True)
    assert sent_body(h, raw.headers["x-sekisho-endpoint"])["store"] is False
    first = raw.parse()
    assert c.responses.retrieve(first.id).id == first.id
    assert c.responses.create(model="gpt-4o", input="and?", previous_response_id=first.id).id


@pytest.mark.parametrize("stream", [False, True])
def test_the_answer_echoes_the_request_as_the_client_sent_it(
    gateway: Callable[..., Harness], stream: bool
) -> None:
    """The upstream saw placeholders and no previous_response_id of the client's (sekisho
    continued the conversation itself); the response object echoes the client's own."""
    h = gateway()
    c = client(h)
    first = c.responses.create(model="gpt-4o", input="hello").id
    ask: dict[str, Any] = {
        "model": "gpt-4o",
        "input": "and then?",
        "instructions": f"Reply to {EMAIL}",
        "metadata": {"owner": EMAIL},
        "user": EMAIL,
        "previous_response_id": first,
    }
    if stream:
        events, raw = stream_events(h, via=c, **ask)
        objects = [e.response for e in events if hasattr(e, "response")]
        assert len(objects) >= 2  # created ... completed
    else:
        raw = c.responses.with_raw_response.create(**ask)
        objects = [raw.parse()]
    sent = sent_body(h, raw.headers["x-sekisho-endpoint"])
    assert EMAIL not in json.dumps(sent) and "previous_response_id" not in sent
    for got in objects:
        assert got.previous_response_id == first
        assert got.instructions == f"Reply to {EMAIL}"
        assert got.metadata == {"owner": EMAIL} and got.user == EMAIL


@pytest.mark.parametrize("case", sorted(FEATURE_REQUESTS))
def test_provider_state_and_hosted_tools_need_the_tenants_leave(
    gateway: Callable[..., Harness], case: str
) -> None:
    extra, feature, param = FEATURE_REQUESTS[case]
    h = gateway()
    before = h.bytes_received()
    with pytest.raises(openai.BadRequestError) as err:
        client(h).responses.create(model="gpt-4o", input="hello", extra_body=extra)
    body = err.value.body
    assert isinstance(body, dict)
    assert body["code"] == "provider_feature_not_allowed"
    assert body["param"] == param
    assert f"provider_features: [{feature}]" in body["message"]
    assert h.bytes_received() == before  # nothing was sent
    if case == "previous_response_id":
        return  # with the leave, only ids sekisho issued: see the bare-id test below
    allowed = gateway(tenant(features=[feature]))
    raw = client(allowed).responses.with_raw_response.create(
        model="gpt-4o", input="hello", extra_body=extra
    )
    sent = sent_body(allowed, raw.headers["x-sekisho-endpoint"])
    for key, value in extra.items():
        assert sent[key] == value
    assert "store" not in sent or sent["store"] is not False or feature != "store"


def test_a_background_response_comes_through_sekisho_or_not_at_all(
    gateway: Callable[..., Harness],
) -> None:
    """Run in the background and fetched from the provider later, an answer would pass neither
    output inspection nor the ledger: refused, even with the store leave, unless streamed."""
    h = gateway()
    with pytest.raises(openai.BadRequestError) as err:  # no leave to keep anything there
        client(h).responses.create(model="gpt-4o", input="hello", background=True)
    assert err.value.param == "background" and "provider_features: [store]" in err.value.message
    kept = gateway(tenant(features=["store"]))
    before = kept.bytes_received()
    with pytest.raises(openai.BadRequestError) as err:
        client(kept).responses.create(model="gpt-4o", input="hello", background=True)
    assert err.value.code == "provider_feature_not_allowed" and err.value.param == "background"
    assert "stream: true" in err.value.message
    assert kept.bytes_received() == before  # nothing was sent
    events, raw = stream_events(kept, model="gpt-4o", input="hello", background=True)
    assert events[-1].type == "response.completed"
    assert sent_body(kept, raw.headers["x-sekisho-endpoint"])["background"] is True


def test_responses_sub_apis_sekisho_does_not_serve_are_404_not_405(
    gateway: Callable[..., Harness],
) -> None:
    h = gateway()
    with pytest.raises(openai.NotFoundError) as err:
        client(h).responses.input_tokens.count(model="gpt-4o", input="hello")
    assert err.value.code == "unknown_url"
    assert "POST '/v1/responses/input_tokens'" in err.value.message


def test_only_endpoints_with_the_responses_api_are_routed_to(
    gateways: Callable[..., Harness],
) -> None:
    def mutate(raw: dict[str, Any]) -> None:
        for ep in raw["endpoints"]:
            ep["responses_api"] = ep["id"] == "sim-global-japaneast"

    h = gateways(mutate, keep_bodies=True)
    c = client(h)
    for _ in range(6):  # gpt-4o is also served in Tokyo, which has no Responses API
        raw = c.responses.with_raw_response.create(model="gpt-4o", input="hi")
        assert raw.headers["x-sekisho-endpoint"] == "sim-global-japaneast"
    with pytest.raises(openai.BadRequestError) as err:
        c.responses.create(model="chat-default", input="hi")  # served only in Tokyo
    assert isinstance(err.value.body, dict)
    assert err.value.body["code"] == "model_not_supported"
    assert "responses_api: true" in err.value.body["message"]
    assert "sim-domestic-tokyo" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        c.responses.create(model="text-embedding-3-small", input="hi")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-4o"}, "input"),
        ({"model": "gpt-4o", "input": 42}, "input"),
        ({"model": "gpt-4o", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"model": "gpt-4o", "input": [{"role": "user"}]}, "input[0].content"),
        (
            {"model": "gpt-4o", "input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input[0].content[0].text",
        ),
        ({"model": "gpt-4o", "input": "x", "instructions": ["a"]}, "instructions"),
        ({"model": "gpt-4o", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "gpt-4o", "input": "x", "tools": [{}]}, "tools[0].type"),
        ({"input": "x"}, "model"),
    ],
)
def test_a_malformed_request_is_a_400_naming_the_parameter(
    gateway: Callable[..., Harness], body: dict[str, Any], param: str
) -> None:
    h = gateway()
    before = h.bytes_received()
    r = request(
        "POST",
        f"{h.base_url}/responses",
        json_body=body,
        headers={"authorization": f"Bearer {h.key()}"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert h.bytes_received() == before


def test_a_stream_that_breaks_ends_with_an_error_event_and_is_recorded(
    gateway: Callable[..., Harness],
) -> None:
    h = gateway()
    for name in h.sims:
        h.fault(name, mode="drop_midstream", count=1)
    events, raw = stream_events(h, model="gpt-4o", input="tell me a long story please")
    assert events[-1].type == "error"
    assert events[-1].code == "upstream_stream_broken"
    assert not any(e.type == "response.completed" for e in events)
    r = receipt(h, raw.headers["x-sekisho-request-id"], h.key())
    _, outcome = ledger_entries(r.json())
    assert outcome is not None and outcome["status"] == 502


async def test_the_async_client_streams_a_response(gateway: Callable[..., Harness]) -> None:
    h = gateway()
    c = openai.AsyncOpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
    async with c.responses.stream(model="gpt-4o", input="async hello") as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_response()
    assert "You said: async hello" in final.output_text
    await c.close()


def _keepalive(raw: dict[str, Any]) -> None:
    tenant()(raw)
    raw["server"]["stream_keepalive_seconds"] = 0.2
    for ep in raw["endpoints"]:
        ep["timeouts"] = {"connect": 2, "first_byte": 5, "total": 10}


def test_a_slow_response_is_kept_alive_and_a_failure_then_is_a_failed_response(
    gateway: Callable[..., Harness],
) -> None:
    """With stream_keepalive_seconds, a Responses stream starts before its endpoint answers:
    SSE comments first (the SDK ignores them), then the events; if every endpoint fails
    meanwhile, a failed response as the Responses API streams one (response.created, then
    response.failed with the error), and the ledger says 502."""
    h = gateway(_keepalive, delay_ms=700)
    events, raw = stream_events(h, model="gpt-4o", input="think first")
    assert raw.headers["x-sekisho-keepalive"] == "on"
    assert events[-1].type == "response.completed"
    assert "You said: think first" in events[-1].response.output_text
    for name in h.sims:
        h.fault(name, mode="status", status=503, delay_ms=700)
    events, raw = stream_events(h, model="gpt-4o", input="think again")
    assert [e.type for e in events] == ["response.created", "response.failed"]
    error = events[1].response.error
    assert error is not None and error.code == "upstream_failed"
    assert "Every eligible endpoint failed" in error.message
    r = receipt(h, raw.headers["x-sekisho-request-id"], h.key())
    _, outcome = ledger_entries(r.json())
    assert outcome is not None and outcome["status"] == 502


def test_a_client_leaving_a_response_stream_is_recorded(gateway: Callable[..., Harness]) -> None:
    import time

    from harness import ledger_incomplete

    h = gateway(chunk_chars=2, chunk_delay_ms=20)  # a long, slow stream
    with client(h).responses.with_streaming_response.create(
        model="gpt-4o", input="a long answer, please", stream=True
    ) as raw:
        for event in raw.parse():
            if event.type == "response.output_text.delta":
                break  # the client goes away mid-answer
    gw: Any = h.gateway
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and gw.in_flight:
        time.sleep(0.02)
    assert gw.in_flight == 0
    assert ledger_incomplete(h) == []  # its decision has an outcome
    _, outcome = ledger_entries(receipt(h, raw.headers["x-sekisho-request-id"], h.key()).json())
    assert outcome is not None and outcome["status"] == 499


def test_the_model_list_says_which_apis_each_model_can_be_called_through(
    gateway: Callable[..., Harness],
) -> None:
    h = gateway()
    r = request("GET", f"{h.base_url}/models", headers={"authorization": f"Bearer {h.key()}"})
    apis = {m["id"]: m["sekisho"]["apis"] for m in r.json()["data"]}
    # chat-default is served only in Tokyo, whose entry declares both; gpt-4.1 only in the US,
    # whose entry declares the Responses API but not legacy completions.
    assert apis["chat-default"] == ["chat.completions", "responses", "completions"]
    assert apis["gpt-4.1"] == ["chat.completions", "responses"]
    assert apis["text-embedding-3-small"] == ["embeddings"]


@pytest.mark.parametrize(
    ("path", "answer"),
    [
        # a chat answer to a Responses request: its text is where Responses inspection never looks
        ("responses", {"id": "x", "choices": [{"message": {"content": f"No. {MY_NUMBER}"}}]}),
        ("chat", {"id": "x", "output": [{"type": "message", "content": []}]}),
    ],
)
def test_an_answer_in_another_apis_shape_is_an_upstream_error_not_passed_on(
    gateway: Callable[..., Harness], path: str, answer: dict[str, Any]
) -> None:
    h = gateway()
    for name in h.sims:
        h.fault(name, mode="body", body=json.dumps(answer))
    c = client(h)
    with pytest.raises(openai.APIStatusError) as err:
        if path == "responses":
            c.responses.create(model="gpt-4o", input="hi")
        else:
            c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 502
    assert "not a" in err.value.message and MY_NUMBER not in err.value.message


def test_a_chat_stream_of_another_apis_events_is_cut_not_passed_on(
    gateway: Callable[..., Harness],
) -> None:
    """A chat stream whose events carry no choices (here: Responses API events, as a server
    mapping the path to the other API would send): nothing of them reaches the client, and
    since nothing has, every other endpoint is tried before the client hears a 502."""
    h = gateway()
    event = {"type": "response.output_text.delta", "delta": f"No. {MY_NUMBER}"}
    sse = f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n"
    for name in h.sims:
        h.fault(name, mode="sse", body=sse)
    r = request(
        "POST",
        f"{h.base_url}/chat/completions",
        json_body={
            "model": "gpt-4o",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
        headers={"authorization": f"Bearer {h.key()}"},
    )
    assert MY_NUMBER not in r.text
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_failed"
    assert "not a chat stream" in r.text
    _, outcome = ledger_entries(receipt(h, r.headers["x-sekisho-request-id"], h.key()).json())
    assert outcome is not None and outcome["status"] == 502


# -- conversations kept by sekisho, in the tenant's home region --------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_conversation_continues_from_the_tenants_own_store(
    gateway: Callable[..., Harness], stream: bool
) -> None:
    """previous_response_id without provider-side state: the earlier turn comes back from the
    home-region store (its pseudonyms restored), goes upstream as input, and is inspected
    afresh; the provider is sent store: false and no previous_response_id."""
    h = gateway()
    c = client(h)
    if stream:
        events, _ = stream_events(h, c, model="gpt-4o", input=f"My address is {EMAIL}.")
        first_id = events[-1].response.id
        assert all(e.response.id == first_id for e in events if hasattr(e, "response"))
    else:
        first_id = c.responses.create(model="gpt-4o", input=f"My address is {EMAIL}.").id
    assert first_id.startswith("resp_sk")
    raw = c.responses.with_raw_response.create(
        model="gpt-4o", input="What did I say?", previous_response_id=first_id
    )
    second = raw.parse()
    assert second.id.startswith("resp_sk") and second.id != first_id
    sent = sent_body(h, raw.headers["x-sekisho-endpoint"])
    assert "previous_response_id" not in sent and sent["store"] is False
    turns = sent["input"]
    assert turns[0] == {"role": "user", "content": "My address is <EMAIL_1>."}  # pseudonymised
    assert turns[1]["role"] == "assistant" and "<EMAIL_1>" in turns[1]["content"][0]["text"]
    assert turns[-1] == {"role": "user", "content": "What did I say?"}
    assert EMAIL not in json.dumps(sent)
    # A third turn chains through the second: the whole conversation, once.
    raw = c.responses.with_raw_response.create(
        model="gpt-4o", input="And now?", previous_response_id=second.id
    )
    sent = sent_body(h, raw.headers["x-sekisho-endpoint"])
    users = [t["content"] for t in sent["input"] if t.get("role") == "user"]
    assert users == ["My address is <EMAIL_1>.", "What did I say?", "And now?"]


def test_a_continued_conversation_is_classified_as_a_whole(gateway: Callable[..., Harness]) -> None:
    """An e-mail address in the first turn makes a later "go on" confidential too; a My Number
    makes its turn restricted, which the example tenant keeps without content (retention
    metadata): that conversation cannot be continued from sekisho's store."""
    h = gateway(lambda raw: None)
    c = client(h)
    first = c.responses.create(model="gpt-4o", input=f"返信先は {EMAIL} です")
    raw = c.responses.with_raw_response.create(
        model="gpt-4o", input="続けて", previous_response_id=first.id
    )
    assert raw.headers["x-sekisho-classification"] == "confidential"
    alone = c.responses.with_raw_response.create(model="gpt-4o", input="続けて")
    assert alone.headers["x-sekisho-classification"] == "internal"
    restricted = c.responses.create(model="chat-default", input=f"マイナンバーは {MY_NUMBER} です")
    with pytest.raises(openai.BadRequestError) as err:
        c.responses.create(model="gpt-4o", input="続けて", previous_response_id=restricted.id)
    assert isinstance(err.value.body, dict)
    assert "retention mode 'metadata'" in err.value.body["message"]


def unkept(gateways: Callable[..., Harness], case: str) -> tuple[Harness, str, openai.OpenAI]:
    """A gateway with tenants demo and other, a response id that sekisho does not keep for
    the asker in the given ``case``, and the asker's client."""

    def mutate(raw: dict[str, Any]) -> None:
        tenant()(raw)
        raw["tenants"]["other"] = json.loads(json.dumps(raw["tenants"]["demo"]))
        if case == "not kept":
            raw["tenants"]["demo"]["retention"] = {"mode": "metadata", "days": 7}
        if case == "provider keeps":
            raw["tenants"]["demo"]["provider_features"] = ["store"]

    h = gateways(mutate, keep_bodies=True)
    c = client(h)
    first = c.responses.create(model="gpt-4o", input="hello").id
    chat = c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hello"}]
    )
    wanted = {
        "unknown": "resp_sk0000000000000000000000",
        # a chat exchange's id dressed as a response's
        "a chat request": "resp_sk" + chat.headers["x-sekisho-request-id"].removeprefix("req_"),
        "foreign": "resp_68af0a1b2c3d",
    }.get(case, first)
    if case != "other tenant":
        return h, wanted, c  # the caller that made it (another key's reads: a test below)
    asker = openai.OpenAI(base_url=h.base_url, api_key=h.key("other"), max_retries=0)
    return h, wanted, asker


@pytest.mark.parametrize("case", ["unknown", "other tenant", "not kept", "a chat request"])
def test_a_response_sekisho_does_not_keep_cannot_be_continued(
    gateways: Callable[..., Harness], case: str
) -> None:
    h, previous, asker = unkept(gateways, case)
    before = h.bytes_received()
    with pytest.raises(openai.BadRequestError) as err:
        asker.responses.create(model="gpt-4o", input="more", previous_response_id=previous)
    body = err.value.body
    assert isinstance(body, dict)
    assert body["code"] == "previous_response_not_found"
    assert body["param"] == "previous_response_id"
    if case == "not kept":
        assert "retention mode 'metadata'" in body["message"]
    assert h.bytes_received() == before


# -- reading kept responses back: GET /v1/responses/{id}, its input items --------------------


def admin_records(h: Harness, action: str) -> list[Any]:
    from sekisho.ledger import parse_record
    from sekisho.ledger.storage import open_storage

    storage = open_storage(h.data_dir)
    try:
        records = [parse_record(leaf) for _, leaf, _, _, _ in storage.scan(0, storage.tree_size())]
    finally:
        storage.close()
    return [r for r in records if r.kind == "admin" and r.action == action]  # type: ignore[union-attr]


def test_a_kept_response_is_retrieved_as_the_client_got_it_and_the_read_is_in_the_ledger(
    gateway: Callable[..., Harness],
) -> None:
    h = gateway()
    c = client(h)
    first = c.responses.create(
        model="gpt-4o", instructions="Be brief.", input=f"My address is {EMAIL}."
    )
    got = c.responses.retrieve(first.id)
    assert got.id == first.id and got.object == "response"
    assert got.status == "completed" and got.model == "gpt-4o"
    assert got.output_text == first.output_text  # its pseudonyms restored, as delivered
    assert got.instructions == "Be brief."
    assert got.usage is not None and first.usage is not None
    assert got.usage.input_tokens == first.usage.input_tokens
    assert got.usage.output_tokens == first.usage.output_tokens
    assert abs(got.created_at - first.created_at) < 5
    reads = admin_records(h, "responses.retrieve")
    assert [r.target for r in reads] == [first.id]
    assert reads[0].details["tenant"] == "demo"


def test_a_kept_responses_input_items_are_listed_and_paged(gateway: Callable[..., Harness]) -> None:
    h = gateway()
    c = client(h)
    first = c.responses.create(model="gpt-4o", input=f"My address is {EMAIL}.")
    second = c.responses.create(
        model="gpt-4o", input="What did I say?", previous_response_id=first.id
    )
    newest_first = c.responses.input_items.list(second.id)
    texts = [i.content[0].text for i in newest_first.data]  # type: ignore[union-attr]
    assert texts[0] == "What did I say?"
    assert texts[-1] == f"My address is {EMAIL}."  # the client's own words, restored
    assert [i.role for i in newest_first.data] == ["user", "assistant", "user"]  # type: ignore[union-attr]
    ids = [i.id for i in newest_first.data]
    assert len(set(ids)) == 3
    page = c.responses.input_items.list(second.id, order="asc", limit=1)
    assert [i.id for i in page.data] == [ids[-1]] and page.has_more
    rest = c.responses.input_items.list(second.id, order="asc", limit=5, after=ids[-1])
    assert [i.id for i in rest.data] == ids[-2::-1] and not rest.has_more
    auto = [i.id for i in c.responses.input_items.list(second.id, order="asc", limit=1)]
    assert auto == ids[::-1]  # the SDK's auto-paging follows after= to the end
    with pytest.raises(openai.BadRequestError) as err:
        c.responses.input_items.list(second.id, limit=0)
    assert isinstance(err.value.body, dict) and err.value.body["param"] == "limit"
    assert len(admin_records(h, "responses.input_items")) >= 4


def test_an_application_cannot_delete_what_the_retention_policy_keeps(
    gateway: Callable[..., Harness],
) -> None:
    h = gateway()
    c = client(h)
    first = c.responses.create(model="gpt-4o", input="hello")
    with pytest.raises(openai.PermissionDeniedError) as err:
        c.responses.delete(first.id)
    assert isinstance(err.value.body, dict)
    assert err.value.body["code"] == "retention_policy"
    assert "利用停止" in err.value.body["message"]
    assert c.responses.retrieve(first.id).id == first.id  # still kept
    with pytest.raises(openai.BadRequestError):
        c.responses.cancel(first.id)
    # One that is not kept is not found, as GET says: no claim that a policy keeps it.
    with pytest.raises(openai.NotFoundError) as missing:
        c.responses.delete("resp_sk" + "0" * 24)
    assert isinstance(missing.value.body, dict)
    assert missing.value.body["code"] == "response_not_found"


def test_streaming_a_kept_response_is_refused_not_an_empty_stream(
    gateway: Callable[..., Harness],
) -> None:
    """``responses.retrieve(id, stream=True)`` resumes a background response's events: sekisho
    runs none, and its JSON answer read as a stream gave the SDK no event and no error."""
    h = gateway()
    c = client(h)
    kept = c.responses.create(model="gpt-4o", input="hello")
    with pytest.raises(openai.BadRequestError) as err:
        list(c.responses.retrieve(kept.id, stream=True))
    assert isinstance(err.value.body, dict) and err.value.body["param"] == "stream"
    assert "background" in err.value.body["message"]
    assert c.responses.retrieve(kept.id, stream=False).id == kept.id
    assert c.responses.retrieve(kept.id).output_text == kept.output_text


@pytest.mark.parametrize(
    "case", ["unknown", "other tenant", "not kept", "a chat request", "provider keeps", "foreign"]
)
def test_retrieving_a_response_sekisho_does_not_keep_is_a_404_saying_why(
    gateways: Callable[..., Harness], case: str
) -> None:
    h, wanted, asker = unkept(gateways, case)
    with pytest.raises(openai.NotFoundError) as err:
        asker.responses.retrieve(wanted)
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == "response_not_found"
    why = {
        "not kept": "retention mode 'metadata'",
        "provider keeps": "not fetched through sekisho",
        "foreign": "not an id of a response sekisho keeps",
    }.get(case, "sekisho keeps no such response for this tenant")
    assert why in body["message"]
    assert admin_records(h, "responses.retrieve") == []  # nothing was read


def test_reading_a_kept_response_needs_a_key(gateway: Callable[..., Harness]) -> None:
    h = gateway()
    first = client(h).responses.create(model="gpt-4o", input="hello")
    r = request("GET", f"{h.base_url}/responses/{first.id}")
    assert r.status_code == 401
    r = request(
        "GET", f"{h.base_url}/responses/{first.id}/other",
        headers={"authorization": f"Bearer {h.key()}"},
    )  # fmt: skip
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"


# -- conversations kept at a provider: back to the endpoint that keeps them ------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_conversation_kept_at_a_provider_goes_back_to_the_endpoint_that_keeps_it(
    gateway: Callable[..., Harness], stream: bool
) -> None:
    """gpt-4o is served by three endpoints; a provider's previous_response_id means something
    only to the one that made it. The id the client sees names that endpoint, and every
    continuation goes there, with the provider's own id."""
    from sekisho._provider_state import unwrap

    h = gateway(tenant(features=["store"]))
    c = client(h)
    if stream:
        events, raw = stream_events(h, model="gpt-4o", input="hello")
        ids = {e.response.id for e in events if hasattr(e, "response")}
        assert len(ids) == 1
        first = ids.pop()
    else:
        raw = c.responses.with_raw_response.create(model="gpt-4o", input="hello")
        first = raw.parse().id
    origin = raw.headers["x-sekisho-endpoint"]
    kept_at = unwrap(first)
    assert kept_at is not None and kept_at[0] == origin and first.startswith("resp_sx")
    for _ in range(8):
        again = c.responses.with_raw_response.create(
            model="gpt-4o", input="and then?", previous_response_id=first
        )
        assert again.headers["x-sekisho-endpoint"] == origin
        assert sent_body(h, origin)["previous_response_id"] == kept_at[2]
    others = {k: v for k, v in h.bytes_received().items() if k != origin}
    h.reset_stats()
    h.fault(origin, mode="status", status=503)  # it fails: no other can answer instead
    with pytest.raises(openai.APIStatusError) as err:
        c.responses.create(model="gpt-4o", input="and then?", previous_response_id=first)
    assert err.value.status_code == 502 and origin in str(err.value.body)
    assert all(n == 0 for k, n in h.bytes_received().items() if k != origin), others


def test_a_providers_bare_response_id_is_refused_for_it_may_be_another_tenants(
    gateway: Callable[..., Harness],
) -> None:
    """Every tenant with the store leave reaches the same provider account: the provider's
    own id inside a resp_sx id (or any id sekisho did not issue) would continue whichever
    tenant's conversation it names. Only sealed ids are continued."""
    from sekisho._provider_state import unwrap

    h = gateway(tenant(features=["store"]))
    c = client(h)
    first = c.responses.create(model="gpt-4o", input="hello").id
    kept_at = unwrap(first)
    assert kept_at is not None
    before = h.bytes_received()
    for bare in (kept_at[2], "resp_0123456789abcdef"):
        with pytest.raises(openai.BadRequestError) as err:
            c.responses.create(model="gpt-4o", input="and then?", previous_response_id=bare)
        assert err.value.code == "previous_response_not_found"
        assert "did not issue" in err.value.message
    assert h.bytes_received() == before  # nothing sent anywhere
    # The sealed id still continues.
    assert c.responses.create(model="gpt-4o", input="and?", previous_response_id=first).id


def test_a_continuation_the_policy_keeps_from_that_endpoint_is_refused_saying_so(
    gateway: Callable[..., Harness],
) -> None:
    """The first turn went to the US (gpt-4.1 is served only there); a continuation carrying
    a My Number may not go abroad, and no other endpoint knows the conversation: 403, each
    endpoint's reason given, nothing sent."""
    h = gateway(tenant(features=["store"]))
    c = client(h)
    first = c.responses.with_raw_response.create(model="gpt-4.1", input="hello")
    assert first.headers["x-sekisho-endpoint"] == "sim-global-useast"
    before = h.bytes_received()
    with pytest.raises(openai.PermissionDeniedError) as err:
        c.responses.create(
            model="gpt-4o",
            input=f"マイナンバーは {MY_NUMBER} です",
            previous_response_id=first.parse().id,
        )
    message = str(err.value.body)
    assert "sim-global-useast" in message
    assert "previous_response_id is kept at sim-global-useast" in message  # the others' reason
    assert MY_NUMBER not in message
    assert h.bytes_received() == before


def test_a_kept_conversation_is_its_callers_not_every_key_of_the_tenant(
    gateway: Callable[..., Harness],
) -> None:
    """Another app key of the same tenant can neither read nor continue a response it did not
    make (the answer is the one an unknown id gets); the key's successor after a rotation can."""
    from sekisho.identity import KeyStore

    h = gateway()
    key = h.key()
    mine = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0)
    first = mine.responses.create(model="gpt-4o", input=f"My address is {EMAIL}.")
    other = client(h)  # a second app key of tenant demo
    with pytest.raises(openai.NotFoundError) as err:
        other.responses.retrieve(first.id)
    unknown = first.id[:-4] + ("aaaa" if not first.id.endswith("aaaa") else "bbbb")
    with pytest.raises(openai.NotFoundError) as unknown_err:
        other.responses.retrieve(unknown)
    assert err.value.message == unknown_err.value.message.replace(unknown, first.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(first.id)
    with pytest.raises(openai.BadRequestError) as err:
        other.responses.create(model="gpt-4o", input="and?", previous_response_id=first.id)
    assert err.value.code == "previous_response_not_found"

    store = KeyStore(h.data_dir / "identity.db")
    successor, _ = store.rotate(key.removeprefix("sk-sekisho-").split("-")[0], 60)
    rotated = openai.OpenAI(base_url=h.base_url, api_key=successor, max_retries=0)
    assert rotated.responses.retrieve(first.id).id == first.id
    assert rotated.responses.create(
        model="gpt-4o", input="and?", previous_response_id=first.id
    ).id.startswith("resp_sk")

    # An admin who rotates the key over the API holds the successor's secret: it must not
    # read the application's stored prompts and answers through it (content.read has no
    # standing role). Only a key's own rotation (or the operator's command line) carries on.
    admin = h.key(role="admin")
    app_key = h.key()
    app = openai.OpenAI(base_url=h.base_url, api_key=app_key, max_retries=0)
    kept = app.responses.create(model="gpt-4o", input=f"My address is {EMAIL}.")
    app_id = app_key.removeprefix("sk-sekisho-").split("-")[0]
    rotated_by_admin = request(
        "POST",
        f"{h.root}/admin/v1/keys/{app_id}/rotate",
        json_body={"overlap_seconds": 60},
        headers={"authorization": f"Bearer {admin}"},
    )
    assert rotated_by_admin.status_code == 201, rotated_by_admin.text
    through = openai.OpenAI(
        base_url=h.base_url, api_key=rotated_by_admin.json()["key"], max_retries=0
    )
    with pytest.raises(openai.NotFoundError):
        through.responses.retrieve(kept.id)
    with pytest.raises(openai.NotFoundError):
        through.responses.input_items.list(kept.id)
    developer = h.key(role="developer")
    dev_id = developer.removeprefix("sk-sekisho-").split("-")[0]
    as_dev = openai.OpenAI(base_url=h.base_url, api_key=developer, max_retries=0)
    dev_kept = as_dev.responses.create(model="gpt-4o", input="mine")
    rotated_by_itself = request(
        "POST",
        f"{h.root}/admin/v1/keys/{dev_id}/rotate",
        json_body={"overlap_seconds": 60},
        headers={"authorization": f"Bearer {developer}"},
    )
    assert rotated_by_itself.status_code == 201, rotated_by_itself.text
    itself = openai.OpenAI(
        base_url=h.base_url, api_key=rotated_by_itself.json()["key"], max_retries=0
    )
    assert itself.responses.retrieve(dev_kept.id).id == dev_kept.id


def test_a_provider_kept_response_id_is_its_tenants_alone(
    gateways: Callable[..., Harness],
) -> None:
    """Every tenant with the store leave reaches the same provider account through sekisho: an
    id another tenant learned (or one made up from a provider's id) continues nothing, and
    nothing is sent."""
    from sekisho._provider_state import unwrap, wrap

    def two(raw: dict[str, Any]) -> None:
        tenant(features=["store"])(raw)
        raw["tenants"]["other"] = json.loads(json.dumps(raw["tenants"]["demo"]))

    h = gateways(two, keep_bodies=True)
    first = client(h).responses.create(model="gpt-4o", input="hello").id
    endpoint, _, provider_id, _ = unwrap(first) or ("", "", "", {})
    stranger = openai.OpenAI(base_url=h.base_url, api_key=h.key("other"), max_retries=0)
    forged = wrap(provider_id, endpoint, "AAAAAAAAAAAAAAAA")
    for previous in (first, forged):
        before = h.bytes_received()
        with pytest.raises(openai.BadRequestError) as err:
            stranger.responses.create(model="gpt-4o", input="go on", previous_response_id=previous)
        assert err.value.code == "previous_response_not_found"
        assert h.bytes_received() == before
    with pytest.raises(openai.BadRequestError):  # a forged seal fails for the owner too
        client(h).responses.create(model="gpt-4o", input="go on", previous_response_id=forged)


def test_a_kept_response_given_another_requests_id_in_the_store_is_not_served_as_it(
    gateway: Callable[..., Harness],
) -> None:
    """Swapping two records' request_id in the store's database made GET /v1/responses/<A>
    answer 200 with B's conversation: the ciphertexts did not bind the request id."""
    import sqlite3

    h = gateway()
    c = client(h)
    a = c.responses.create(model="gpt-4o", input="ALPHA conversation of app one")
    b = c.responses.create(model="gpt-4o", input="BRAVO conversation of app two")
    db = sqlite3.connect(h.data_dir / "store-jp.db")
    with db:
        (ra,), (rb,) = db.execute("SELECT request_id FROM records ORDER BY created_at").fetchall()
        db.execute("UPDATE records SET request_id = 'swap' WHERE request_id = ?", (ra,))
        db.execute("UPDATE records SET request_id = ? WHERE request_id = ?", (ra, rb))
        db.execute("UPDATE records SET request_id = ? WHERE request_id = 'swap'", (rb,))
    db.close()
    attempts: list[int] = []
    retrying = openai.OpenAI(
        base_url=h.base_url,
        api_key=h.key(),
        max_retries=2,
        http_client=openai.DefaultHttpxClient(
            event_hooks={"response": [lambda r: attempts.append(1)]}
        ),
    )
    with pytest.raises(openai.InternalServerError) as err:
        retrying.responses.retrieve(a.id)
    assert isinstance(err.value.body, dict)
    assert err.value.body["code"] == "store_record_unreadable"
    assert "BRAVO" not in json.dumps(err.value.body)
    assert b.id != a.id
    # Permanent: 500 with x-should-retry: false, which the SDK does not retry (a 503 it did,
    # every attempt another failed read).
    assert err.value.status_code == 500
    assert err.value.response.headers["x-should-retry"] == "false"
    assert len(attempts) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_conversation_kept_at_a_provider_never_reuses_a_placeholder_for_another_value(
    gateway: Callable[..., Harness], stream: bool
) -> None:
    """sekisho does not know what an earlier turn of a conversation kept at the provider
    called <EMAIL_1>: a new value in a later turn numbered from 1 again took the placeholder
    the provider held for another person, and an answer naming it was re-identified as the
    wrong one. Each id carries the numbers used so far; later turns number after them."""
    h = gateway(tenant(features=["store"]))
    c = client(h)

    def turn(text: str, previous: str | None) -> tuple[str, str]:
        extra = {"previous_response_id": previous} if previous else {}
        if stream:
            events, raw = stream_events(h, model="gpt-4o", input=text, **extra)
            ids = {e.response.id for e in events if hasattr(e, "response")}
            assert len(ids) == 1
            rid = ids.pop()
        else:
            raw = c.responses.with_raw_response.create(model="gpt-4o", input=text, **extra)
            rid = raw.parse().id
        return rid, orjson.dumps(sent_body(h, raw.headers["x-sekisho-endpoint"])["input"]).decode()

    first, sent = turn("taro@example.co.jp の注文", None)
    assert "<EMAIL_1>" in sent and "taro@" not in sent
    second, sent = turn("hanako@example.co.jp に送って", first)
    assert "<EMAIL_2>" in sent and "<EMAIL_1>" not in sent and "hanako@" not in sent
    third, sent = turn("ありがとう", second)  # no new value: the numbers carry on
    fourth, sent = turn("jiro@example.co.jp にも", third)
    assert "<EMAIL_3>" in sent and "jiro@" not in sent
    # Old ids (issued before numbers were carried) and a client's own edit still continue.
    assert "~EMAIL-3" in fourth
    assert c.responses.create(
        model="gpt-4o", input="次は?", previous_response_id=fourth.replace("~EMAIL-3", "")
    ).id
