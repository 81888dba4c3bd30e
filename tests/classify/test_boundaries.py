"""Identifiers are found by what they are, not by what they are glued to.

Prompts carry numbers inside code, logs, URLs and data: ``id_123456789018``, ``user0901…``,
``?mynumber=…``, ``"my_number":"…"``, a JSON string's ``\\n``. Each such value is found with
its exact span, and the look-alikes that share those places (hashes, UUIDs, timestamps, order
numbers, a 12-digit run inside a longer one) are not.
"""

from __future__ import annotations

import datetime
import hashlib
import string

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from sekisho.classify import scan
from sekisho.classify._validate import (
    corporate_number_ok,
    luhn_check_digit,
    my_number_check_digit,
)

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NUMERIC = frozenset(
    {"MY_NUMBER", "CORPORATE_NUMBER", "PHONE_JP", "PHONE_INTL", "POSTAL_CODE_JP", "PASSPORT_JP",
     "DRIVER_LICENSE_JP", "RESIDENCE_CARD_JP", "HEALTH_INSURANCE_JP", "BANK_ACCOUNT_JP",
     "CREDIT_CARD", "IP_ADDRESS", "IBAN"}
)  # fmt: skip
FULL_WIDTH = str.maketrans(string.digits, "０１２３４５６７８９")


def found(text: str) -> list[tuple[str, str]]:
    return [(f.type, text[f.start : f.end]) for f in scan(text)]


def numeric(text: str) -> list[tuple[str, str]]:
    return [(type_, value) for type_, value in found(text) if type_ in NUMERIC]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # letters or an underscore glued to a My Number that passes its check digit
        ("id_123456789018", ("MY_NUMBER", "123456789018")),
        ("user123456789018", ("MY_NUMBER", "123456789018")),
        ("MN123456789018x", ("MY_NUMBER", "123456789018")),
        ("x_123456789018_y", ("MY_NUMBER", "123456789018")),
        ("userId123456789018", ("MY_NUMBER", "123456789018")),
        ("ID123456789018", ("MY_NUMBER", "123456789018")),
        ("ＩＤ１２３４５６７８９０１８", ("MY_NUMBER", "１２３４５６７８９０１８")),
        ("my_number_123456789018", ("MY_NUMBER", "123456789018")),
        ("MN1234-5678-9018", ("MY_NUMBER", "1234-5678-9018")),
        ("id-123456789018", ("MY_NUMBER", "123456789018")),  # "d-" is no hex token
        ("user_123456789018_backup", ("MY_NUMBER", "123456789018")),
        ("123456789018_bad", ("MY_NUMBER", "123456789018")),
        # a JSON or C string's escapes are separators, not letters
        ('{"memo": "\\n123456789018\\n"}', ("MY_NUMBER", "123456789018")),
        (
            "\\u30de\\u30a4\\u30ca\\u30f3\\u30d0\\u30fc\\u306f123456789018",
            ("MY_NUMBER", "123456789018"),
        ),
        # key names of code are cue words: a My Number grouped by threes is one after them
        ("my_number: 123-456-789-018", ("MY_NUMBER", "123-456-789-018")),
        ("mynumber=123-456-789-018", ("MY_NUMBER", "123-456-789-018")),
        ('{"myNumber": "266473 782880"}', ("MY_NUMBER", "266473 782880")),
        # the other types after an underscore, or glued to the word that names them
        ("phone_09012345678", ("PHONE_JP", "09012345678")),
        ("tel_090-1234-5678", ("PHONE_JP", "090-1234-5678")),
        ("mobile09012345678", ("PHONE_JP", "09012345678")),
        ("contactTel090-1234-5678", ("PHONE_JP", "090-1234-5678")),
        ('"\\n090-1234-5678"', ("PHONE_JP", "090-1234-5678")),
        ("phone_+4930123456", ("PHONE_INTL", "+4930123456")),
        ("cc_4111111111111111", ("CREDIT_CARD", "4111111111111111")),
        ("card4111111111111111", ("CREDIT_CARD", "4111111111111111")),
        ("user4111111111111111x", ("CREDIT_CARD", "4111111111111111")),
        ("acct_1234567", ("BANK_ACCOUNT_JP", "1234567")),
        ("ip_192.168.1.20", ("IP_ADDRESS", "192.168.1.20")),
        ("zip_100-0001", ("POSTAL_CODE_JP", "100-0001")),
        ("corporate_number_7000012050002", ("CORPORATE_NUMBER", "7000012050002")),
        # two values in one run of digits and separators
        ("4111-1111-1111-1111/123", ("CREDIT_CARD", "4111-1111-1111-1111")),
        ("card: 4111-1111-1111-1111/12/28", ("CREDIT_CARD", "4111-1111-1111-1111")),
        ("10.0.0.1-10.0.0.9", ("IP_ADDRESS", "10.0.0.9")),
    ],
)
def test_a_value_glued_to_a_word_or_an_underscore_is_found_with_its_exact_span(
    text: str, expected: tuple[str, str]
) -> None:
    assert expected in found(text)


