"""Normalised forms of personal identifiers, so that a data-subject request finds a person
however their identifier was written: ``０９０－１２３４－５６７８``, ``090-1234-5678`` and
``+81 90 1234 5678`` are one phone number.

Values are folded as the classifier folds what it matched (full-width ASCII to ASCII, dash
and long-vowel look-alikes to ``-``, ideographic and no-break spaces to spaces; the same table
as ``sekisho.classify._text.fold``, kept here because that module is private to the classifier),
then reduced to the identifier's canonical form. Only keyed hashes of these forms are stored.
"""

from __future__ import annotations

import re
import unicodedata

_FOLD: dict[int, int] = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}
_FOLD.update({ord(ch): ord("-") for ch in "‐‑‒–—―−－ーｰ﹣"})
_FOLD.update({0x3000: 0x20, 0x00A0: 0x20})
_NOT_DIGIT = re.compile(r"[^0-9]+")


def fold(value: str) -> str:
    """Full-width ASCII, dash look-alikes and wide spaces folded; length-preserving."""
    return value if value.isascii() else value.translate(_FOLD)


def digits_of(value: str) -> str:
    return _NOT_DIGIT.sub("", fold(value))


EMAIL = "EMAIL"
PHONE = "PHONE_JP"
PHONE_INTL = "PHONE_INTL"
MY_NUMBER = "MY_NUMBER"
PERSON = "PERSON"

# Identifiers whose meaning is their digits, whatever the separators and widths.
_DIGIT_TYPES = frozenset(
    {
        MY_NUMBER,
        "CORPORATE_NUMBER",
        "CREDIT_CARD",
        "BANK_ACCOUNT_JP",
        "POSTAL_CODE_JP",
        "HEALTH_INSURANCE_JP",
    }
)
# Identifiers made of letters and digits; separators and case are not part of them.
_CODE_TYPES = frozenset({"PASSPORT_JP", "DRIVER_LICENSE_JP", "RESIDENCE_CARD_JP", "IBAN"})
# Never indexed: a secret is not a person, and a label is not an identifier.
NOT_INDEXED = frozenset({"SECRET", "CONFIDENTIAL_LABEL"})

_TYPE_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_SPACES = re.compile(r"\s+")
_SEPARATORS = re.compile(r"[\s\-./]+")


class IdentifierError(ValueError):
    """A value that cannot be an identifier of the given type."""


def check_type(id_type: str) -> str:
    if not _TYPE_NAME.match(id_type):
        raise IdentifierError(
            f"identifier type {id_type!r} is not a finding type name (e.g. EMAIL, PHONE_JP, "
            "MY_NUMBER, PERSON)"
        )
    return id_type


def normalise(id_type: str, value: str) -> str:
    """The canonical form of an identifier; raise ``IdentifierError`` if nothing is left."""
    check_type(id_type)
    if id_type == PHONE:
        out = _phone(value)
    elif id_type == PHONE_INTL:
        out = _phone_intl(value)
    elif id_type in _DIGIT_TYPES:
        out = digits_of(value)
    elif id_type == EMAIL:
        out = _SPACES.sub("", fold(value)).lower()
    elif id_type in _CODE_TYPES:
        out = _SEPARATORS.sub("", fold(value)).upper()
    else:
        # Names, addresses and the rest: compatibility forms folded, spacing ignored
        # (山田 太郎 and 山田　太郎 and 山田太郎 are one name), case ignored.
        out = _name_form(value)
    if not out:
        raise IdentifierError(f"{value!r} has nothing that can be a {id_type} value")
    return out


def _name_form(value: str) -> str:
    # NFKC, case folding and removing spaces can each enable another (a removed space lets a
    # combining mark compose): repeat until nothing changes, so the form is stable.
    out = fold(value)
    for _ in range(4):
        step = _SPACES.sub("", unicodedata.normalize("NFKC", out).casefold())
        step = unicodedata.normalize("NFKC", step)
        if step == out:
            break
        out = step
    return out


def _phone(value: str) -> str:
    folded = fold(value).strip()
    digits = digits_of(folded)
    if folded.startswith("+81") or (folded.startswith("0081") and len(digits) > 12):
        national = digits[2:] if folded.startswith("+") else digits[4:]
        national = national.removeprefix("0")  # +81 (0)3 ... written with the trunk zero
        digits = "0" + national
    return digits


def _phone_intl(value: str) -> str:
    """A phone number outside Japan as its country code and number: ``+49 (0)30 1234 5678``,
    ``+49 30 12345678`` and ``0049 30 12345678`` are one number (the trunk 0 in brackets is not
    dialled from abroad, 00 is the international prefix)."""
    folded = _SPACES.sub("", fold(value).strip())
    digits = digits_of(folded.replace("(0)", ""))
    if folded.startswith("00"):
        digits = digits[2:]
    return digits


def is_phone_abroad(value: str) -> bool:
    """Is this phone number written in international form with a country code other than
    Japan's (+49 …, 0049 …)? Such a number is a PHONE_INTL, not a PHONE_JP."""
    folded = _SPACES.sub("", fold(value).strip()).lstrip("(")
    return folded.startswith(("+", "00")) and not folded.startswith(("+81", "0081"))


def check_query(id_type: str, value: str) -> None:
    """A data-subject request's identifier, checked the way the classifier checks what it
    indexes: a typo (a My Number with a wrong check digit, a phone of one digit, a type that
    is no finding type) can match nothing, and "0 records" would answer the person falsely.
    Raise ``IdentifierError`` saying what is wrong."""
    from sekisho.classify import _validate
    from sekisho.classify.findings import TYPES

    if id_type not in TYPES:
        raise IdentifierError(
            f"{id_type!r} is not a finding type; one of: {', '.join(sorted(TYPES))}"
        )
    form = normalise(id_type, value)
    problem = None
    if id_type == "MY_NUMBER" and not (len(form) == 12 and _validate.my_number_ok(form)):
        problem = "a My Number is 12 digits whose last is its check digit"
    elif id_type == "CORPORATE_NUMBER" and not (
        len(form) == 13 and _validate.corporate_number_ok(form)
    ):
        problem = "a corporate number is 13 digits whose first is its check digit"
    elif id_type == "CREDIT_CARD" and not _validate.credit_card_ok(form):
        problem = "a card number is 13 to 19 digits that pass the Luhn check"
    elif id_type == PHONE and not (form.startswith("0") and 10 <= len(form) <= 11):
        problem = "a Japanese phone number is 10 or 11 digits from 0 (or +81 and the rest)"
    elif id_type == PHONE_INTL and not 8 <= len(form) <= 15:
        problem = "a phone number abroad is its country code and number, 8 to 15 digits (+49 …)"
    elif id_type == "POSTAL_CODE_JP" and len(form) != 7:
        problem = "a postal code is 7 digits"
    elif id_type == EMAIL:
        local, at, domain = form.rpartition("@")
        if not (at and local and "." in domain.strip(".")):
            problem = "an e-mail address is local@domain"
    if problem is not None:
        raise IdentifierError(f"{value!r} is not a {id_type}: {problem}; nothing was searched")
