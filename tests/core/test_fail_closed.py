"""Failing closed is never looser than succeeding: a prompt padded with names past what the
classifier reads was restricted but lost every other finding, so a client could pad its way
past a SECRET block, a redaction and the My Number rule (a policy audit did)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from harness import Harness, ledger_entries, receipt, start_example

PADDING = "田中様、" * 20_500  # past the name detector's cue limit


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Harness]:
    def strict(raw: dict[str, Any]) -> None:
        policy = raw["tenants"]["demo"]["policy"]
        policy["rules"] = [
            {"id": "no-secrets-upstream", "when": {"findings": ["SECRET"]}, "action": "block"}
        ]
        policy["classification"] = {"actions": {"CREDIT_CARD": "redact"}}
        policy["levels"] = {}  # restricted may go anywhere the packs let it: rules must hold

    h = start_example(tmp_path, strict)
    yield h
    h.stop()


def ask(h: Harness, *texts: str) -> Any:
    c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0, timeout=60)
    return c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": t} for t in texts]
    )


def sent(h: Harness) -> str:
    bodies = [b for sim in h.sims.values() for b in sim.stats.bodies]
    return "\n".join(
        m["content"] for b in bodies for m in orjson.loads(b)["messages"] if m["role"] == "user"
    )


@pytest.mark.parametrize("where", ["another message", "the same message"])
def test_a_secret_padded_with_names_is_still_blocked(gw: Harness, where: str) -> None:
    prompt = "DB接続 password=Hunter2Secret! を設定ファイルに"
    texts = (prompt, PADDING) if where == "another message" else (prompt + PADDING,)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        ask(gw, *texts)
    assert "no-secrets-upstream" in refused.value.message
    assert sum(s.stats.requests for s in gw.sims.values()) == 0


def test_a_card_padded_with_names_is_still_redacted_and_the_request_restricted(
    gw: Harness,
) -> None:
    raw = ask(gw, "カード番号 4111 1111 1111 1111 の件", PADDING)
    assert raw.headers["x-sekisho-classification"] == "restricted"
    upstream = sent(gw)
    assert "4111" not in upstream and "[CREDIT_CARD]" in upstream


def test_a_my_number_padded_with_names_is_still_found_and_recorded(gw: Harness) -> None:
    """The decision entry said "findings": {} for such a request: the auditor could not see
    that a My Number went out, nor could the My Number rule."""
    key = gw.key()
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=60)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": t} for t in ("マイナンバー 123456789018", PADDING)],
    )
    assert raw.headers["x-sekisho-endpoint"] == "sim-domestic-tokyo"  # the entrusted one
    decision, _ = ledger_entries(receipt(gw, raw.headers["x-sekisho-request-id"], key).json())
    assert decision["findings"].get("MY_NUMBER") == 1
    assert decision["classification"] == "restricted"


def test_the_ledger_names_the_rule_that_refused(gw: Harness) -> None:
    """The decision entry said action "block" with no rule: an auditor could not tell a rule's
    refusal from a request no endpoint could take."""
    key = gw.key()
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        c.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "password=Hunter2Secret!"}]
        )
    rid = refused.value.response.headers["x-sekisho-request-id"]
    decision, _ = ledger_entries(receipt(gw, rid, key).json())
    assert decision["action"] == "block"
    assert decision["rule"] == "tenant/no-secrets-upstream"
    allowed = ask(gw, "weekly status")
    plain, _ = ledger_entries(receipt(gw, allowed.headers["x-sekisho-request-id"], gw.key()).json())
    assert "rule" not in plain  # nothing to name: the entry is as before
