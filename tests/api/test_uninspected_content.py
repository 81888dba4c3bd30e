"""Content sekisho cannot read (images, audio, files, token ids) is classified, not ignored.

A scanned passport in an image_url part, or a prompt sent as token ids, would otherwise pass as
a request with nothing in it. Each kind counts as a finding type (UNINSPECTED_*) that makes the
request at least confidential unless the tenant's policy maps it elsewhere: fail closed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from harness import Harness, example_config, ledger_entries, receipt, request
from sekisho.api.schema import parse_chat, parse_embeddings
from sekisho.config import parse_config
from sekisho.errors import ConfigError
from sekisho.types import UNINSPECTED_TYPES

PIXEL = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"


def chat_body(*parts: dict[str, Any]) -> bytes:
    content = [{"type": "text", "text": "この書類を要約して"}, *parts]
    return orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]})


# -- the parser counts what it cannot read ------------------------------------------------------


def test_chat_parts_other_than_text_are_counted_by_kind() -> None:
    req = parse_chat(
        chat_body(
            {"type": "image_url", "image_url": {"url": PIXEL}},
            {"type": "image_url", "image_url": {"url": "https://example.jp/card.png"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "file", "file": {"file_data": "JVBERi0=", "filename": "contract.pdf"}},
            {"type": "video_url", "video_url": {"url": "https://example.jp/v.mp4"}},
        )
    )
    assert req.uninspected() == {
        "UNINSPECTED_IMAGE": 2,
        "UNINSPECTED_AUDIO": 1,
        "UNINSPECTED_FILE": 1,
        "UNINSPECTED_CONTENT": 1,
    }
    # The file's name is text the upstream reads (and may be rewritten); the payloads (images
    # as data: URLs, audio, files) are not scanned at all; a URL (an image's too: the upstream
    # fetches it, query and all), a format and a key the API does not define are scanned but
    # never rewritten.
    texts, opaque = req.parts()
    assert texts == ["この書類を要約して", "contract.pdf"]
    assert sorted(opaque) == [
        "https://example.jp/card.png", "https://example.jp/v.mp4", "video_url", "wav"
    ]  # fmt: skip
    assert not any(PIXEL in t or "UklGRg" in t or "JVBERi0" in t for t in texts + opaque)


def test_text_only_requests_have_nothing_uninspected_and_refusals_are_read() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "090-1234-5678"}]},
            {"role": "user", "content": [{"type": "text", "text": "again"}]},
        ],
    }
    req = parse_chat(orjson.dumps(body))
    assert req.uninspected() == {}
    assert "090-1234-5678" in req.texts()  # an earlier refusal's text goes upstream too


@pytest.mark.parametrize(
    ("given_input", "expected"),
    [
        ("text", {}),
        (["a", "b"], {}),
        ([1, 2, 3], {"UNINSPECTED_TOKENS": 1}),
        ([[1, 2], [3]], {"UNINSPECTED_TOKENS": 2}),
    ],
)
def test_embeddings_given_as_token_ids_are_uninspected(
    given_input: Any, expected: dict[str, int]
) -> None:
    raw = orjson.dumps({"model": "m", "input": given_input})
    assert parse_embeddings(raw).uninspected() == expected


@given(st.lists(st.sampled_from(["text", "image_url", "input_audio", "file", "x", "refusal"])))
def test_every_part_is_either_read_or_counted(kinds: list[str]) -> None:
    parts = [
        {"type": k, "text": "t"} if k == "text" else {"type": k, "refusal": "r"} for k in kinds
    ]
    body = {"model": "m", "messages": [{"role": "user", "content": parts or "empty"}]}
    counts = parse_chat(orjson.dumps(body)).uninspected()
    assert set(counts) <= set(UNINSPECTED_TYPES)
    assert sum(counts.values()) == sum(k not in ("text", "refusal") for k in kinds)


# -- the gateway classifies it ------------------------------------------------------------------


def findings(levels: dict[str, str]) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["policy"].setdefault("classification", {})["findings"] = levels

    return mutate


@pytest.fixture
def gateway(gateways: Callable[..., Harness]) -> Callable[..., Harness]:
    return lambda mutate=None: gateways(mutate, keep_bodies=True)


def ask(h: Harness, model: str = "gpt-4o", text: str = "この書類を要約して") -> Any:
    c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
    content = [
        {"type": "text", "text": text},
        {"type": "image_url", "image_url": {"url": PIXEL}},
    ]
    return c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}]
    )


def test_an_image_makes_a_harmless_request_confidential_and_the_ledger_says_why(
    gateway: Callable[..., Harness],
) -> None:
    h = gateway()
    raw = ask(h)
    assert raw.headers["x-sekisho-classification"] == "confidential"  # default is internal
    sent = h.sims[raw.headers["x-sekisho-endpoint"]].stats.bodies[-1]
    assert PIXEL.encode() in sent  # forwarded as it came: sekisho classifies, it does not alter
    rid = raw.headers["x-sekisho-request-id"]
    decision, _ = ledger_entries(receipt(h, rid, h.key()).json())
    assert "UNINSPECTED_IMAGE" in str(decision), decision
    # The same words without the image stay at the tenant's default.
    c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
    plain = c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "この書類を要約して"}]
    )
    assert plain.headers["x-sekisho-classification"] == "internal"


def test_a_tenant_that_treats_images_as_restricted_keeps_them_home(
    gateway: Callable[..., Harness],
) -> None:
    h = gateway(findings({"UNINSPECTED_IMAGE": "restricted"}))
    raw = ask(h)
    assert raw.headers["x-sekisho-classification"] == "restricted"
    assert raw.headers["x-sekisho-endpoint"] == "sim-domestic-tokyo"
    with pytest.raises(openai.PermissionDeniedError) as err:
        ask(h, model="gpt-4.1")  # served only in the US
    assert err.value.status_code == 403
    assert "UNINSPECTED_IMAGE" in str(err.value)
    assert h.sims["sim-global-useast"].stats.chat == 0


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_my_number_in_an_image_url_keeps_the_request_from_a_foreign_endpoint(
    gateway: Callable[..., Harness], api: str
) -> None:
    # The upstream fetches the URL, query and path included: it is read like any URL the
    # request carries (scanned, never rewritten), not passed as a payload.
    h = gateway()
    c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
    url = "https://example.com/scan?note=マイナンバー123456789018"
    with pytest.raises(openai.PermissionDeniedError) as err:
        if api == "chat":
            c.chat.completions.create(
                model="gpt-4.1",  # served only in the US
                messages=[{"role": "user", "content": [
                    {"type": "text", "text": "describe"},
                    {"type": "image_url", "image_url": {"url": url}},
                ]}],
            )  # fmt: skip
        else:
            c.responses.create(
                model="gpt-4.1",
                input=[{"role": "user", "content": [
                    {"type": "input_text", "text": "describe"},
                    {"type": "input_image", "image_url": url, "detail": "auto"},
                ]}],
            )  # fmt: skip
    assert "MY_NUMBER" in str(err.value)
    assert h.sims["sim-global-useast"].stats.chat == 0
    assert not h.sims["sim-global-useast"].stats.bodies


def test_a_tenant_may_declare_images_harmless(gateway: Callable[..., Harness]) -> None:
    h = gateway(findings({"UNINSPECTED_IMAGE": "public"}))
    assert ask(h).headers["x-sekisho-classification"] == "internal"


def test_token_id_embeddings_are_classified_too(gateway: Callable[..., Harness]) -> None:
    h = gateway()
    c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
    raw = c.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=[[9906, 1917]]
    )
    assert raw.headers["x-sekisho-classification"] == "confidential"


@pytest.mark.parametrize(
    ("where", "value"),
    [("actions", {"UNINSPECTED_IMAGE": "redact"}), ("storage", ["UNINSPECTED_FILE"])],
)
def test_unreadable_content_cannot_be_given_an_action(where: str, value: Any) -> None:
    raw = example_config()
    policy = raw["tenants"]["demo"]["policy"]
    if where == "actions":
        policy["classification"] = {"actions": value}
    else:
        policy["storage"] = {"pseudonymise": value}
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_dump(raw, allow_unicode=True), "sekisho.yaml")
    text = str(err.value)
    assert "tenants.demo.policy" in text and "cannot read that content" in text


# -- every text the upstream reads is scanned, and redacted where the policy says ------------------


def test_redaction_reaches_earlier_tool_call_arguments_and_the_user_field(
    gateway: Callable[..., Harness],
) -> None:
    def redact_emails(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["policy"]["classification"] = {"actions": {"EMAIL": "redact"}}

    h = gateway(redact_emails)
    c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "find_customer", "arguments": '{"email": "taro@example.co.jp"}'},
    }
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o",
        user="hanako@example.co.jp",
        messages=[
            {"role": "user", "content": "顧客を探して"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "見つかりました"},
            {"role": "user", "content": "続けて"},
        ],
    )
    assert raw.headers["x-sekisho-action"] == "redact"
    sent = h.sims[raw.headers["x-sekisho-endpoint"]].stats.bodies[-1]
    assert b"taro@example.co.jp" not in sent and b"hanako@example.co.jp" not in sent
    body = orjson.loads(sent)
    assert "find_customer" in sent.decode()  # the call itself is intact
    assert (
        body["messages"][1]["tool_calls"][0]["function"]["arguments"]
        != call["function"]["arguments"]
    )


def rule(spec: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["policy"].setdefault("rules", []).append(spec)

    return mutate


def test_a_redact_rule_does_not_claim_to_redact_what_it_cannot_read(
    gateway: Callable[..., Harness],
) -> None:
    h = gateway(rule({"id": "redact-confidential", "when": {"min_level": "confidential"},
                      "action": "redact"}))  # fmt: skip
    raw = ask(h)  # only the image made it confidential: there is nothing to redact
    assert raw.headers["x-sekisho-classification"] == "confidential"
    assert "x-sekisho-action" not in raw.headers
    sent = h.sims[raw.headers["x-sekisho-endpoint"]].stats.bodies[-1]
    assert PIXEL.encode() in sent


def test_a_block_rule_keeps_unreadable_content_from_going_anywhere(
    gateway: Callable[..., Harness],
) -> None:
    h = gateway(rule({"id": "no-images", "when": {"findings": ["UNINSPECTED_IMAGE"]},
                      "action": "block"}))  # fmt: skip
    before = h.bytes_received()
    with pytest.raises(openai.PermissionDeniedError) as err:
        ask(h)
    assert "no-images" in str(err.value)
    assert h.bytes_received() == before


def test_metrics_count_classifications_and_finding_types_never_values(
    gateway: Callable[..., Harness],
) -> None:
    h = gateway()
    ask(h)
    ask(h, text="山田太郎様 (taro@example.co.jp) への返信を書いて")
    metrics = request("GET", f"{h.root}/metrics").text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(("sekisho_findings_total", "sekisho_classified_requests_total"))
    }
    assert samples['sekisho_findings_total{tenant="demo",type="UNINSPECTED_IMAGE"}'] == 2
    assert samples['sekisho_findings_total{tenant="demo",type="EMAIL"}'] == 1
    assert samples['sekisho_classified_requests_total{level="confidential",tenant="demo"}'] == 2, (
        samples
    )
    assert "taro@example.co.jp" not in metrics
