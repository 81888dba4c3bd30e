"""Step 7 (output inspection) reaches every field of an answer that spells its text: a refusal,
and token logprobs. The example's demo tenant masks credit card numbers in answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import Harness

CARD = "4111 1111 1111 1111"
TOKENS = ["Card", ":", " 4111", " 1111", " 1111", " 1111"]
CLEAN = ["All", " clear", "."]


def token_logprobs(tokens: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "token": t,
            "logprob": -0.1,
            "bytes": list(t.encode()),
            "top_logprobs": [{"token": t, "logprob": -0.1, "bytes": list(t.encode())}],
        }
        for t in tokens
    ]


def chat_answer(
    content: str | None, logprobs: Any = None, refusal: str | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if refusal is not None:
        message["refusal"] = refusal
    return {
        "id": "chatcmpl-sim",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9},
    }


def answering(h: Harness, body: str, mode: str = "body") -> None:
    for name in h.sims:
        h.fault(name, mode=mode, body=body)


def client(h: Harness) -> openai.OpenAI:
    return openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)


ASK: Any = [{"role": "user", "content": "card?"}]


def test_logprobs_of_a_masked_answer_are_removed_with_the_text_they_spell(
    gateways: Callable[..., Harness],
) -> None:
    h = gateways()
    lp = {"content": token_logprobs(TOKENS), "refusal": None}
    answering(h, json.dumps(chat_answer("".join(TOKENS), lp)))
    raw = client(h).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=ASK, logprobs=True, top_logprobs=1
    )
    choice = raw.parse().choices[0]
    assert raw.headers["x-sekisho-output"] == "masked"
    assert CARD not in (choice.message.content or "")
    assert choice.logprobs is None
    assert CARD.split()[1] not in raw.http_response.text  # no token of the number at all

    # An answer the rule leaves alone keeps its logprobs.
    lp = {"content": token_logprobs(CLEAN), "refusal": None}
    answering(h, json.dumps(chat_answer("".join(CLEAN), lp)))
    choice = client(h).chat.completions.create(model="gpt-4o", messages=ASK, logprobs=True)
    assert choice.choices[0].logprobs is not None
    assert choice.choices[0].logprobs.content is not None
    assert "".join(t.token for t in choice.choices[0].logprobs.content) == "All clear."


def test_a_refusal_gets_what_the_answer_gets(gateways: Callable[..., Harness]) -> None:
    h = gateways()
    answering(h, json.dumps(chat_answer(None, refusal=f"I won't repeat the card {CARD}")))
    raw = client(h).chat.completions.with_raw_response.create(model="gpt-4o", messages=ASK)
    refusal = raw.parse().choices[0].message.refusal
    assert raw.headers["x-sekisho-output"] == "masked"
    assert refusal is not None and refusal.startswith("I won't repeat the card")
    assert CARD not in refusal and CARD not in raw.http_response.text


def chunk(delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> str:
    event = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    }
    return f"data: {json.dumps(event)}\n\n"


def test_a_streamed_answer_carries_logprobs_only_for_what_it_released_unchanged(
    gateways: Callable[..., Harness],
) -> None:
    """In a stream, text is released only after a look-behind and may still be masked: token
    logprobs go out with the text they spell, and none from the first token whose text was
    masked on (no token of the card at all); a streamed refusal is inspected."""
    h = gateways()
    sse = chunk({"role": "assistant", "content": ""})
    for t in TOKENS:
        sse += chunk({"content": t}, {"content": token_logprobs([t]), "refusal": None})
    sse += chunk({"refusal": f"no: {CARD}"})
    sse += chunk({}, finish="stop") + "data: [DONE]\n\n"
    answering(h, sse, mode="sse")
    with client(h).chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=ASK, stream=True, logprobs=True
    ) as raw:
        chunks = [c for c in raw.parse() if c.choices]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    refusal = "".join(c.choices[0].delta.refusal or "" for c in chunks)
    assert content.startswith("Card:") and CARD not in content
    assert refusal.startswith("no: ") and CARD not in refusal
    sent = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content or []]
    assert [t.token for t in sent] == ["Card", ":"]


def responses_answer(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}
    return {
        "id": "resp_sim",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": "m",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [part],
            }
        ],
        "usage": {"input_tokens": 3, "output_tokens": 6, "total_tokens": 9},
    }


@pytest.mark.parametrize(("tokens", "kept"), [(TOKENS, False), (CLEAN, True)])
def test_responses_output_text_logprobs_go_with_a_masked_text(
    gateways: Callable[..., Harness], tokens: list[str], kept: bool
) -> None:
    h = gateways()
    lp = [{k: v for k, v in t.items() if k != "bytes"} for t in token_logprobs(tokens)]
    answering(h, json.dumps(responses_answer("".join(tokens), lp)))
    raw = client(h).responses.with_raw_response.create(
        model="gpt-4o", input="card?", include=["message.output_text.logprobs"]
    )
    part: Any = raw.parse().output[0].content[0]  # type: ignore[union-attr]
    assert CARD not in part.text
    assert bool(part.logprobs) is kept
    if kept:
        assert "".join(t.token for t in part.logprobs) == part.text


def test_a_responses_stream_carries_no_logprobs(gateways: Callable[..., Harness]) -> None:
    h = gateways()
    events: list[dict[str, Any]] = []
    item = {"type": "message", "id": "msg_1", "role": "assistant", "content": []}
    events.append({"type": "response.output_item.added", "output_index": 0, "item": item})
    for t in TOKENS:
        events.append(
            {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": t,
                "logprobs": [{"token": t, "logprob": -0.1, "top_logprobs": []}],
            }
        )
    final = responses_answer("".join(TOKENS), [{"token": t, "logprob": -0.1} for t in TOKENS])
    events.append({"type": "response.completed", "response": final})
    for n, e in enumerate(events):
        e["sequence_number"] = n
    sse = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
    answering(h, sse, mode="sse")
    with client(h).responses.with_streaming_response.create(
        model="gpt-4o", input="card?", stream=True, include=["message.output_text.logprobs"]
    ) as raw:
        text = raw.http_response.read().decode()
    assert CARD not in text and "4111" not in text
    assert '"logprobs":[{' not in text.replace(" ", "")


def streamed(h: Harness, sse: str) -> tuple[str, list[dict[str, Any]]]:
    """The body the client gets when every endpoint streams ``sse``, and its events."""
    answering(h, sse, mode="sse")
    with client(h).chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=ASK, stream=True
    ) as raw:
        body = raw.http_response.read().decode()
    return body, [json.loads(x[6:]) for x in body.split("\n\n") if x.startswith("data: {")]


def test_a_custom_tool_calls_input_gets_what_the_answer_gets(
    gateways: Callable[..., Harness],
) -> None:
    """GPT-5's custom tools take free text, not JSON: what the model writes there reaches the
    client's tool, so it is masked like the answer (whole answers and streams)."""
    h = gateways()
    answer = chat_answer(None)
    call = {"id": "call_1", "type": "custom", "custom": {"name": "note", "input": f"pay {CARD}"}}
    answer["choices"][0]["message"]["tool_calls"] = [call]
    answering(h, json.dumps(answer))
    raw = client(h).chat.completions.with_raw_response.create(model="gpt-4o", messages=ASK)
    assert raw.headers["x-sekisho-output"] == "masked"
    assert CARD not in raw.http_response.text and "pay [CREDIT_CARD]" in raw.http_response.text

    sse = chunk({"role": "assistant", "content": None})
    for piece in ("pay 4111 11", "11 1111 ", "1111 now"):
        sse += chunk({"tool_calls": [{"index": 0, "type": "custom",
                                      "custom": {"name": "note", "input": piece}}]})  # fmt: skip
    sse += chunk({}, finish="tool_calls") + "data: [DONE]\n\n"
    body, events = streamed(h, sse)
    text = "".join(
        tc["custom"]["input"]
        for e in events
        for c in e["choices"]
        for tc in c["delta"].get("tool_calls") or ()
        if "custom" in tc
    )
    assert text == "pay [CREDIT_CARD] now" and "4111" not in body


