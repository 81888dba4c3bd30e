"""ResponsesStreamOutput, over generated Responses API streams: however the text is split into
deltas, what a client pieces together from the deltas, what each ``done`` event repeats and
what the final response holds are the same text, with every pseudonym restored and every
identifier the output rule names masked; sequence numbers stay consecutive."""

from __future__ import annotations

import itertools
import json
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import example_config
from sekisho._output import ResponsesStreamOutput
from sekisho.classify.redact import Pseudonymiser
from sekisho.config import Tenant, parse_config, scanner_for

EMAIL = "hanako.sato@example.co.jp"
MY_NUMBER = "1234 5678 9018"


def tenant(output: dict[str, Any]) -> Tenant:
    raw = example_config()
    raw["tenants"]["demo"]["detection"]["output"] = output
    return parse_config(yaml.safe_dump(raw, allow_unicode=True), "t.yaml").tenants["demo"]


MASKING = tenant({"action": "mask", "types": ["MY_NUMBER"]})
PLAIN = tenant({"action": "none", "types": []})

words = st.sampled_from(["Dear", "customer,", "your", "番号", "は", "please", "call", "\n", "—"])
pieces = st.lists(
    st.one_of(words, st.just("<EMAIL>"), st.just(f"マイナンバー {MY_NUMBER}")), max_size=12
)


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


def stream(text: str, cuts: list[int], args: str | None) -> list[dict[str, Any]]:
    """A Responses API stream as OpenAI sends it: a message with ``text``, then (with ``args``)
    a function call with those arguments, each streamed in pieces cut at ``cuts``."""
    msg = {"type": "message", "id": "msg_1", "role": "assistant", "content": []}
    events: list[dict[str, Any]] = [
        {
            "type": "response.created",
            "response": {"id": "r", "status": "in_progress", "output": []},
        },
        {"type": "response.output_item.added", "output_index": 0, "item": msg},
        {
            "type": "response.content_part.added",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": ""},
        },
    ]
    for piece in split(text, cuts):
        events.append(
            {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": piece,
            }
        )
    part = {"type": "output_text", "text": text, "annotations": []}
    events += [
        {
            "type": "response.output_text.done",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "text": text,
        },
        {
            "type": "response.content_part.done",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "part": dict(part),
        },
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": {**msg, "content": [dict(part)]},
        },
    ]
    output: list[dict[str, Any]] = [{**msg, "content": [dict(part)]}]
    if args is not None:
        call = {"type": "function_call", "id": "fc_1", "call_id": "c", "name": "f"}
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": 1,
                "item": {**call, "arguments": ""},
            }
        )
        for piece in split(args, [c * 7 for c in cuts]):
            events.append(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": "fc_1",
                    "output_index": 1,
                    "delta": piece,
                }
            )
        events += [
            {
                "type": "response.function_call_arguments.done",
                "item_id": "fc_1",
                "output_index": 1,
                "arguments": args,
            },
            {
                "type": "response.output_item.done",
                "output_index": 1,
                "item": {**call, "arguments": args},
            },
        ]
        output.append({**call, "arguments": args})
    events.append(
        {
            "type": "response.completed",
            "response": {"id": "r", "status": "completed", "output": output, "usage": {}},
        }
    )
    for n, e in enumerate(events):
        e["sequence_number"] = n
    return json.loads(json.dumps(events))  # no shared dicts between events


def run(events: list[dict[str, Any]], out: ResponsesStreamOutput) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    for e in events[:-1]:
        sent.extend(out.apply_event(e) or [e])
    sent.extend(out.finish_response(events[-1]))
    return json.loads(json.dumps(sent))


@settings(max_examples=150, deadline=None)
@given(pieces, st.lists(st.integers(0, 400), max_size=8), st.booleans(), st.booleans())
def test_deltas_done_events_and_the_final_response_agree(
    parts: list[str], cuts: list[int], masking: bool, with_call: bool
) -> None:
    pseudo = Pseudonymiser()
    placeholder = pseudo.placeholder_for("EMAIL", EMAIL)
    text = " ".join(parts).replace("<EMAIL>", placeholder)
    args = json.dumps({"to": placeholder, "note": text[:40]}) if with_call else None
    t = MASKING if masking else PLAIN
    out = ResponsesStreamOutput(pseudo, t, scanner_for(t))
    sent = run(stream(text, cuts, args), out)

    expected = " ".join(parts).replace("<EMAIL>", EMAIL)
    if masking:
        expected = expected.replace(MY_NUMBER, "[MY_NUMBER]")
    deltas = "".join(e["delta"] for e in sent if e["type"] == "response.output_text.delta")
    done = next(e for e in sent if e["type"] == "response.output_text.done")
    part = next(e for e in sent if e["type"] == "response.content_part.done")["part"]
    item = next(e for e in sent if e["type"] == "response.output_item.done")["item"]
    final = sent[-1]["response"]["output"][0]["content"][0]["text"]
    assert deltas == done["text"] == part["text"] == item["content"][0]["text"] == final
    assert deltas == expected
    assert placeholder not in json.dumps(sent, ensure_ascii=False)
    if masking:
        assert MY_NUMBER not in json.dumps(sent, ensure_ascii=False)
    if with_call:
        pieced = "".join(
            e["delta"] for e in sent if e["type"] == "response.function_call_arguments.delta"
        )
        assert json.loads(pieced)["to"] == EMAIL  # restored, still valid JSON
        assert sent[-1]["response"]["output"][1]["arguments"] == pieced
    assert [e["sequence_number"] for e in sent] == list(range(len(sent)))
    assert out.texts()[0] == expected


def test_a_stream_without_inspection_passes_every_event_unchanged() -> None:
    """No pseudonyms and no output rule: nothing is rewritten (the events go out as the
    endpoint sent them, byte for byte), and the texts are still collected for the ledger."""
    out = ResponsesStreamOutput(None, PLAIN, scanner_for(PLAIN))
    events = stream("plain answer text", [3, 9], None)
    assert all(out.apply_event(e) is None for e in events[:-1])
    assert out.texts() == ["plain answer text"]
