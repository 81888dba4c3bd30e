"""Signed notes interoperate with Go's golang.org/x/mod/sumdb/note.

Vector: golang/mod sumdb/note/note_test.go (TestNewSigner, TestSign, TestOpen): the PeterNeumann
keys and the signature Go produces over the same text.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sekisho.ledger import note
from sekisho.ledger.note import NoteError, Signer, Verifier

GO_SIGNER_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_ENOCH_KEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZ"
    "b6KE6RyyBwJnAM=\n"
)
GO_ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33"
    "WWd1RvMc+QQ=\n"
)


def test_signing_go_s_vector_gives_byte_for_byte_go_s_signed_note() -> None:
    signer = Signer.from_key_string(GO_SIGNER_KEY)
    assert note.sign(GO_TEXT, signer) == GO_TEXT + "\n" + GO_PETER_SIG


def test_key_strings_round_trip_exactly_as_go_writes_them() -> None:
    signer = Signer.from_key_string(GO_SIGNER_KEY)
    assert signer.key_string() == GO_SIGNER_KEY
    assert signer.verifier().key_string() == GO_VERIFIER_KEY
    assert signer.key_id == 0xC74F20A3
    assert Verifier.from_key_string(GO_VERIFIER_KEY) == signer.verifier()


def test_go_signed_note_opens_with_unknown_signatures_kept_unverified() -> None:
    peter = Verifier.from_key_string(GO_VERIFIER_KEY)
    opened = note.open_note(GO_TEXT + "\n" + GO_PETER_SIG + GO_ENOCH_SIG, [peter])
    assert opened.text == GO_TEXT
    assert [s.name for s in opened.signatures] == ["PeterNeumann"]
    assert [s.name for s in opened.unverified] == ["EnochRoot"]
    both = note.open_note(
        GO_TEXT + "\n" + GO_PETER_SIG + GO_ENOCH_SIG,
        [peter, Verifier.from_key_string(GO_ENOCH_KEY)],
    )
    assert len(both.signatures) == 2


def test_a_note_signed_by_no_known_key_is_rejected() -> None:
    with pytest.raises(NoteError, match="not signed by any known key"):
        note.open_note(GO_TEXT + "\n" + GO_PETER_SIG, [Verifier.from_key_string(GO_ENOCH_KEY)])


def test_a_bad_signature_from_a_known_key_rejects_the_note() -> None:
    bad = GO_PETER_SIG[:60] + "ABCD" + GO_PETER_SIG[60:]
    with pytest.raises(NoteError, match="invalid signature for key PeterNeumann"):
        note.open_note(GO_TEXT + "\n" + bad, [Verifier.from_key_string(GO_VERIFIER_KEY)])


def test_an_edited_text_no_longer_verifies() -> None:
    edited = GO_TEXT.replace("problem,", "problem;")
    with pytest.raises(NoteError):
        note.open_note(edited + "\n" + GO_PETER_SIG, [Verifier.from_key_string(GO_VERIFIER_KEY)])


@pytest.mark.parametrize(
    "message",
    [
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + GO_PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + GO_PETER_SIG,
        GO_TEXT + "\n" + "— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFY=\n",
        GO_TEXT + "\n" + GO_PETER_SIG + "Unexpected line.\n",
    ],
)
def test_malformed_notes_from_go_s_test_are_rejected(message: str) -> None:
    with pytest.raises(NoteError):
        note.open_note(message, [Verifier.from_key_string(GO_VERIFIER_KEY)])


def test_mangled_verifier_keys_are_rejected() -> None:
    # As Go's TestNewVerifier: every one-character change must fail.
    for i in range(len(GO_VERIFIER_KEY)):
        mangled = GO_VERIFIER_KEY[:i] + chr(ord(GO_VERIFIER_KEY[i]) + 1) + GO_VERIFIER_KEY[i + 1 :]
        with pytest.raises(NoteError):
            Verifier.from_key_string(mangled)


def test_mangled_signer_keys_are_rejected() -> None:
    for i in range(len(GO_SIGNER_KEY)):
        mangled = GO_SIGNER_KEY[:i] + chr(ord(GO_SIGNER_KEY[i]) + 1) + GO_SIGNER_KEY[i + 1 :]
        with pytest.raises(NoteError):
            Signer.from_key_string(mangled)


@pytest.mark.parametrize("name", ["", "a+b", "with space", "tab\tname"])
def test_key_names_with_plus_or_spaces_are_refused(name: str) -> None:
    with pytest.raises(NoteError):
        Signer.generate(name)


@settings(max_examples=50, deadline=None)
@given(st.text(st.characters(min_codepoint=0x20, blacklist_categories=["Cs"]), max_size=200))
def test_any_text_round_trips_and_any_change_breaks_it(body: str) -> None:
    signer = Signer.from_key_string(GO_SIGNER_KEY)
    signed = note.sign(body + "\n", signer)
    assert note.open_note(signed, [signer.verifier()]).text == body + "\n"
    with pytest.raises(NoteError):
        note.open_note("x" + signed, [signer.verifier()])


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_the_parser_never_crashes_on_garbage(data: bytes) -> None:
    with contextlib.suppress(NoteError):
        note.open_note(data, [Verifier.from_key_string(GO_VERIFIER_KEY)])