def test_a_streamed_legacy_function_calls_arguments_are_masked(
    gateways: Callable[..., Harness],
) -> None:
    h = gateways()
    sse = chunk({"role": "assistant", "content": None,
                 "function_call": {"name": "pay", "arguments": ""}})  # fmt: skip
    for piece in ('{"card": "4111 11', '11 1111 1111"}'):
        sse += chunk({"function_call": {"arguments": piece}})
    sse += chunk({}, finish="function_call") + "data: [DONE]\n\n"
    body, events = streamed(h, sse)
    args = "".join(
        c["delta"]["function_call"].get("arguments") or ""
        for e in events
        for c in e["choices"]
        if c["delta"].get("function_call")
    )
    assert json.loads(args) == {"card": "[CREDIT_CARD]"} and "4111" not in body


# -- text outside the text slots: citations, spoken answers, hosted tools ----------------------

URL = f"https://pay.example/?card={CARD.replace(' ', '')}"
MASKED_URL = "https://pay.example/?card=[CREDIT_CARD]"
EMAIL = "hanako@example.jp"


def citation(title: str, url: str = URL, kind: str = "url_citation") -> dict[str, Any]:
    return {"type": kind, kind: {"title": title, "url": url, "start_index": 0, "end_index": 4}}


def mask_or_cut(action: str) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["detection"]["output"]["action"] = action

    return mutate