def test_both_values_of_a_run_are_found() -> None:
    assert numeric("090-1234-5678/080-1234-5678") == [
        ("PHONE_JP", "090-1234-5678"),
        ("PHONE_JP", "080-1234-5678"),
    ]
    assert numeric("DHCP 10.0.0.1-10.0.0.9") == [
        ("IP_ADDRESS", "10.0.0.1"),
        ("IP_ADDRESS", "10.0.0.9"),
    ]
    assert numeric("期間 2024-06-11/2024-06-12、v1.2.3-4") == []


def test_the_columns_of_a_table_written_with_spaces_are_read_apart() -> None:
    # column -t, a fixed-width report: the columns are apart by more than a value's groups
    row = "1001  1234 5678 9018  090-1234-5678"
    assert numeric(row) == [("MY_NUMBER", "1234 5678 9018"), ("PHONE_JP", "090-1234-5678")]
    assert numeric("35\u3000\u30004111 1111 1111 1111") == [("CREDIT_CARD", "4111 1111 1111 1111")]
    # one width throughout: one value or nothing, never the first twelve digits of a card
    assert numeric("4111 1111 1111 1112  2024") == []
    assert numeric("1234  5678  9018") == [("MY_NUMBER", "1234  5678  9018")]


def test_values_listed_with_single_spaces_are_read_apart() -> None:
    # No value is written with a group of nine digits or more beside others: such a group is
    # a value of its own, and the digits around it are other values.
    assert numeric("1001 123456789018 山田") == [("MY_NUMBER", "123456789018")]
    assert numeric("山田 123456789018 09012345678") == [
        ("MY_NUMBER", "123456789018"),
        ("PHONE_JP", "09012345678"),
    ]
    assert numeric("3 4111111111111111") == [("CREDIT_CARD", "4111111111111111")]
    # groups of a grouped value stay one value or nothing
    assert numeric("1234 5678 9018 1234") == []
    assert numeric("+1 2125550100") == [("PHONE_INTL", "+1 2125550100")]


@pytest.mark.parametrize(
    "text",
    [
        # a 12-digit run inside a longer run of digits is no My Number
        "order 1234567890183456",
        "9123456789018",
        "id_91234567890183",
        # hashes, UUIDs and tokens whose digits happen to pass a check digit
        'etag: "54229ABFCFA5649E7003B83DD4755294"',  # DD4755294 is no passport
        "deadbeef123456789018cafe",
        "0x102800001029D, 0x123456789018",
        "550e8400-e29b-41d4-a716-123456789018",
        "550e8400_e29b_41d4_a716_123456789018",
        "id_9f916024_973a_a3fc_1682_664248148808",
        "E3EF5F83-CF1E-1DC2-8DAC-FD1BC4887660",  # BC4887660 is no passport
        "github.com/x/y v0.0.0-20200501191002-183492172623",  # a Go pseudo-version
        "req-550e8400-e29b-41d4-a716-123456789018",
        # timestamps and date-led references, however they are glued (one in eleven passes)
        "backup_202406110100.tar.gz",
        "202406110330.log",
        "2024-06-11 job 202406110445 done",
        "/var/log/app-202406111115.gz",
        "ORD202406110500",
        # glued numbers that are no value without their word
        "user09012345678",
        "SKU123456789018 を5個",
        "ORDER123456789018",
        "host1234567",
        "corp7000012050002",
        # a book's number is no corporate number, with its word or without
        "ISBN 9784061597839",
        "ISBN9784061597839",
        "参考文献 9784061597839",
    ],
)
def test_look_alikes_in_code_and_logs_are_not_reported(text: str) -> None:
    assert numeric(text) == []


@st.composite
def my_numbers(draw: st.DrawFn) -> str:
    body = draw(st.text(alphabet=string.digits, min_size=11, max_size=11))
    number = body + str(my_number_check_digit(body))
    assume(not _date_led(number))
    return number


def _date_led(digits: str) -> bool:
    try:
        datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return False
    return digits[:2] in ("19", "20")


