"""Numbers cut across the texts of one request are found, and their pieces cover them."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from sekisho.classify import Scanner
from sekisho.classify._seams import across

SCANNER = Scanner()
MY_NUMBER = "123456789018"  # valid check digit
CARD = "4111 1111 1111 1111"


def covered(texts: list[str], pieces: dict[int, list]) -> str:  # type: ignore[type-arg]
    """The characters the pieces cover, in order across the texts."""
    return "".join(texts[i][f.start : f.end] for i in sorted(pieces) for f in pieces[i])


def test_a_number_cut_in_two_is_found_and_its_pieces_cover_it() -> None:
    texts = ["私のマイナンバーは 1234 5678 ", "9018 です"]
    crossing, pieces = across(SCANNER.scan, texts)
    assert [f.type for f in crossing] == ["MY_NUMBER"]
    assert covered(texts, pieces).replace(" ", "") == MY_NUMBER


def test_a_number_cut_in_three_is_found_once() -> None:
    texts = ["card ", "4111 1111", " 1111 ", "1111", " exp 12/29"]
    crossing, pieces = across(SCANNER.scan, texts)
    assert [f.type for f in crossing] == ["CREDIT_CARD"]  # seen from two meetings, counted once
    assert covered(texts, pieces) == CARD
    assert set(pieces) == {1, 2, 3}


def test_texts_that_do_not_meet_at_digits_are_not_looked_at() -> None:
    looked: list[str] = []

    def scan(text: str) -> list:  # type: ignore[type-arg]
        looked.append(text)
        return SCANNER.scan(text)

    texts = ["Summarise this report.", "It has 3 sections", "and 12 pages.", "", "2024 plan"]
    assert across(scan, texts) == ([], {})
    assert looked == []  # no meeting has a digit on both sides ("" is skipped over)


def test_a_number_within_one_text_is_not_reported_again() -> None:
    texts = [f"番号 {MY_NUMBER}", "1 more"]
    crossing, pieces = across(SCANNER.scan, texts)
    assert crossing == [] and pieces == {}


@settings(max_examples=150, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=len(MY_NUMBER) - 1), max_size=3, unique=True),
    before=st.sampled_from(["マイナンバー ", "my number: ", "", "x" * 60 + " "]),
    after=st.sampled_from(["", " です", " thanks", "\n" + "y" * 60]),
)
def test_wherever_a_number_is_cut_it_is_found_whole(
    cuts: list[int], before: str, after: str
) -> None:
    """Cut a My Number at any one to three places: the texts' own findings and the crossing
    ones together find it, and the pieces with the texts' own findings cover every digit."""
    bounds = [0, *sorted(cuts), len(MY_NUMBER)]
    chunks = [MY_NUMBER[a:b] for a, b in itertools.pairwise(bounds)]
    texts = [before + chunks[0], *chunks[1:-1], chunks[-1] + after] if len(chunks) > 1 else []
    if not texts:
        return
    crossing, pieces = across(SCANNER.scan, texts)
    assert [f.type for f in crossing] == ["MY_NUMBER"], texts
    assert covered(texts, pieces) == MY_NUMBER


def test_a_cut_after_a_separator_and_a_neighbour_with_digits_hide_nothing() -> None:
    """Found by a review: a cut right after "-" was not looked at, and a next text such as
    "2 copies" joined its digits to the number's."""
    for texts in (
        ["My Number: 1234-5678-", "9018"],
        ["My Number: 1234-5678-", "9018", "2 copies, please"],
        ["My Number: 1234 5678 ", "9018", "1234 5678 ", "tomorrow"],
    ):
        crossing, pieces = across(SCANNER.scan, texts)
        assert [f.type for f in crossing] == ["MY_NUMBER"], texts
        assert covered(texts, pieces).replace(" ", "").replace("-", "") == MY_NUMBER


def test_a_request_of_thousands_of_digit_meetings_is_refused_reading_not_read_for_seconds() -> None:
    import pytest

    from sekisho.classify._person import TooManyCues
    from sekisho.classify._seams import MAX_MEETINGS

    with pytest.raises(TooManyCues):  # the pipeline then classifies it at the highest level
        across(SCANNER.scan, ["1"] * (MAX_MEETINGS + 2))