def test_a_chat_answers_citations_get_the_output_rule(gateways: Callable[..., Harness]) -> None:
    """A model that searched the web cites its pages (``message.annotations``): their titles
    and URLs are text the client shows. Masked like the answer; under ``cut`` a citation that
    holds a finding is dropped (half a URL is no citation) and the answer ends content_filter."""
    h = gateways()
    answer = chat_answer("See the page.")
    answer["choices"][0]["message"]["annotations"] = [
        citation(f"Card {CARD}"),
        citation("ok", "https://ok.example/"),
    ]
    answering(h, json.dumps(answer))
    raw = client(h).chat.completions.with_raw_response.create(model="gpt-4o", messages=ASK)
    notes = raw.parse().choices[0].message.annotations or []
    assert raw.headers["x-sekisho-output"] == "masked"
    assert "4111" not in raw.http_response.text
    assert notes[0].url_citation.title == "Card [CREDIT_CARD]"
    assert notes[0].url_citation.url == "https://pay.example/?card=[CREDIT_CARD]"

    cut = gateways(mask_or_cut("cut"))
    answering(cut, json.dumps(answer))
    raw = client(cut).chat.completions.with_raw_response.create(model="gpt-4o", messages=ASK)
    choice = raw.parse().choices[0]
    assert raw.headers["x-sekisho-output"] == "cut" and "4111" not in raw.http_response.text
    assert choice.finish_reason == "content_filter" and choice.message.content == "See the page."
    assert [n.url_citation.title for n in choice.message.annotations or []] == ["ok"]


def test_a_spoken_answer_nobody_asked_for_is_refused(gateways: Callable[..., Harness]) -> None:
    """Audio is what sekisho cannot inspect; a tenant allows it (provider_features:
    [audio_output]) for requests that ask for it. An answer that carries audio anyway (its
    transcript spelling the card) is an upstream protocol error, never relayed."""
    h = gateways()
    answer = chat_answer("ok")
    audio = {"id": "audio_1", "data": "UklGRg==", "expires_at": 1, "transcript": f"card {CARD}"}
    answer["choices"][0]["message"]["audio"] = audio
    answering(h, json.dumps(answer))
    with pytest.raises(openai.APIStatusError) as err:
        client(h).chat.completions.create(model="gpt-4o", messages=ASK)
    assert err.value.status_code == 502
    assert "4111" not in err.value.response.text
    assert "audio" in err.value.message and "did not ask for" in err.value.message

    sse = chunk({"role": "assistant", "content": "ok"})
    sse += chunk({"audio": {"id": "audio_1", "transcript": f"card {CARD}"}})
    sse += chunk({}, finish="stop") + "data: [DONE]\n\n"
    body, events = streamed(h, sse)  # mid-stream: the stream ends with an error event
    assert "4111" not in body and events[-1]["error"]["code"] == "upstream_stream_broken"
    assert "did not ask for" in events[-1]["error"]["message"]


def allow_audio(raw: dict[str, Any]) -> None:
    raw["tenants"]["demo"]["provider_features"] = ["audio_output"]


def test_a_spoken_answers_transcript_gets_the_output_rule(
    gateways: Callable[..., Harness],
) -> None:
    """Asked for and allowed, a spoken answer's transcript is its text: masked like it, whole
    or streamed in pieces. The audio that says aloud what was masked is withheld."""
    h = gateways(allow_audio)
    answer = chat_answer(None)
    audio = {"id": "audio_1", "data": "UklGRg==", "expires_at": 1, "transcript": f"card {CARD}"}
    answer["choices"][0]["message"]["audio"] = audio
    answering(h, json.dumps(answer))
    spoken: Any = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}
    raw = client(h).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=ASK, **spoken
    )
    got = raw.parse().choices[0].message.audio
    assert raw.headers["x-sekisho-output"] == "masked" and "4111" not in raw.http_response.text
    assert got is not None and got.transcript == "card [CREDIT_CARD]" and got.data == ""

    sse = chunk({"role": "assistant", "content": None})
    for piece in ("card 4111 11", "11 1111 ", "1111 ok"):
        sse += chunk({"audio": {"id": "audio_1", "transcript": piece}})
    sse += chunk({}, finish="stop") + "data: [DONE]\n\n"
    answering(h, sse, mode="sse")
    with client(h).chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=ASK, stream=True, **spoken
    ) as stream:
        body = stream.http_response.read().decode()
    events = [json.loads(x[6:]) for x in body.split("\n\n") if x.startswith("data: {")]
    transcript = "".join(
        (c["delta"].get("audio") or {}).get("transcript") or ""
        for e in events
        for c in e["choices"]
    )
    assert transcript == "card [CREDIT_CARD] ok" and "4111" not in body


