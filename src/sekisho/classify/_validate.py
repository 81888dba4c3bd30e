"""Check digits and number-range rules that tell a real identifier from a look-alike.

Each function takes ASCII digits (or letters for IBAN) and returns whether the value is valid.
They are pure and cheap; detectors call them on every candidate.
"""

from __future__ import annotations

import operator
import string

# Weights of the first eleven digits of a My Number, left to right (the law counts them from the
# check digit: weights 2..7 for the nearest six, then 2..6).
_MY_NUMBER_WEIGHTS = (6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2)
_ZERO = ord("0")


def my_number_ok(digits: str) -> bool:
    """個人番号 (My Number): 12 digits, the last a check digit (mod 11, weights 2..7)."""
    if len(digits) != 12 or not digits.isdigit() or not digits.isascii():
        return False
    codes = digits.encode()
    total = sum(map(operator.mul, codes, _MY_NUMBER_WEIGHTS)) - _ZERO * 47
    remainder = total % 11
    check = 0 if remainder <= 1 else 11 - remainder
    return check == codes[11] - _ZERO


def my_number_check_digit(body: str) -> int:
    total = sum(int(body[11 - n]) * (n + 1 if n <= 6 else n - 5) for n in range(1, 12))
    remainder = total % 11
    return 0 if remainder <= 1 else 11 - remainder


def corporate_number_ok(digits: str) -> bool:
    """法人番号 (corporate number): 13 digits, the FIRST a check digit over the other 12."""
    if len(digits) != 13 or not digits.isdigit() or not digits.isascii():
        return False
    # Digits counted from the right: odd positions weigh 1, even positions weigh 2.
    codes = digits.encode()
    total = sum(codes[1:]) + sum(codes[1::2]) - _ZERO * 18
    return 9 - total % 9 == codes[0] - _ZERO


def corporate_check_digit(body: str) -> int:
    # Digits counted from the right: odd positions weigh 1, even positions weigh 2.
    total = 0
    for n, ch in enumerate(reversed(body), start=1):
        total += int(ch) * (2 if n % 2 == 0 else 1)
    return 9 - total % 9


_LUHN_DOUBLED = str.maketrans("0123456789", "0246813579")  # 2d, less 9 when over 9


def luhn_ok(digits: str) -> bool:
    if not digits.isdigit() or not digits.isascii() or len(digits) < 2:
        return False
    backwards = digits[::-1]
    doubled = backwards[1::2].translate(_LUHN_DOUBLED)
    total = sum(backwards[0::2].encode()) + sum(doubled.encode()) - _ZERO * len(digits)
    return total % 10 == 0


def luhn_check_digit(body: str) -> int:
    for check in range(10):
        if luhn_ok(body + str(check)):
            return check
    raise AssertionError("unreachable: one of ten digits always completes a Luhn number")


def ean13_ok(digits: str) -> bool:
    """EAN-13 (JAN barcodes, ISBN-13): weights 1 and 3 in turn, the total a multiple of 10."""
    if len(digits) != 13 or not digits.isdigit() or not digits.isascii():
        return False
    codes = digits.encode()
    return (sum(codes[0::2]) + 3 * sum(codes[1::2]) - _ZERO * 25) % 10 == 0


def card_issuer(digits: str) -> str | None:
    """The card network whose issuer range and length the number fits, or None."""
    n = len(digits)
    two = int(digits[:2]) if n >= 2 else -1
    three = int(digits[:3]) if n >= 3 else -1
    four = int(digits[:4]) if n >= 4 else -1
    six = int(digits[:6]) if n >= 6 else -1
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if (51 <= two <= 55 or 2221 <= four <= 2720) and n == 16:
        return "mastercard"
    if two in (34, 37) and n == 15:
        return "amex"
    if 3528 <= four <= 3589 and 16 <= n <= 19:
        return "jcb"
    if (300 <= three <= 305 or two in (36, 38, 39)) and 14 <= n <= 19:
        return "diners"
    if (four == 6011 or 644 <= three <= 649 or two == 65 or 622126 <= six <= 622925) and (
        16 <= n <= 19
    ):
        return "discover"
    if two == 62 and 16 <= n <= 19:
        return "unionpay"
    return None


def credit_card_ok(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and card_issuer(digits) is not None and luhn_ok(digits)


# IBAN lengths by country (ISO 13616 registry, the countries a Japanese business meets most).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AT": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21, "CY": 28,
    "CZ": 24, "DE": 22, "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GI": 23,
    "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "KW": 30, "KZ": 20,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PT": 25, "QA": 29, "RO": 24, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "TR": 26, "UA": 29,
}  # fmt: skip

_IBAN_VALUE = {c: str(i) for i, c in enumerate(string.digits + string.ascii_uppercase)}


def iban_ok(compact: str) -> bool:
    """ISO 13616: known country length and mod-97 == 1 over the rearranged value."""
    compact = compact.upper()
    if len(compact) < 15 or IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    if not compact[2:4].isdigit() or not compact.isalnum() or not compact.isascii():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(_IBAN_VALUE[c] for c in rearranged)) % 97 == 1


def iban_check_digits(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    value = int("".join(_IBAN_VALUE[c] for c in rearranged.upper()))
    return f"{98 - value % 97:02d}"


def ipv4_ok(parts: list[str]) -> bool:
    if len(parts) != 4:
        return False
    for part in parts:
        if not part.isdigit() or len(part) > 3 or int(part) > 255:
            return False
        if len(part) > 1 and part[0] == "0":  # 010 is an octal-looking code, not an address
            return False
    return True


def health_insurer_ok(digits: str) -> bool:
    """保険者番号: 8 digits (6 for 国民健康保険) whose last digit is a Luhn-style check digit."""
    if len(digits) == 6:
        return True
    return len(digits) == 8 and luhn_ok(digits)
