"""Output streams: identifiers split across chunks are still caught; mask never leaks a whole
identifier; cut stops at the first finding; placeholders split across chunks are restored."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sekisho.classify import Pseudonymiser, Scanner, StreamReidentifier, StreamScanner, scan

VALUES = [
    "090-1234-5678",
    "taro.yamada@corp.co.jp",
    "１２３４５６７８９０１８",
    "4111 1111 1111 1111",
    "AKIAQ3EGRCTU6ZJ2KXYZ",
    "T7000012050002",
]
OUTPUT = (
    "ご依頼の件、山田太郎様の連絡先は090-1234-5678、メールはtaro.yamada@corp.co.jpです。"
    "マイナンバーは１２３４５６７８９０１８、カードは4111 1111 1111 1111、"
    "鍵はAKIAQ3EGRCTU6ZJ2KXYZ、登録番号はT7000012050002です。" * 3
)


def _chunks(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 12)
        out.append(text[i : i + n])
        i += n
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([64, 128, 256]))
def test_chunked_scan_finds_exactly_what_a_whole_text_scan_finds(
    seed: int, lookbehind: int
) -> None:
    stream = StreamScanner(Scanner(), "mask", lookbehind=lookbehind)
    for chunk in _chunks(OUTPUT, seed):
        stream.feed(chunk)
    stream.finish()
    assert stream.findings == scan(OUTPUT)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_mask_mode_never_emits_a_complete_identifier(seed: int) -> None:
    stream = StreamScanner(Scanner(), "mask")
    emitted = "".join(stream.feed(c) for c in _chunks(OUTPUT, seed)) + stream.finish()
    for value in VALUES:
        assert value not in emitted
    assert emitted.count("[PHONE_JP]") == 3 and emitted.count("[SECRET]") == 3


def test_mask_mode_emits_clean_text_as_it_goes_holding_back_only_the_lookbehind() -> None:
    stream = StreamScanner(Scanner(), "mask", lookbehind=64)
    clean = "これは個人情報を含まない普通の文章です。" * 20
    emitted = "".join(stream.feed(c) for c in _chunks(clean, 1))
    assert len(clean) - len(emitted) <= 64
    assert emitted + stream.finish() == clean


def test_cut_mode_stops_emission_at_the_first_finding() -> None:
    stream = StreamScanner(Scanner(), "cut", lookbehind=64)
    text = "前置きの文章です。" * 20 + "電話は090-1234-5678です。" + "続きの文章。" * 20
    emitted = "".join(stream.feed(c) for c in _chunks(text, 3)) + stream.finish()
    assert stream.cut
    assert "090" not in emitted and "続き" not in emitted
    assert emitted == text[: len(emitted)]
    assert [f.type for f in stream.findings] == ["PHONE_JP"]


def test_a_private_key_is_held_whole_until_its_end_line_arrives() -> None:
    key = (
        "-----BEGIN PRIVATE KEY-----\n"
        + ("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" * 40)
        + "\n-----END PRIVATE KEY-----"
    )
    stream = StreamScanner(Scanner(), "mask", lookbehind=64)
    emitted = "".join(stream.feed(c) for c in _chunks(f"鍵です:\n{key}\n以上", 5))
    emitted += stream.finish()
    assert emitted == "鍵です:\n[SECRET]\n以上"


def test_stream_scanner_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="'mask' or 'cut'"):
        StreamScanner(Scanner(), "drop")  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_placeholders_split_across_chunks_are_reidentified(seed: int) -> None:
    p = Pseudonymiser()
    original = "山田太郎様の電話は090-1234-5678、メールはtaro@corp.co.jpです。"
    masked = p.pseudonymise(original, scan(original))
    answer = f"了解しました。{masked} 念のため <PERSON_1> に確認します。＜EMAIL_1＞"
    stream = StreamReidentifier(p)
    out = "".join(stream.feed(c) for c in _chunks(answer, seed)) + stream.finish()
    assert out == p.reidentify(answer)
    assert "<PERSON_1>" not in out and "090-1234-5678" in out


@given(
    cuts=st.lists(st.integers(min_value=1, max_value=120), max_size=12),
    opener=st.sampled_from(["<", "\\u003c", "\\u003C", "\\uff1c", "＜"]),
    closer=st.sampled_from([">", "\\u003e", "\\uFF1E"]),
)
def test_placeholders_written_with_json_escapes_are_restored_in_json_however_split(
    cuts: list[int], opener: str, closer: str
) -> None:
    """A Go server (Ollama) writes '<' in JSON arguments as \\u003c; an ensure_ascii writer
    writes '＜' as \\uff1c. In JSON the placeholder is restored in any of these spellings,
    however the stream splits it, and the value is escaped for its JSON string."""
    from sekisho._output import json_string_escape

    p = Pseudonymiser()
    p.placeholder_for("PERSON", 'Taro "T" Yamada')
    p.placeholder_for("EMAIL", "taro@corp.co.jp")
    to, cc = f"{opener}EMAIL_1{closer}", f"{opener}PERSON_1{closer}"
    args = f'{{"to": "{to}", "cc": ["{cc}"], "q": "a\\\\u003c"}}'
    stream = StreamReidentifier(p, json_string_escape)
    pieces, at = [], 0
    for n in sorted(set(cuts)):
        pieces.append(args[at:n])
        at = max(at, n)
    pieces.append(args[at:])
    out = "".join(stream.feed(c) for c in pieces) + stream.finish()
    assert out == p.reidentify(args, json_string_escape)
    assert json.loads(out) == {"to": "taro@corp.co.jp", "cc": ['Taro "T" Yamada'], "q": "a\\u003c"}
    # Prose is not JSON: an escape there is text the model wrote, left alone.
    assert p.reidentify("\\u003cEMAIL_1\\u003e") == "\\u003cEMAIL_1\\u003e"


@pytest.mark.parametrize("tail", ["", "\n-----END CERTIFICATE-----\nthanks", "\n\nそれでは。"])
def test_a_private_key_without_its_end_line_is_reported_as_a_whole_text_scan_reports_it(
    tail: str,
) -> None:
    lines = "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\n" * 4
    text = f"鍵です:\n-----BEGIN RSA PRIVATE KEY-----\n{lines}0Z3VS5{tail}"
    stream = StreamScanner(Scanner(), "mask", lookbehind=64)
    emitted = "".join(stream.feed(c) for c in _chunks(text, 7)) + stream.finish()
    assert stream.findings == Scanner().scan(text)
    assert [f.subtype for f in stream.findings] == ["private_key"]
    assert "MIIE" not in emitted and "0Z3VS5" not in emitted
