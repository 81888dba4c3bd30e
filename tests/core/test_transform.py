"""Step 4 (transform) and step 7 (output inspection) through a real gateway: what the upstream
receives, and what the client gets back."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from harness import Harness, start_example

NAME, EMAIL = "山田太郎", "taro.yamada@example.co.jp"
PROMPT = f"{NAME}様 ({EMAIL}) に返信して"


def transforming(raw: dict[str, Any]) -> None:
    policy = raw["tenants"]["demo"]["policy"]
    policy["classification"] = {"actions": {"PERSON": "pseudonymise", "EMAIL": "redact"}}


@pytest.fixture(params=[0, 3], ids=["word-chunks", "3-char-chunks"])
def gw(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    h = start_example(tmp_path, transforming, chunk_chars=request.param)
    yield h
    h.stop()


def sent_to_upstream(h: Harness, endpoint: str) -> str:
    body = orjson.loads(h.sims[endpoint].stats.bodies[-1])
    return str(body["messages"][0]["content"])


def test_values_are_pseudonymised_or_redacted_before_they_go_upstream(gw: Harness) -> None:
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": PROMPT}]
    )
    upstream = sent_to_upstream(gw, raw.headers["x-sekisho-endpoint"])
    assert NAME not in upstream and EMAIL not in upstream
    assert "<PERSON_1>" in upstream and "[EMAIL]" in upstream
    assert raw.headers["x-sekisho-action"] in ("redact", "pseudonymise")
    # the simulator echoes the prompt: the client gets the name back, re-identified
    answer = raw.parse().choices[0].message.content
    assert NAME in answer and "<PERSON_1>" not in answer
    assert EMAIL not in answer  # redacted values are gone for good


def test_streamed_answers_are_reidentified_even_when_a_placeholder_is_split(gw: Harness) -> None:
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    stream = c.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    pieces = [ch.choices[0].delta.content or "" for ch in stream if ch.choices]
    text = "".join(pieces)
    assert NAME in text and "<PERSON" not in text
    assert not any("<PERSON_1>" in p for p in pieces)


def masking(raw: dict[str, Any]) -> None:
    raw["tenants"]["demo"]["detection"]["output"] = {"action": "mask", "types": ["MY_NUMBER"]}


def cutting(raw: dict[str, Any]) -> None:
    raw["tenants"]["demo"]["detection"]["output"] = {"action": "cut", "types": ["MY_NUMBER"]}


MY_NUMBER = "123456789018"


@pytest.mark.parametrize("stream", [False, True])
def test_output_mask_hides_identifiers_in_answers_even_across_chunks(
    tmp_path: Path, stream: bool
) -> None:
    h = start_example(tmp_path, masking, chunk_chars=4)
    try:
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        msg = [{"role": "user", "content": f"番号は {MY_NUMBER} です"}]
        if stream:
            text = "".join(
                ch.choices[0].delta.content or ""
                for ch in c.chat.completions.create(model="gpt-4o", messages=msg, stream=True)
                if ch.choices
            )
        else:
            raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=msg)
            text = raw.parse().choices[0].message.content or ""
            assert raw.headers["x-sekisho-output"] == "masked"
        assert MY_NUMBER not in text.replace(" ", "")
        assert "[MY_NUMBER]" in text
        assert "SIMULATOR" in text  # the rest of the answer is delivered
    finally:
        h.stop()


def test_output_cut_stops_the_answer_before_the_identifier(tmp_path: Path) -> None:
    h = start_example(tmp_path, cutting)
    try:
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        r = c.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"番号 {MY_NUMBER} の件"}]
        )
        assert r.choices[0].finish_reason == "content_filter"
        assert MY_NUMBER not in (r.choices[0].message.content or "")
    finally:
        h.stop()


def test_custom_dictionary_terms_are_found_and_counted(tmp_path: Path) -> None:
    def restricted_codenames(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["policy"]["classification"] = {"findings": {"CUSTOM": "restricted"}}

    h = start_example(tmp_path, restricted_codenames)
    try:
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Status of PROJECT HAYABUSA?"}]
        )
        assert raw.headers["x-sekisho-classification"] == "restricted"
        assert raw.headers["x-sekisho-endpoint"] == "sim-domestic-tokyo"  # domestic only
    finally:
        h.stop()


def test_a_document_sized_prompt_is_inspected_and_transformed_the_same(gw: Harness) -> None:
    """A prompt past 64K characters is scanned off the event loop (other clients are served
    meanwhile): what it finds and what goes upstream must not change."""
    filler = "本日の議事録です。予算と日程を確認しました。" * 4000  # ~88K characters
    switch = sys.getswitchinterval()
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": filler + PROMPT + filler}]
    )
    upstream = sent_to_upstream(gw, raw.headers["x-sekisho-endpoint"])
    assert len(upstream) > 64 * 1024
    assert NAME not in upstream and EMAIL not in upstream
    assert "<PERSON_1>" in upstream and "[EMAIL]" in upstream
    assert raw.headers["x-sekisho-classification"] == "confidential"
    # The thread switch interval is lowered only while such a scan runs (it costs streams CPU).
    assert sys.getswitchinterval() == switch


@pytest.mark.parametrize(
    "extra",
    [
        {"metadata": {"k" * 100_000: "v"}},  # a key of the client's choosing: scanned, kept
        {"logit_bias": {str(i): 1 for i in range(30_000)}},
    ],
)
def test_megabytes_of_strings_scanned_but_not_rewritten_are_scanned_off_the_loop(
    gw: Harness, extra: dict[str, Any]
) -> None:
    """Only the texts counted: a tiny message beside a huge metadata key was scanned on the
    event loop, and every other client waited seconds."""
    import asyncio

    on_loop: list[bool] = []
    pipeline = gw.gateway.pipeline

    class Watching:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        def scan(self, text: str) -> Any:
            if len(text) > 50_000:  # the request's strings; the short answer may be on it
                try:
                    asyncio.get_running_loop()
                    on_loop.append(True)
                except RuntimeError:
                    on_loop.append(False)
            return self._inner.scan(text)

    original = pipeline.scanners
    pipeline.scanners = {name: Watching(s) for name, s in original.items()}
    try:
        c = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
        c.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_body=extra
        )
    finally:
        pipeline.scanners = original
    assert on_loop and not any(on_loop), on_loop


def test_a_document_sized_answer_is_inspected_off_the_loop_the_same(tmp_path: Path) -> None:
    """An answer past 64K characters is inspected in a worker thread: a secret near its end is
    still masked, and the rest is delivered whole."""

    def masking(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["detection"]["output"] = {"action": "mask", "types": ["SECRET"]}

    h = start_example(tmp_path, masking, echo_chars=1_000_000)
    try:
        secret = "ghp_" + "k3Y9" * 9  # a GitHub token
        text = "議事録の続きです。" * 9000 + f" key {secret} end"
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": text}]
        )
        answer = raw.parse().choices[0].message.content
        assert len(answer) > 64 * 1024 and "議事録の続きです。" * 100 in answer
        assert secret not in answer and "[SECRET]" in answer
        assert raw.headers["x-sekisho-output"] == "masked"
    finally:
        h.stop()


def test_a_classifier_failure_counts_as_restricted(gw: Harness) -> None:
    class Broken:
        def scan(self, text: str) -> list[Any]:
            raise RuntimeError("detector crashed")

    gw.gateway.pipeline.scanners = {"demo": Broken()}
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hello"}]
    )
    assert raw.headers["x-sekisho-classification"] == "restricted"
    answer = raw.parse().choices[0]
    assert answer.finish_reason == "content_filter"  # the answer could not be inspected either
    assert not answer.message.content


def test_a_streamed_answer_that_cannot_be_inspected_is_withheld(gw: Harness) -> None:
    class Broken:
        def scan(self, text: str) -> list[Any]:
            raise RuntimeError("detector crashed")

    gw.gateway.pipeline.scanners = {"demo": Broken()}
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    stream = c.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hello there"}], stream=True
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert "hello" not in text


def test_tool_definitions_names_and_schemas_are_inspected_and_rewritten(gw: Harness) -> None:
    """What the model reads besides the messages (a participant's name, a tool's description, the
    enum of a parameter, a structured-output schema) reaches the upstream only as policy allows,
    while the names and schema syntax the upstream parses stay valid."""
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "send_mail",
                "description": f"Send a mail on behalf of {NAME}",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "to": {"type": "string", "format": "email", "enum": [EMAIL]},
                    },
                    "required": ["to"],
                },
            },
        }
    ]
    fmt: Any = {
        "type": "json_schema",
        "json_schema": {
            "name": "reply",
            "schema": {"type": "object", "description": f"A reply for {EMAIL}"},
        },
    }
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "name": NAME, "content": "hello"}],
        tools=tools,
        response_format=fmt,
        metadata={"requester": EMAIL},
    )
    assert raw.headers["x-sekisho-action"] in ("redact", "pseudonymise")
    sent = orjson.loads(gw.sims[raw.headers["x-sekisho-endpoint"]].stats.bodies[-1])
    text = orjson.dumps(sent).decode()
    assert NAME not in text and EMAIL not in text
    fn = sent["tools"][0]["function"]
    assert fn["name"] == "send_mail"
    assert fn["description"] == "Send a mail on behalf of <PERSON_1>"
    to = fn["parameters"]["properties"]["to"]
    assert to == {"type": "string", "format": "email", "enum": ["[EMAIL]"]}
    assert fn["parameters"]["required"] == ["to"]
    assert sent["response_format"]["json_schema"]["name"] == "reply"
    assert sent["response_format"]["json_schema"]["schema"]["description"] == "A reply for [EMAIL]"
    assert sent["metadata"] == {"requester": "[EMAIL]"}
    # A participant name may not hold '<' or '>' upstream: the placeholder is full-width there.
    assert sent["messages"][0]["name"] == "＜PERSON_1＞"


def test_an_identifier_only_in_a_tool_definition_still_classifies_the_request(
    tmp_path: Path,
) -> None:
    def restricted_numbers(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["policy"]["classification"] = {
            "findings": {"MY_NUMBER": "restricted"}
        }

    h = start_example(tmp_path, restricted_numbers)
    try:
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        tool: Any = {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {
                    "type": "object",
                    "properties": {"id": {"type": "string", "default": MY_NUMBER}},
                },
            },
        }
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "look it up"}], tools=[tool]
        )
        assert raw.headers["x-sekisho-classification"] == "restricted"
        assert raw.headers["x-sekisho-endpoint"] == "sim-domestic-tokyo"
    finally:
        h.stop()


def test_text_held_back_for_reidentification_comes_before_the_finish_reason(gw: Harness) -> None:
    """A stream's last piece of text may be held back (it could be the start of a split
    placeholder): it is sent with the choice's finishing event, not after it, and any usage
    event is still the last one."""
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    chunks = list(
        c.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": f"{PROMPT} <PERSON_1"}],  # ends mid-placeholder
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    finished = [i for i, ch in enumerate(chunks) if ch.choices and ch.choices[0].finish_reason]
    assert len(finished) == 1
    after = chunks[finished[0] + 1 :]
    assert all(not ch.choices for ch in after)  # nothing but the usage event follows
    assert chunks[-1].usage is not None
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert NAME in text and "<PERSON_1 (digest" in text  # the held-back tail, delivered in full


@pytest.mark.parametrize("stream", [False, True])
def test_a_reasoning_models_reasoning_gets_what_the_answer_gets(
    tmp_path: Path, stream: bool
) -> None:
    """vLLM, SGLang and DeepSeek's API send a reasoning model's thoughts as reasoning_content:
    text the client receives, so the output rule masks identifiers in it and pseudonyms in it
    are restored, as in the answer. Before, it passed through unread."""

    def both(raw: dict[str, Any]) -> None:
        transforming(raw)
        masking(raw)

    h = start_example(tmp_path, both, reasoning=True, chunk_chars=5)
    try:
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        msg = [{"role": "user", "content": f"{NAME}様の番号 {MY_NUMBER}"}]
        if stream:
            reasoning = answer = ""
            for ch in c.chat.completions.create(model="gpt-4o", messages=msg, stream=True):
                for choice in ch.choices:
                    extra = choice.delta.model_extra or {}
                    reasoning += extra.get("reasoning_content") or ""
                    answer += choice.delta.content or ""
        else:
            message = c.chat.completions.create(model="gpt-4o", messages=msg).choices[0].message
            reasoning = (message.model_extra or {})["reasoning_content"]
            answer = message.content or ""
        for text in (reasoning, answer):
            assert MY_NUMBER not in text.replace(" ", "") and "[MY_NUMBER]" in text
            assert NAME in text and "<PERSON_1>" not in text  # re-identified for the client
        assert reasoning.startswith("The user wrote:")
    finally:
        h.stop()


def test_fields_the_gateway_does_not_read_for_shape_are_still_inspected(tmp_path: Path) -> None:
    """``safety_identifier``, ``prompt_cache_key``, a web search's location and any field the
    API adds later: their strings are scanned and rewritten like the messages (fail closed),
    while identifiers the upstream parses (the model, the tool to call) stay as they are."""

    def searching(raw: dict[str, Any]) -> None:
        transforming(raw)
        raw["tenants"]["demo"]["provider_features"] = ["web_search"]

    gw = start_example(tmp_path, searching)
    try:
        _unlisted_fields_are_rewritten(gw)
    finally:
        gw.stop()


def _unlisted_fields_are_rewritten(gw: Harness) -> None:
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hello"}],
        tool_choice="auto",
        extra_body={
            "safety_identifier": EMAIL,
            "prompt_cache_key": f"cache {EMAIL}",
            "web_search_options": {
                "user_location": {"type": "approximate", "approximate": {"city": NAME}}
            },
            "some_future_field": [{"note": f"for {NAME}"}],
        },
    )
    assert raw.headers["x-sekisho-action"] in ("redact", "pseudonymise")
    sent = orjson.loads(gw.sims[raw.headers["x-sekisho-endpoint"]].stats.bodies[-1])
    text = orjson.dumps(sent).decode()
    assert NAME not in text and EMAIL not in text
    assert sent["safety_identifier"] == "[EMAIL]"
    assert sent["prompt_cache_key"] == "cache [EMAIL]"
    location = sent["web_search_options"]["user_location"]
    assert location == {"type": "approximate", "approximate": {"city": "<PERSON_1>"}}
    assert sent["some_future_field"] == [{"note": "for <PERSON_1>"}]
    assert sent["tool_choice"] == "auto" and "<" not in sent["model"]


def test_an_identifier_in_an_unlisted_field_still_decides_where_the_request_may_go(
    tmp_path: Path,
) -> None:
    """A My Number in ``safety_identifier`` or ``prompt_cache_key`` keeps the request in Japan:
    a model served only in the US is refused, as it is for the same number in a message."""
    h = start_example(tmp_path)
    try:
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        for field in ("safety_identifier", "prompt_cache_key"):
            with pytest.raises(openai.PermissionDeniedError) as refused:
                c.chat.completions.create(
                    model="gpt-4.1",
                    messages=[{"role": "user", "content": "hello"}],
                    extra_body={field: f"マイナンバー {MY_NUMBER}"},
                )
            assert refused.value.status_code == 403
            with pytest.raises(openai.PermissionDeniedError):
                c.responses.create(
                    model="gpt-4.1", input="hello", extra_body={field: f"個人番号 {MY_NUMBER}"}
                )
        assert all(not sim.stats.bodies for sim in h.sims.values())
    finally:
        h.stop()


def test_a_number_hidden_with_invisible_characters_is_still_kept_home(tmp_path: Path) -> None:
    """Zero-width spaces between the digit groups (or a tab, or Arabic-Indic digits) do not
    carry a My Number past the policy: the US-only model is refused, nothing is sent."""
    h = start_example(tmp_path)
    try:
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        hidden = [
            "\u200b".join([MY_NUMBER[:4], MY_NUMBER[4:8], MY_NUMBER[8:]]),
            "\t".join([MY_NUMBER[:4], MY_NUMBER[4:8], MY_NUMBER[8:]]),
            "".join(chr(0x0660 + int(d)) for d in MY_NUMBER),
        ]
        for written in hidden:
            with pytest.raises(openai.PermissionDeniedError):
                c.chat.completions.create(
                    model="gpt-4.1",
                    messages=[{"role": "user", "content": f"私のマイナンバーは {written} です"}],
                )
        assert all(not sim.stats.bodies for sim in h.sims.values())
    finally:
        h.stop()


def test_a_number_cut_across_parts_or_messages_is_kept_home_and_redacted_piece_by_piece(
    tmp_path: Path,
) -> None:
    """A My Number sent as "1234 5678 " in one content part and "9018" in the next (or across
    two messages, or in three parts) is whole to the model: the US-only model is refused, and
    where the policy redacts My Numbers every piece is redacted."""
    h = start_example(tmp_path)
    try:
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        a, b, d = MY_NUMBER[:4], MY_NUMBER[4:8], MY_NUMBER[8:]
        cut: list[list[dict[str, Any]]] = [
            [{"role": "user", "content": [{"type": "text", "text": f"番号は {a} {b} "},
                                          {"type": "text", "text": d}]}],
            [{"role": "user", "content": f"my number is {a}{b}"},
             {"role": "user", "content": f"{d} thanks"}],
            [{"role": "user", "content": [{"type": "text", "text": t} for t in (a, b, d)]}],
        ]  # fmt: skip
        for messages in cut:
            with pytest.raises(openai.PermissionDeniedError):
                c.chat.completions.create(model="gpt-4.1", messages=messages)  # type: ignore[arg-type]
        assert all(not sim.stats.bodies for sim in h.sims.values())
    finally:
        h.stop()

    def redacting(raw: dict[str, Any]) -> None:
        policy = raw["tenants"]["demo"]["policy"]
        policy["classification"] = {"actions": {"MY_NUMBER": "redact"}}

    h = start_example(tmp_path / "redact", redacting)
    try:
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        raw = c.chat.completions.with_raw_response.create(
            model="chat-default",
            messages=[{"role": "user", "content": [
                {"type": "text", "text": f"番号は {a} {b} "}, {"type": "text", "text": d}]}],
        )  # fmt: skip
        sent = h.sims[raw.headers["x-sekisho-endpoint"]].stats.bodies[-1].decode()
        assert a not in sent and d not in sent, sent
        assert sent.count("[MY_NUMBER]") == 2  # one for each piece
        # The same pieces many times over (each text string gathers its pieces once: a
        # review measured 7 s of a stalled loop for 3,400 such pairs).
        parts = [{"type": "text", "text": t} for _ in range(300) for t in (f"{a} {b} ", d)]
        raw = c.chat.completions.with_raw_response.create(
            model="chat-default", messages=[{"role": "user", "content": parts}]
        )
        sent = h.sims[raw.headers["x-sekisho-endpoint"]].stats.bodies[-1].decode()
        assert d not in sent and sent.count("[MY_NUMBER]") == 600
    finally:
        h.stop()


SMUGGLED: dict[str, Any] = {
    "an assistant's earlier refusal": {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "refusal": "番号 {n} は扱えません"},
            {"role": "user", "content": "ok"},
        ]
    },
    "an assistant's earlier reasoning": {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "ok", "reasoning_content": "番号は {n}"},
            {"role": "user", "content": "ok"},
        ]
    },
    "a tool call's id": {
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call {n}", "type": "function",
                     "function": {"name": "f", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "call {n}", "content": "done"},
        ]
    },
    "a metadata key": {"metadata": {"マイナンバー {n}": "x"}},
    "a top-level identifier field": {"reasoning_effort": "low {n}"},
    "a message field the API does not define": {
        "messages": [{"role": "user", "content": "hi", "note": "マイナンバー {n}"}]
    },
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SMUGGLED))
def test_a_number_in_any_field_keeps_the_request_home(tmp_path: Path, case: str) -> None:
    """Wherever in the request a My Number sits (a field read as text, an id, a key, a field
    the gateway does not know), it classifies the request: the US-only model is refused and
    nothing is sent."""
    h = start_example(tmp_path)
    try:
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        extra = orjson.loads(orjson.dumps(SMUGGLED[case]).decode().replace("{n}", MY_NUMBER))
        messages = extra.pop("messages", [{"role": "user", "content": "hi"}])
        with pytest.raises(openai.PermissionDeniedError):
            c.chat.completions.create(model="gpt-4.1", messages=messages, extra_body=extra)
        assert all(not sim.stats.bodies for sim in h.sims.values())
    finally:
        h.stop()


def test_a_value_the_policy_rewrites_in_a_field_that_cannot_be_rewritten_is_refused(
    gw: Harness,
) -> None:
    """A JSON Schema property named after an e-mail address (the policy redacts e-mail
    addresses): a property name cannot be rewritten without breaking the schema, so the request
    is refused with 400 and nothing is sent, instead of going out unredacted."""
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    fmt: Any = {
        "type": "json_schema",
        "json_schema": {
            "name": "reply",
            "schema": {"type": "object", "properties": {EMAIL: {"type": "string"}}},
        },
    }
    gw.reset_stats()
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], response_format=fmt
        )
    assert err.value.code == "unrewritable_field" and "EMAIL" in err.value.message
    assert all(not sim.stats.bodies for sim in gw.sims.values())


def test_a_prompt_too_dense_with_names_to_read_is_classified_restricted(tmp_path: Path) -> None:
    """Fail closed: a prompt with more name cues than the detector reads is not sent to a
    model served only abroad, as a classifier failure is not."""
    from sekisho.classify._person import MAX_CUES

    h = start_example(tmp_path)
    try:
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        dense = "山田様" * (MAX_CUES + 1)
        with pytest.raises(openai.PermissionDeniedError) as err:
            c.chat.completions.create(
                model="gpt-4.1", messages=[{"role": "user", "content": dense}]
            )
        assert err.value.response.headers["x-sekisho-classification"] == "restricted"
        assert all(not sim.stats.bodies for sim in h.sims.values())
    finally:
        h.stop()