def test_streamed_chat_citations_are_masked(gateways: Callable[..., Harness]) -> None:
    h = gateways()
    sse = chunk({"role": "assistant", "content": "See the page."})
    sse += chunk({"annotations": [citation(f"Card {CARD}")]})
    sse += chunk({}, finish="stop") + "data: [DONE]\n\n"
    body, events = streamed(h, sse)
    notes = [n for e in events for c in e["choices"] for n in c["delta"].get("annotations") or ()]
    assert "4111" not in body
    assert notes[0]["url_citation"]["title"] == "Card [CREDIT_CARD]"


def searched_answer() -> dict[str, Any]:
    """A Responses answer of a model that searched the web: the search's query and the page
    it opened carry the card, and so does the citation of the text."""
    answer = responses_answer("See the page.", [])
    part = answer["output"][0]["content"][0]
    part["annotations"] = [{"type": "url_citation", "title": f"Card {CARD}", "url": URL,
                            "start_index": 0, "end_index": 4}]  # fmt: skip
    search = {
        "type": "web_search_call",
        "id": "ws_1",
        "status": "completed",
        "action": {"type": "search", "query": f"who owns {CARD}", "sources": [
            {"type": "url", "url": URL}]},
    }  # fmt: skip
    answer["output"].insert(0, search)
    return answer


def assert_searched_masked(response: Any) -> None:
    """The answer of ``searched_answer`` (an SDK object, or its JSON) as the rule masks it."""
    search, message = response["output"] if isinstance(response, dict) else response.output
    search, message = (x if isinstance(x, dict) else x.model_dump() for x in (search, message))
    assert search["action"]["query"] == "who owns [CREDIT_CARD]"
    assert search["action"]["sources"] == [{"type": "url", "url": MASKED_URL}]
    note = message["content"][0]["annotations"][0]
    assert note["title"] == "Card [CREDIT_CARD]" and note["url"] == MASKED_URL


def test_responses_citations_and_hosted_tool_items_get_the_output_rule(
    gateways: Callable[..., Harness],
) -> None:
    """What a Responses answer says outside its texts (a citation's title and URL, a web
    search's query and sources) is masked like its texts, is kept so, and is found by a
    data-subject request for whoever it names."""
    h = gateways()
    answer = searched_answer()
    answer["output"][1]["content"][0]["annotations"].append(
        {
            "type": "url_citation",
            "title": f"Profile of {EMAIL}",
            "url": "https://a.example/",
            "start_index": 0,
            "end_index": 4,
        }
    )
    answering(h, json.dumps(answer))
    c = client(h)
    raw = c.responses.with_raw_response.create(model="gpt-4o", input="card?")
    assert raw.headers["x-sekisho-output"] == "masked" and "4111" not in raw.http_response.text
    response = raw.parse()
    assert_searched_masked(response)
    kept = c.responses.with_raw_response.retrieve(response.id)
    assert "4111" not in kept.http_response.text
    assert_searched_masked(kept.parse())

    from sekisho.store import subjects

    found = h.call(
        subjects.find(h.gateway.stores, subjects.Subject("demo", "EMAIL", EMAIL), actor="t")
    )
    assert [m.request_id for m in found] == [raw.headers["x-sekisho-request-id"]]

    cut = gateways(mask_or_cut("cut"))
    answering(cut, json.dumps(searched_answer()))
    raw = client(cut).responses.with_raw_response.create(model="gpt-4o", input="card?")
    response = raw.parse()
    assert raw.headers["x-sekisho-output"] == "cut" and "4111" not in raw.http_response.text
    assert response.status == "incomplete" and response.output == []


def searched_stream() -> str:
    """``searched_answer`` as a Responses stream sends it."""
    final = searched_answer()
    search, message = final["output"]
    note = message["content"][0]["annotations"][0]
    pending = {**search, "status": "in_progress", "action": {"type": "search"}}
    events: list[dict[str, Any]] = [
        {"type": "response.output_item.added", "output_index": 0, "item": pending},
        {"type": "response.web_search_call.completed", "output_index": 0, "item_id": "ws_1"},
        {"type": "response.output_item.done", "output_index": 0, "item": search},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {**message, "content": []}},
        {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 1,
         "content_index": 0, "delta": "See the page.", "logprobs": []},
        {"type": "response.output_text.annotation.added", "item_id": "msg_1", "output_index": 1,
         "content_index": 0, "annotation_index": 0, "annotation": note},
        {"type": "response.output_text.done", "item_id": "msg_1", "output_index": 1,
         "content_index": 0, "text": "See the page.", "logprobs": []},
        {"type": "response.content_part.done", "item_id": "msg_1", "output_index": 1,
         "content_index": 0, "part": message["content"][0]},
        {"type": "response.output_item.done", "output_index": 1, "item": message},
        {"type": "response.completed", "response": final},
    ]  # fmt: skip
    return responses_sse(events)


