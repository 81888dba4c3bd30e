"""A kept turn read back with its placeholders restored: in plain text as the value itself,
inside JSON text (a tool call's arguments, a tool's JSON output) escaped so it stays JSON."""

from __future__ import annotations

import json

import orjson
from hypothesis import given
from hypothesis import strategies as st

from sekisho._conversations import reidentified

VALUE = 'Project "Falcon" \\ 東京'


def kept(output: list[object]) -> bytes:
    return orjson.dumps(output)


def test_a_value_with_quotes_is_restored_in_text_and_inside_tool_call_arguments() -> None:
    raw = kept(
        [
            {"type": "message", "content": [{"type": "output_text", "text": "About <EMAIL_1>."}]},
            {"type": "function_call", "name": "find", "arguments": '{"q": "<EMAIL_1>"}'},
            {"type": "function_call_output", "output": '[{"owner": "<EMAIL_1>"}]'},
            {"type": "function_call_output", "output": "plain <EMAIL_1> [not json"},
        ]
    )
    got = reidentified(raw, {"<EMAIL_1>": VALUE})
    assert got[0]["content"][0]["text"] == f"About {VALUE}."
    assert json.loads(got[1]["arguments"]) == {"q": VALUE}
    assert json.loads(got[2]["output"]) == [{"owner": VALUE}]
    assert got[3]["output"] == f"plain {VALUE} [not json"


def test_without_a_mapping_the_json_is_returned_as_stored() -> None:
    raw = kept([{"type": "message", "content": [{"type": "output_text", "text": "<EMAIL_1>"}]}])
    assert reidentified(raw, None) == orjson.loads(raw)


@given(value=st.text(min_size=1, max_size=30).filter(lambda v: "<" not in v and "＜" not in v))
def test_any_value_round_trips_through_json_arguments(value: str) -> None:
    raw = kept([{"type": "function_call", "arguments": '{"a": "<PERSON_1>", "b": ["<PERSON_1>"]}'}])
    got = reidentified(raw, {"<PERSON_1>": value})
    assert json.loads(got[0]["arguments"]) == {"a": value, "b": [value]}
