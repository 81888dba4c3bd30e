"""The scan memo: a conversation's earlier turns are not scanned again, the answer is exactly
the scanner's, and the memo keeps no prompt text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sekisho.classify import Scanner
from sekisho.classify.memo import ScanMemo

SCANNER = Scanner()
PIECES = st.sampled_from(
    ["山田太郎", "090-1234-5678", "taro@example.co.jp", "123456789018", " ", "、", "東京都千代田区",
     "card 4111 1111 1111 1111", "hello", "\n", "AKIA" + "Z" * 16, "様"]
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(PIECES, max_size=12).map("".join), min_size=1, max_size=6))
def test_the_memo_answers_exactly_what_the_scanner_does(texts: list[str]) -> None:
    memo = ScanMemo(SCANNER, entries=3)  # small: evictions happen too
    for _ in range(2):
        for text in texts:
            assert memo.scan(text) == SCANNER.scan(text)


def test_a_conversation_is_scanned_once_per_new_message() -> None:
    memo = ScanMemo(SCANNER)
    system = "You are the support desk of Example Bank. 口座番号は伏せてください。"
    history = [system]
    for turn in range(5):
        history.append(f"お客様 山田太郎 (taro{turn}@example.co.jp) からの質問 {turn}")
        before = memo.misses
        for text in history:
            memo.scan(text)
        assert memo.misses - before == (2 if turn == 0 else 1)  # only the new message
    assert memo.hits == 2 + 3 + 4 + 5  # every earlier text, every later turn


def test_the_memo_keeps_no_text_and_gives_out_copies() -> None:
    memo = ScanMemo(SCANNER)
    secret = "マイナンバーは 123456789018 です"
    found = memo.scan(secret)
    assert found
    found.clear()  # a caller changing its list does not change the memo
    assert memo.scan(secret) == SCANNER.scan(secret)
    for key, value in memo._memo.items():
        assert len(key) == 16 and secret.encode() not in key
        assert all(not hasattr(f, "value") for f in value)  # offsets and types only


def test_the_memo_is_bounded() -> None:
    memo = ScanMemo(SCANNER, entries=2, max_chars=50, max_findings=2)
    for text in ("a 090-1234-5678", "b 090-1234-5678", "c 090-1234-5678"):
        memo.scan(text)
    assert len(memo) == 2  # the oldest went
    memo.scan("x" * 51)  # too long to keep
    memo.scan(" ".join(["090-1234-5678"] * 3))  # too many findings to keep
    assert len(memo) == 2


def test_the_findings_held_in_all_are_bounded_too() -> None:
    memo = ScanMemo(SCANNER, entries=100, max_held=5)
    texts = [f"{i} 090-1234-567{i} 090-2345-678{i}" for i in range(6)]  # two findings each
    for text in texts:
        assert len(memo.scan(text)) == 2
    assert len(memo) == 2 and memo._held == 4  # the oldest went to stay within 5
    assert memo.scan(texts[-1]) == SCANNER.scan(texts[-1])  # the newest is still a hit
    assert memo.hits == 1