def responses_sse(events: list[dict[str, Any]]) -> str:
    for n, e in enumerate(events):
        e["sequence_number"] = n
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)


def streamed_response(h: Harness, sse: str, c: openai.OpenAI) -> tuple[str, list[dict[str, Any]]]:
    answering(h, sse, "sse")
    with c.responses.with_streaming_response.create(
        model="gpt-4o", input="card?", stream=True
    ) as raw:
        body = raw.http_response.read().decode()
    return body, [json.loads(x.split("data: ", 1)[1]) for x in body.split("\n\n") if "data: " in x]


def test_a_responses_streams_citations_and_hosted_tool_items_are_masked(
    gateways: Callable[..., Harness],
) -> None:
    h = gateways()
    c = client(h)
    body, got = streamed_response(h, searched_stream(), c)
    assert "4111" not in body
    added = next(e for e in got if e["type"] == "response.output_text.annotation.added")
    assert added["annotation"]["title"] == "Card [CREDIT_CARD]"
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    assert got[-1]["type"] == "response.completed"
    assert_searched_masked(got[-1]["response"])
    assert_searched_masked(c.responses.retrieve(got[-1]["response"]["id"]))

    # Under cut, the citation that holds the card goes with its event (the events after it
    # renumbered), the search's query stops where the card starts, and the response is
    # incomplete.
    cut = gateways(mask_or_cut("cut"))
    body, got = streamed_response(cut, searched_stream(), client(cut))
    assert "4111" not in body
    assert "response.output_text.annotation.added" not in [e["type"] for e in got]
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    final = got[-1]["response"]
    assert got[-1]["type"] == "response.incomplete" and final["status"] == "incomplete"
    assert final["output"][0]["action"]["query"] == "who owns "
    assert final["output"][1]["content"][0]["annotations"] == []


def test_streamed_reasoning_summary_parts_and_interpreter_code_are_inspected(
    gateways: Callable[..., Harness],
) -> None:
    """A reasoning summary part repeats its text whole when done, and a code interpreter's
    code streams in pieces: both get the output rule, a card split across deltas included."""
    h = gateways()
    summary = {"type": "summary_text", "text": f"the card is {CARD}"}
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [summary]}
    code = f"charge('{CARD}')"
    tool = {
        "type": "code_interpreter_call",
        "id": "ci_1",
        "status": "completed",
        "code": code,
        "container_id": "cntr_1",
        "outputs": [{"type": "logs", "logs": f"charged {CARD}"}],
    }
    final = responses_answer("done", [])
    final["output"][:0] = [reasoning, tool]
    events: list[dict[str, Any]] = [
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**reasoning, "summary": []}},
        {"type": "response.reasoning_summary_part.added", "item_id": "rs_1", "output_index": 0,
         "summary_index": 0, "part": {"type": "summary_text", "text": ""}},
        {"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "output_index": 0,
         "summary_index": 0, "delta": summary["text"]},
        {"type": "response.reasoning_summary_text.done", "item_id": "rs_1", "output_index": 0,
         "summary_index": 0, "text": summary["text"]},
        {"type": "response.reasoning_summary_part.done", "item_id": "rs_1", "output_index": 0,
         "summary_index": 0, "part": summary},
        {"type": "response.output_item.done", "output_index": 0, "item": reasoning},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {**tool, "status": "in_progress", "code": "", "outputs": None}},
        *({"type": "response.code_interpreter_call_code.delta", "item_id": "ci_1",
           "output_index": 1, "delta": piece} for piece in (code[:12], code[12:20], code[20:])),
        {"type": "response.code_interpreter_call_code.done", "item_id": "ci_1", "output_index": 1,
         "code": code},
        {"type": "response.output_item.done", "output_index": 1, "item": tool},
        {"type": "response.completed", "response": final},
    ]  # fmt: skip
    c = client(h)
    body, got = streamed_response(h, responses_sse(events), c)
    assert "4111" not in body and "1111" not in body
    pieces = "".join(
        e["delta"] for e in got if e["type"] == "response.code_interpreter_call_code.delta"
    )
    assert pieces == "charge('[CREDIT_CARD]')"
    out = got[-1]["response"]["output"]
    assert out[0]["summary"][0]["text"] == "the card is [CREDIT_CARD]"
    assert out[1]["code"] == pieces and out[1]["outputs"][0]["logs"] == "charged [CREDIT_CARD]"
    assert "4111" not in json.dumps(c.responses.retrieve(got[-1]["response"]["id"]).to_dict())


