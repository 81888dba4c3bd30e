"""Identifiers written past the detectors' patterns are still found, with spans of the text as
it was written (so a redaction covers the disguised value whole)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sekisho.classify import Scanner
from sekisho.classify import _disguise as disguise

MY_NUMBER = "123456789018"  # valid check digit
CARD = "4111111111111111"
SCANNER = Scanner()


def groups(number: str, sep: str, size: int = 4) -> str:
    return sep.join(number[i : i + size] for i in range(0, len(number), size))


def other_digits(number: str, zero: str) -> str:
    return "".join(chr(ord(zero) + int(d)) for d in number)


CASES = {
    "zero-width space": groups(MY_NUMBER, "\u200b"),
    "soft hyphen": groups(MY_NUMBER, "\u00ad"),
    "word joiner": groups(MY_NUMBER, "\u2060"),
    "byte-order mark": groups(MY_NUMBER, "\ufeff"),
    "right-to-left mark": groups(MY_NUMBER, "\u200f"),
    "tab": groups(MY_NUMBER, "\t"),
    "line breaks": groups(MY_NUMBER, "\r\n"),
    "underscores": groups(MY_NUMBER, "_"),
    "commas": groups(MY_NUMBER, ","),
    "full-width commas": groups(MY_NUMBER, "，"),
    "Arabic-Indic digits": groups(other_digits(MY_NUMBER, "\u0660"), " "),
    "Devanagari digits": other_digits(MY_NUMBER, "\u0966"),
    "mathematical bold digits": groups(other_digits(MY_NUMBER, "\U0001d7ce"), " "),
    "kanji digits": groups(
        MY_NUMBER.translate(str.maketrans("0123456789", "〇一二三四五六七八九")), " "
    ),
    "circled digits": groups(
        "".join("⓪" if d == "0" else chr(0x2460 + int(d) - 1) for d in MY_NUMBER), " "
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_disguised_my_number_is_found_whole(case: str) -> None:
    written = CASES[case]
    text = f"私のマイナンバーは {written} です。"
    found = [f for f in SCANNER.scan(text) if f.type == "MY_NUMBER"]
    assert len(found) == 1, (case, SCANNER.scan(text))
    assert text[found[0].start : found[0].end] == written


@pytest.mark.parametrize("sep", ["\u200b", "\t", "\u00ad\u200b", "_", ","])
def test_a_disguised_card_number_is_found_whole(sep: str) -> None:
    written = groups(CARD, sep)
    text = f"card: {written} exp 12/29"
    found = [f for f in SCANNER.scan(text) if f.type == "CREDIT_CARD"]
    assert [text[f.start : f.end] for f in found] == [written]


INVISIBLE = [chr(c) for lo, hi in disguise._INVISIBLE_RANGES for c in range(lo, hi + 1)]


@given(
    st.lists(st.lists(st.sampled_from(INVISIBLE), max_size=3), min_size=11, max_size=11),
    st.text(alphabet=st.sampled_from("あいうえお漢字 、。"), max_size=20),
)
def test_invisible_characters_anywhere_between_the_digits_hide_nothing(
    gaps: list[list[str]], before: str
) -> None:
    written = MY_NUMBER[0] + "".join(
        "".join(g) + d for g, d in zip(gaps, MY_NUMBER[1:], strict=True)
    )
    text = f"{before}マイナンバー {written} です"
    found = [f for f in SCANNER.scan(text) if f.type == "MY_NUMBER"]
    assert len(found) == 1
    start = text.index(written)
    assert (found[0].start, found[0].end) == (start, start + len(written))


def test_every_disguise_character_passes_the_fast_gate() -> None:
    """The gate that lets ordinary text skip the slow search must never skip a disguise."""
    for lo, hi in disguise._INVISIBLE_RANGES + disguise._OTHER_DIGITS:
        for c in range(lo, hi + 1):
            assert disguise._RARE.match(chr(c)), hex(c)
            assert disguise.views(f"x{chr(c)}y"), hex(c)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Please summarise the “attached” report — list the key risks… 😀",
        "東京都千代田区の山田太郎さんに連絡してください。第一四半期の結果",
        "Two paragraphs.\nThen a list:\n1. one\n- two",
        "売上は1,234,567,890,123円、前年比 12,345 件",  # amounts group by threes
        "see report_2024.pdf and v1.2.3",
    ],
)
def test_ordinary_text_gets_no_second_look(text: str) -> None:
    assert disguise.views(text) == []


def test_a_text_made_of_names_is_refused_reading_not_read_for_seconds() -> None:
    """Each name cue costs tens of microseconds to read around: a 4 MB body of nothing but
    "山田様" held the CPU for 12 s. Past MAX_CUES the detector stops at once and says so (the
    gateway then classifies the request at the highest level, fail closed)."""
    import time

    from sekisho.classify._person import MAX_CUES, TooManyCues

    dense = "山田様" * (MAX_CUES + 1)
    started = time.perf_counter()
    with pytest.raises(TooManyCues, match="name cues"):
        SCANNER.scan(dense)
    assert time.perf_counter() - started < 2.0
    assert len(SCANNER.scan("山田様" * 100)) == 100  # far below it, every name is found


@pytest.mark.parametrize(
    ("text", "kind", "written"),
    [
        ("個人番号 1234-5678-\n9018 です", "MY_NUMBER", "1234-5678-\n9018"),
        ("個人番号 1234 5678 \r\n9018", "MY_NUMBER", "1234 5678 \r\n9018"),
        ("カード 4111-1111-\n1111-1111", "CREDIT_CARD", "4111-1111-\n1111-1111"),
        ("電話090-\n1234-5678", "PHONE_JP", "090-\n1234-5678"),
        ("電話 090-1234-\n5678", "PHONE_JP", "090-1234-\n5678"),
    ],
)
def test_a_number_whose_line_ends_in_a_separator_is_found_whole(
    text: str, kind: str, written: str
) -> None:
    # A form or a mail client wrapped the line after the dash: the span keeps dash and break.
    assert [(f.type, text[f.start : f.end]) for f in SCANNER.scan(text)] == [(kind, written)]


@pytest.mark.parametrize(
    ("text", "kind", "written"),
    [
        # a form's GET request in an access log: spaces as %20 or +, a dash as %2D, + as %2B
        ("GET /form?mynumber=1234%205678%209018&step=2", "MY_NUMBER", "1234%205678%209018"),
        ("GET /form?mynumber=1234+5678+9018&step=2", "MY_NUMBER", "1234+5678+9018"),
        ("/pay?card=4111+1111+1111+1111", "CREDIT_CARD", "4111+1111+1111+1111"),
        ("/pay?card=4111%2D1111%2D1111%2D1111", "CREDIT_CARD", "4111%2D1111%2D1111%2D1111"),
        ("?tel=090%2D1234%2D5678", "PHONE_JP", "090%2D1234%2D5678"),
        ("?tel=%2B81-90-1234-5678&x=1", "PHONE_JP", "%2B81-90-1234-5678"),
        ("?tel=%2b81%2090%201234%205678", "PHONE_JP", "%2b81%2090%201234%205678"),
    ],
)
def test_a_number_in_a_url_encoded_query_is_found_whole(text: str, kind: str, written: str) -> None:
    assert [(f.type, text[f.start : f.end]) for f in SCANNER.scan(text)] == [(kind, written)]


@pytest.mark.parametrize(
    "text", ["?page=2%20of%2010", "1000+2000=3000", "?q=tokyo%20100%2D200", "C++ 2011+2014"]
)
def test_url_encoding_and_sums_are_no_numbers(text: str) -> None:
    assert SCANNER.scan(text) == []


def _ascii_json(value: str) -> str:
    """``value`` as json.dumps writes it by default (ensure_ascii): \\uXXXX for non-ASCII."""
    return "".join(c if c.isascii() else f"\\u{ord(c):04x}" for c in value)


@pytest.mark.parametrize(
    ("before", "value", "kind"),
    [
        ("マイナンバー：", "１２３４５６７８９０１８", "MY_NUMBER"),
        ("電話　", "０９０－１２３４－５６７８", "PHONE_JP"),
        ("番号 ", "1234\u30005678\u30009018", "MY_NUMBER"),
        ("カード番号 ", "４１１１ １１１１ １１１１ １１１１", "CREDIT_CARD"),
    ],
)
def test_a_number_in_json_written_with_ascii_escapes_is_found_whole(
    before: str, value: str, kind: str
) -> None:
    # A JSON log of a Japanese form, as Python's json.dumps and structlog write it.
    text = '{"level": "info", "memo": "' + _ascii_json(before + value) + '", "id": 7}'
    found = [(f.type, text[f.start : f.end]) for f in SCANNER.scan(text)]
    assert (kind, _ascii_json(value)) in found, found
