"""What a client (and the compliance officer reading its logs) learns from a 403: the level, in
the government's terms too, why it is that level, each endpoint's failing rule and fact, and
never a value found in the request."""

from __future__ import annotations

from urllib.parse import quote

import openai
import pytest

from harness import Harness


def _refusal(h: Harness, text: str, declared: str | None = None) -> str:
    client = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
    headers = {"x-sekisho-classification": declared} if declared is not None else {}
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.chat.completions.create(
            model="gpt-4.1",  # served only in the US
            messages=[{"role": "user", "content": text}],
            extra_headers=headers,
        )
    assert err.value.status_code == 403
    body = err.value.body
    assert isinstance(body, dict)
    assert body["code"] == "sovereignty_policy_violation"
    return str(body["message"])


def test_a_refusal_names_the_level_with_its_government_alias_and_where_it_came_from(
    gateway: Harness,
) -> None:
    message = _refusal(gateway, "田中太郎のマイナンバーは123456789018です")
    assert message.startswith(
        "Request classified restricted (機密性3) by finding MY_NUMBER (pack jp-mynumber)"
    )
    assert "sim-global-useast: jp-mynumber/no-model-endpoint" in message
    assert "123456789018" not in message and "田中" not in message


def test_a_declared_level_that_is_not_one_is_named_as_the_reason_without_echoing_it(
    gateway: Harness,
) -> None:
    message = _refusal(gateway, "会議の議題をまとめて", declared="top-secret-x1")
    assert message.startswith(
        "Request classified restricted (機密性3) because the declared classification "
        "(x-sekisho-classification) is not a level (fail closed; accepted: public"
    )
    assert "top-secret-x1" not in message


def test_a_client_that_declares_a_lower_level_is_told_it_may_not_lower_it(
    gateway: Harness,
) -> None:
    message = _refusal(
        gateway, "田中太郎のマイナンバーは123456789018です", declared=quote("機密性1")
    )
    assert message.startswith(
        "Request classified restricted (機密性3) by finding MY_NUMBER (pack jp-mynumber); "
        "declared public (機密性1), lower: a client may raise its level, never lower it; found: "
    )


def test_a_text_stamped_kimitsu3_is_refused_where_restricted_requests_are(
    gateway: Harness,
) -> None:
    """【機密性3】 states the document's class: the request is restricted, not 機密性2."""
    message = _refusal(gateway, "【機密性3】 閣議前の資料を要約して")
    assert message.startswith(
        "Request classified restricted (機密性3) by the text's marking 機密性3 (CONFIDENTIAL_LABEL)"
    )
    client = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key(), max_retries=0)
    answered = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "【機密性3】 閣議前の資料を要約して"}]
    )
    assert answered.headers["x-sekisho-classification"] == "restricted"