def test_an_unknown_response_id_is_quoted_whole_in_the_error(
    gateways: Callable[..., Harness],
) -> None:
    """sekisho's own response ids run past 100 characters: the error names the id the client
    sent, not its first 80 characters."""
    from sekisho._provider_state import wrap

    long_id = wrap("resp_" + "a" * 60, "sim-domestic-tokyo", "x" * 16)
    h = gateways()
    with pytest.raises(openai.NotFoundError) as err:
        client(h).responses.retrieve(long_id)
    assert repr(long_id) in err.value.message

    def keep_at_provider(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["provider_features"] = ["store"]

    kept = gateways(keep_at_provider)
    with pytest.raises(openai.BadRequestError) as bad:
        client(kept).responses.create(model="gpt-4o", input="hi", previous_response_id=long_id)
    assert bad.value.code == "previous_response_not_found"
    assert repr(long_id) in bad.value.message


def test_fields_of_a_chat_answer_sekisho_does_not_know_get_what_the_answer_gets(
    gateways: Callable[..., Harness],
) -> None:
    """OpenRouter's reasoning_details and LiteLLM's thinking_blocks reached the client
    unmasked, whole or streamed: every string of a field sekisho does not know is read as
    content is (a block's signature and encrypted reasoning, opaque, go through unchanged)."""
    h = gateways()
    answer = chat_answer("All clear.")
    message = answer["choices"][0]["message"]
    message["reasoning_details"] = [
        {"type": "reasoning.text", "text": f"the card is {CARD}", "format": "x", "index": 0},
        {"type": "reasoning.encrypted", "data": "gAAAAB-opaque", "index": 1},
    ]
    message["thinking_blocks"] = [
        {"type": "thinking", "thinking": f"card {CARD}", "signature": "EqQBCgIYAh"}
    ]
    message["provider_specific_fields"] = {"notes": [f"said {CARD}"]}
    answering(h, json.dumps(answer))
    raw = client(h).chat.completions.with_raw_response.create(model="gpt-4o", messages=ASK)
    assert raw.headers["x-sekisho-output"] == "masked"
    assert "4111" not in raw.http_response.text
    got = raw.http_response.json()["choices"][0]["message"]
    assert got["reasoning_details"] == [
        {"type": "reasoning.text", "text": "the card is [CREDIT_CARD]", "format": "x", "index": 0},
        {"type": "reasoning.encrypted", "data": "gAAAAB-opaque", "index": 1},
    ]
    assert got["thinking_blocks"][0] == {
        "type": "thinking", "thinking": "card [CREDIT_CARD]", "signature": "EqQBCgIYAh"
    }  # fmt: skip
    assert got["provider_specific_fields"] == {"notes": ["said [CREDIT_CARD]"]}

    # Streamed in pieces, as OpenRouter streams it: the number split across deltas is held
    # back and masked as a split number in content is.
    text = f"thinking: the card is {CARD}, then"
    sse = chunk({"role": "assistant", "content": ""})
    for i in range(0, len(text), 4):
        piece = text[i : i + 4]
        detail = {"type": "reasoning.text", "text": piece, "format": "x", "index": 0}
        sse += chunk({"reasoning": piece, "reasoning_details": [detail]})
    sse += chunk({"content": "All clear."}, finish="stop") + "data: [DONE]\n\n"
    answering(h, sse, mode="sse")
    with client(h).chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=ASK, stream=True
    ) as raw:
        lines = [json.loads(x[6:]) for x in raw.iter_lines() if x.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in lines if c.get("choices")]
    details = [d for delta in deltas for d in delta.get("reasoning_details") or ()]
    assert "".join(d["text"] for d in details) == "thinking: the card is [CREDIT_CARD], then"
    assert all(d["type"] == "reasoning.text" and d["index"] == 0 for d in details)
    assert "".join(delta.get("reasoning") or "" for delta in deltas) == "".join(
        d["text"] for d in details
    )
    assert "".join(delta.get("content") or "" for delta in deltas) == "All clear."


