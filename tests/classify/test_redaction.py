"""What the gateway does with findings: summarise (ledger-safe), redact, pseudonymise and
re-identify, with the mapping storable in the home region."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sekisho.classify import Finding, Pseudonymiser, redact, scan, summarise

EMAIL_TEXT = (
    "山田太郎様（taro@corp.co.jp）から、山田太郎様の件で taro@corp.co.jp に返信。電話090-1234-5678"
)


def test_summary_has_types_and_counts_and_never_values() -> None:
    summary = summarise(scan(EMAIL_TEXT))
    assert summary == {"PERSON": 2, "EMAIL": 2, "PHONE_JP": 1}
    assert all(isinstance(v, int) for v in summary.values())
    assert "taro" not in repr(summary) and "山田" not in repr(summary)


def test_redact_replaces_each_value_with_its_type_token() -> None:
    text = "電話:090-1234-5678 マイナンバー１２３４５６７８９０１８"
    assert redact(text, scan(text)) == "電話:[PHONE_JP] マイナンバー[MY_NUMBER]"


def test_pseudonymise_gives_each_distinct_value_one_placeholder_per_conversation() -> None:
    p = Pseudonymiser()
    out = p.pseudonymise(EMAIL_TEXT, scan(EMAIL_TEXT))
    assert out == (
        "<PERSON_1>様（<EMAIL_1>）から、<PERSON_1>様の件で <EMAIL_1> に返信。電話<PHONE_JP_1>"
    )
    second = "090-1234-5678 と hanako@corp.co.jp"
    assert p.pseudonymise(second, scan(second)) == "<PHONE_JP_1> と <EMAIL_2>"


def test_reidentify_restores_values_in_the_model_answer() -> None:
    p = Pseudonymiser()
    p.pseudonymise(EMAIL_TEXT, scan(EMAIL_TEXT))
    answer = "<PERSON_1>様へ <EMAIL_1> 宛に連絡します。＜PHONE_JP_1＞にも。<PERSON_9>は不明。"
    assert p.reidentify(answer) == (
        "山田太郎様へ taro@corp.co.jp 宛に連絡します。090-1234-5678にも。<PERSON_9>は不明。"
    )


def test_a_stored_mapping_continues_the_conversation_with_the_same_placeholders() -> None:
    first = Pseudonymiser()
    first.pseudonymise(EMAIL_TEXT, scan(EMAIL_TEXT))
    resumed = Pseudonymiser(first.mapping)
    text = "taro@corp.co.jp と jiro@corp.co.jp"
    assert resumed.pseudonymise(text, scan(text)) == "<EMAIL_1> と <EMAIL_2>"


def test_a_corrupt_stored_mapping_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="look like <PERSON_1>"):
        Pseudonymiser({"PERSON_1": "山田"})


def test_full_width_and_half_width_forms_are_the_same_value() -> None:
    p = Pseudonymiser()
    text = "電話090-1234-5678、または０９０－１２３４－５６７８"
    assert p.pseudonymise(text, scan(text)) == "電話<PHONE_JP_1>、または<PHONE_JP_1>"


values = st.sampled_from(
    ["090-1234-5678", "taro@corp.co.jp", "山田太郎様", "AKIAQ3EGRCTU6ZJ2KXYZ", "〒100-0001", "平文"]
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(values, st.sampled_from(["、", " ", "\n", "。そして"])), max_size=12))
def test_pseudonymise_then_reidentify_round_trips(parts: list[tuple[str, str]]) -> None:
    text = "".join(v + sep for v, sep in parts)
    p = Pseudonymiser()
    masked = p.pseudonymise(text, scan(text))
    assert p.reidentify(masked) == text
    for finding in scan(text):
        assert text[finding.start : finding.end] not in masked


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(values, st.sampled_from(["、", " ", "\n"])), max_size=12))
def test_redacted_text_contains_no_value_that_was_found(parts: list[tuple[str, str]]) -> None:
    text = "".join(v + sep for v, sep in parts)
    findings = scan(text)
    out = redact(text, findings)
    for finding in findings:
        assert text[finding.start : finding.end] not in out


def test_redact_ignores_overlapping_or_out_of_range_findings_instead_of_corrupting_text() -> None:
    text = "abc 090-1234-5678"
    findings = [Finding("PHONE_JP", 4, 17, 0.9), Finding("PERSON", 5, 8, 0.9)]
    assert redact(text, findings) == "abc [PHONE_JP]"
    assert redact(text, [Finding("EMAIL", 4, 99, 0.9)]) == text