# Where real prompts put an identifier: code, URLs, data formats, logs and Markdown.
PLACES = [
    "{v}",
    "id_{v}",
    "user{v}",
    "MN{v}x",
    "x_{v}_y",
    "userId{v}",
    "myNumber{v}",
    "{v}_backup",
    "/api/v1/users/{v}/profile",
    "https://example.jp/form?mynumber={v}&step=2",
    '{{"my_number":"{v}"}}',
    '{{"memo":"\\n{v}\\n"}}',
    "山田,{v},東京都",
    "my_number: '{v}'",
    "SELECT * FROM staff WHERE mynumber='{v}';",
    "2024-06-11T10:00:00Z INFO login user={v} ok",
    "| 山田 太郎 | {v} |",
    "```\n{v}\n```",
    "マイナンバーは{v}です",
]


@SETTINGS
@given(my_numbers(), st.sampled_from(PLACES), st.booleans())
@example("123456789018", "MN{v}x", False)
def test_a_my_number_is_found_whole_wherever_it_is_written(
    number: str, place: str, wide: bool
) -> None:
    value = number.translate(FULL_WIDTH) if wide else number
    text = place.format(v=value)
    assert ("MY_NUMBER", value) in found(text)


@SETTINGS
@given(
    my_numbers(),
    st.text(alphabet=string.digits, min_size=1, max_size=4),
    st.text(alphabet=string.digits, max_size=4),
    st.sampled_from(["", "id_", "user", "MN", "注文番号 "]),
    st.sampled_from(["", "x", "_y", " です"]),
)
def test_a_my_number_inside_a_longer_run_of_digits_is_never_reported(
    number: str, head: str, tail: str, before: str, after: str
) -> None:
    for digits in (head + number + tail, number + head):
        text = f"{before}{digits}{after}"
        assert "MY_NUMBER" not in {type_ for type_, _ in found(text)}, text


@SETTINGS
@given(
    st.binary(min_size=8, max_size=64),
    st.sampled_from(["md5", "sha1", "sha256"]),
    my_numbers(),
    st.integers(0, 32),
)
def test_a_hash_written_in_hex_is_no_identifier(
    data: bytes, algorithm: str, number: str, at: int
) -> None:
    digest = hashlib.new(algorithm, data).hexdigest()
    # A digest whose digits pass a check digit by chance: twelve of them between hex letters.
    lucky = f"{digest[:at]}a{number}f{digest[at:]}"
    for hexes in (digest, lucky):
        for written in (hexes, hexes.upper()):
            for text in (f"sha: {written}", f'etag: "{written}"', f"commit_{written}"):
                assert numeric(text) == [], text


@SETTINGS
@given(
    st.integers(2000, 2039),
    st.integers(1, 12),
    st.integers(1, 28),
    st.integers(0, 23),
    st.integers(0, 59),
    st.sampled_from(["backup_{t}.tar.gz", "{t}.log", "job={t} done", "app-{t}.gz", "ORD{t}"]),
)
def test_a_timestamp_of_twelve_digits_is_no_my_number(
    year: int, month: int, day: int, hour: int, minute: int, place: str
) -> None:
    stamp = f"{year}{month:02d}{day:02d}{hour:02d}{minute:02d}"
    assert "MY_NUMBER" not in {type_ for type_, _ in found(place.format(t=stamp))}


@SETTINGS
@given(
    st.text(alphabet=string.digits, min_size=14, max_size=14),
    st.sampled_from(["card", "cc_", "pan_", "user", "x_"]),
    st.sampled_from(["", "x", "_exp"]),
)
def test_a_card_number_glued_to_a_word_is_found(body: str, before: str, after: str) -> None:
    number = "4" + body
    number += str(luhn_check_digit(number))
    text = f"{before}{number}{after}"
    assert ("CREDIT_CARD", number) in found(text)


@SETTINGS
@given(
    st.sampled_from(["978", "979"]),
    st.text(alphabet=string.digits, min_size=9, max_size=9),
    st.sampled_from(["ISBN {b}", "ISBN:{b}", "参考文献 {b} 講談社", "- {b}", "{b}"]),
)
def test_a_book_number_is_a_corporate_number_only_after_the_corporate_word(
    prefix: str, body: str, place: str
) -> None:
    book = prefix + body
    book += str(-sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(book)) % 10)
    assert "CORPORATE_NUMBER" not in {type_ for type_, _ in found(place.format(b=book))}
    if corporate_number_ok(book):
        assert found(f"法人番号 {book}") == [("CORPORATE_NUMBER", book)]