def test_under_cut_a_field_sekisho_does_not_know_ends_the_answer_like_reasoning() -> None:
    """The reasoning detail is cut where the number starts, and the answer that followed it
    goes with it, as a cut in reasoning_content does."""
    import yaml

    from harness import example_config
    from sekisho._output import StreamOutput, inspect_answer
    from sekisho.config import parse_config, scanner_for

    raw = example_config()
    raw["tenants"]["demo"]["detection"]["output"] = {"action": "cut", "types": ["CREDIT_CARD"]}
    tenant = parse_config(yaml.safe_dump(raw), "t.yaml").tenants["demo"]
    scanner = scanner_for(tenant)
    answer = chat_answer("The answer.")
    answer["choices"][0]["message"]["reasoning_details"] = [
        {"type": "reasoning.text", "text": f"card {CARD} noted", "index": 0},
        {"type": "reasoning.text", "text": "more thoughts", "index": 1},
    ]
    error, delivered = inspect_answer(answer, None, tenant.detection.output, scanner, "r")
    choice = answer["choices"][0]
    assert error == "output_cut" and choice["finish_reason"] == "content_filter"
    assert [d["text"] for d in choice["message"]["reasoning_details"]] == ["card ", ""]
    assert choice["message"]["content"] == "" and "4111" not in json.dumps(answer)
    assert "".join(delivered) == "card "

    out = StreamOutput(None, tenant, scanner)
    sent = []
    for piece in ("card 4111 ", "1111 1111 ", "1111 and on"):
        event = {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "thinking_blocks": [
                            {"type": "thinking", "thinking": piece, "signature": "s"}
                        ]
                    },
                }
            ]
        }
        out.apply(event)
        sent.append(event)
    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    out.apply(end)
    sent.append(end)
    assert "4111" not in json.dumps(sent) and out.error_code == "output_cut"


def test_fields_of_a_responses_item_sekisho_does_not_know_are_read_whole(
    gateways: Callable[..., Harness],
) -> None:
    """A provider's own field on a Responses message, on its text part, or on a reasoning
    item or a function call passed uninspected: every string in it gets the output rule,
    whole or streamed (in output_item.done and the final response)."""
    h = gateways()
    answer = responses_answer("All clear.", [])
    msg = answer["output"][0]
    msg["reasoning_details"] = [{"type": "reasoning.text", "text": f"card {CARD}"}]
    msg["content"][0]["provider_note"] = f"said {CARD}"
    thought = {"type": "reasoning", "id": "rs_1", "summary": [], "thinking": f"card {CARD}",
               "encrypted_content": "gAAA"}  # fmt: skip
    call = {"type": "function_call", "id": "fc", "call_id": "c", "name": "f", "arguments": "{}",
            "meta": {"why": f"card {CARD}"}}  # fmt: skip
    answer["output"] = [thought, *answer["output"], call]
    answering(h, json.dumps(answer))
    raw = client(h).responses.with_raw_response.create(model="gpt-4o", input="card?")
    assert "4111" not in raw.http_response.text
    got = raw.http_response.json()["output"]
    assert got[0]["thinking"] == "card [CREDIT_CARD]" and got[0]["encrypted_content"] == "gAAA"
    assert got[1]["reasoning_details"][0]["text"] == "card [CREDIT_CARD]"
    assert got[1]["content"][0]["provider_note"] == "said [CREDIT_CARD]"
    assert got[2]["meta"] == {"why": "card [CREDIT_CARD]"} and got[2]["name"] == "f"

    events = [
        {"type": "response.output_item.done", "output_index": 0, "item": answer["output"][1]},
        {"type": "response.completed", "response": answer},
    ]
    for n, e in enumerate(events):
        e["sequence_number"] = n
    answering(h, "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events), "sse")
    with client(h).responses.with_streaming_response.create(
        model="gpt-4o", input="card?", stream=True
    ) as raw:
        text = raw.http_response.read().decode()
    assert "4111" not in text and text.count("[CREDIT_CARD]") >= 6


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(max_size=4), max_size=12),
    st.lists(st.integers(min_value=0, max_value=60), max_size=6),
    st.integers(min_value=-1, max_value=60),
)
def test_held_logprobs_go_out_only_for_text_released_as_they_spell_it(
    tokens: list[str], cuts: list[int], changed_at: int
) -> None:
    """However the text is released in pieces, the tokens sent join to a prefix of what was
    released, and none whose text was changed (one character, at ``changed_at``) goes out."""
    from sekisho._output import _HeldTokens

    text = "".join(tokens)
    released = text
    if 0 <= changed_at < len(text):
        released = text[:changed_at] + "\x00" + text[changed_at + 1 :]
    held = _HeldTokens()
    held.pending.extend({"token": t} for t in tokens)
    sent: list[str] = []
    at = 0
    for cut in [*sorted(c for c in cuts if c <= len(released)), len(released)]:
        sent += [t["token"] for t in held.release(released[at:cut])]
        at = max(at, cut)
    spelled = "".join(sent)
    assert released.startswith(spelled)
    if released == text:
        assert spelled == text
    else:
        assert len(spelled) <= changed_at


def legacy_answer(text: str) -> dict[str, Any]:
    return {
        "id": "cmpl-sim",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9},
    }


def test_fields_beside_a_choices_message_get_what_the_answer_gets(
    gateways: Callable[..., Harness],
) -> None:
    """vLLM's stop_reason (the stop string matched, when a string matched) and a provider's
    own field on a choice reached the client uninspected, whole or streamed, in chat and in
    legacy completions: every string of a choice's field sekisho does not know gets the
    output rule; index, finish_reason and a numeric stop_reason stay as they were."""
    h = gateways()
    c = client(h)
    answer = chat_answer("All clear.")
    answer["choices"][0] |= {"stop_reason": f"END {CARD}", "provider_notes": {"said": [CARD]}}
    answering(h, json.dumps(answer))
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=ASK)
    assert raw.headers["x-sekisho-output"] == "masked"
    assert "4111" not in raw.http_response.text
    choice = raw.http_response.json()["choices"][0]
    assert choice["stop_reason"] == "END [CREDIT_CARD]"
    assert choice["provider_notes"] == {"said": ["[CREDIT_CARD]"]}
    assert (choice["index"], choice["finish_reason"]) == (0, "stop")
    assert choice["message"]["content"] == "All clear."

    answer = chat_answer("All clear.")
    answer["choices"][0]["stop_reason"] = 128009  # a stop token's id: not text
    answering(h, json.dumps(answer))
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=ASK)
    assert "x-sekisho-output" not in raw.headers
    assert raw.http_response.json()["choices"][0]["stop_reason"] == 128009

    # Streamed: vLLM sends stop_reason null on every chunk and the matched string on the last.
    sse = ""
    for delta, finish, reason in (
        *(({"content": piece}, None, None) for piece in CLEAN),
        ({}, "stop", f"END {CARD}"),
    ):
        event = json.loads(chunk(delta, finish=finish)[6:])
        event["choices"][0]["stop_reason"] = reason
        sse += f"data: {json.dumps(event)}\n\n"
    sse += "data: [DONE]\n\n"
    body, events = streamed(h, sse)
    assert "4111" not in body
    reasons = [e["choices"][0].get("stop_reason") for e in events if e.get("choices")]
    assert "END [CREDIT_CARD]" in reasons
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == "All clear."

    # Legacy completions, whole and streamed.
    legacy = legacy_answer("All clear.")
    legacy["choices"][0] |= {"stop_reason": f"END {CARD}", "provider_text": f"card {CARD}"}
    answering(h, json.dumps(legacy))
    raw_legacy = c.completions.with_raw_response.create(model="gpt-4o", prompt="card?")
    assert raw_legacy.headers["x-sekisho-output"] == "masked"
    got = raw_legacy.http_response.json()["choices"][0]
    assert (got["stop_reason"], got["provider_text"]) == ("END [CREDIT_CARD]", "card [CREDIT_CARD]")
    assert (got["text"], got["finish_reason"]) == ("All clear.", "stop")

    event = legacy_answer("All clear.")
    event["choices"][0] |= {"finish_reason": "stop", "stop_reason": f"END {CARD}"}
    answering(h, f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n", mode="sse")
    with c.completions.with_streaming_response.create(
        model="gpt-4o", prompt="card?", stream=True
    ) as streamed_legacy:
        body = streamed_legacy.http_response.read().decode()
    assert "4111" not in body and "END [CREDIT_CARD]" in body


def test_under_cut_a_choices_field_is_cut_where_the_identifier_starts() -> None:
    import yaml

    from harness import example_config
    from sekisho._output import StreamOutput, inspect_answer
    from sekisho.config import parse_config, scanner_for

    raw = example_config()
    raw["tenants"]["demo"]["detection"]["output"] = {"action": "cut", "types": ["CREDIT_CARD"]}
    tenant = parse_config(yaml.safe_dump(raw), "t.yaml").tenants["demo"]
    scanner = scanner_for(tenant)
    answer = chat_answer("The answer.")
    answer["choices"][0]["stop_reason"] = f"stop at {CARD} here"
    error, delivered = inspect_answer(answer, None, tenant.detection.output, scanner, "r")
    choice = answer["choices"][0]
    assert error == "output_cut" and choice["finish_reason"] == "content_filter"
    assert choice["stop_reason"] == "stop at " and "4111" not in json.dumps(answer)
    assert "stop at " in delivered

    for legacy in (False, True):
        out = StreamOutput(None, tenant, scanner, legacy=legacy)
        inner: dict[str, Any] = {"text": "x"} if legacy else {"delta": {"content": "x"}}
        event = {"choices": [{"index": 0, **inner, "finish_reason": "stop",
                              "stop_reason": f"stop at {CARD}"}]}  # fmt: skip
        out.apply(event)
        assert "4111" not in json.dumps(event) and out.error_code == "output_cut"
