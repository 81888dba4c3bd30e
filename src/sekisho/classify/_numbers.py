"""Numeric identifiers: My Number, corporate number, phones, postal codes, cards, bank accounts,
passports, licences, residence cards, health insurance and IPv4 addresses.

One regex pass finds every run of digits with its separators (any width, any dash look-alike,
spaces, parentheses); everything else happens per candidate, so clean text costs one scan.
A run that is not an identifier as a whole is tried group by group (``2024/01/05 090-1234-5678``
written in one line is two things), with a bound on group windows so no input is quadratic.
"""

from __future__ import annotations

from collections.abc import Callable

from sekisho.classify import _context as ctx
from sekisho.classify._address import PREFECTURES_ROMAN
from sekisho.classify._lazy import lazy_compile
from sekisho.classify._text import DASH, DIGIT, FOLD_TABLE, SPACE, fold
from sekisho.classify._validate import (
    card_issuer,
    corporate_number_ok,
    ean13_ok,
    health_insurer_ok,
    ipv4_ok,
    luhn_ok,
    my_number_ok,
)
from sekisho.classify._web import iban_at
from sekisho.classify.findings import (
    BANK_ACCOUNT_JP,
    CORPORATE_NUMBER,
    CREDIT_CARD,
    DRIVER_LICENSE_JP,
    HEALTH_INSURANCE_JP,
    IBAN,
    IP_ADDRESS,
    MY_NUMBER,
    PASSPORT_JP,
    PHONE_INTL,
    PHONE_JP,
    POSTAL_CODE_JP,
    RESIDENCE_CARD_JP,
    Finding,
)

_SEP = f"{DASH}{SPACE}.．/／()（）"
# Where a run of digits ends: no digit and no separator-then-digit follows.
_RUN_END = rf"(?![{DIGIT}]|[{_SEP}]{{1,3}}[{DIGIT}])"
# Shapes that are no identifier whatever surrounds them, tested right after the run's first
# character (an ASCII digit, not after two capitals, which may open an IBAN): two groups of at
# most nine digits in all (order numbers, "1234-5678", "2024-00731"; a postal code 123-4567
# excepted; 12345-12345678 is a ゆうちょ account and stays), three groups of at most eight
# (2024-06-11, 12/04/1985, versions 2.14.3) and a date with the hour of a time, written with
# one ASCII "-", "/" or "." between groups. Such runs never reach Python.
_NO_IDENTIFIER = (
    rf"(?<=[0-9])(?<![A-Z][A-Z].)(?:"
    rf"(?![0-9]{{2}}-[0-9]{{4}}{_RUN_END})[0-9]{{0,3}}[-/.][0-9]{{1,5}}"
    rf"|[0-9]{{5}}[-/.][0-9]{{1,2}}"
    rf"|[0-9]{{0,3}}[-/.][0-9]{{1,2}}[-/.][0-9]{{1,2}}"
    rf"|[0-9]?[-/.][0-9]{{1,2}}[-/.][0-9]{{1,4}}"
    # a date and the hour of a time ("2024-06-11 08:42"); 0120-12-34 56 would be a phone
    rf"|(?<=[1-9])[0-9]{{0,3}}[-/.][0-9]{{1,2}}[-/.][0-9]{{1,2}} [0-9]{{1,2}}"
    rf"){_RUN_END}"
)
# Led by a character class, so the regex engine skips text without digits at C speed; a
# leading "+" or "(" not followed by a digit is dropped by the caller. Possessive quantifiers:
# a digit run never gives characters back, so no input backtracks. Right after the first
# character, lookarounds drop runs shorter than six characters (no identifier is written so
# short: "14:00", "第3回", "5%") unless two capitals precede them (an IBAN: "GB82 WEST ..."),
# and runs of _NO_IDENTIFIER shapes; a match never starts inside a run that was dropped (the
# look-behinds on a digit, then up to three separators, before the first digit).
NUMBER_RUN = lazy_compile(
    rf"[+＋(（{DIGIT}](?:(?<=[A-Z][A-Z].)|(?=[+＋{DIGIT}{_SEP}]{{5}}))"
    rf"(?<![{DIGIT}][{DIGIT}])(?<![{DIGIT}][{_SEP}][{DIGIT}])"
    rf"(?<![{DIGIT}][{_SEP}]{{2}}[{DIGIT}])(?<![{DIGIT}][{_SEP}]{{3}}[{DIGIT}])"
    rf"(?!{_NO_IDENTIFIER})"
    rf"[{DIGIT}]*+(?:[{_SEP}]{{1,3}}+[{DIGIT}]++)*+"
    rf"(?:[)）](?<=[{DIGIT}][)）]))?"
)
_GROUP = lazy_compile(r"[0-9]+")
_CIDR = lazy_compile(r"([0-9]{1,3}(?:\.[0-9]{1,3}){3})/(?:[0-9]|[12][0-9]|3[0-2])")
_BRACKETED_PLUS = lazy_compile(rf"[(（][+＋][{DIGIT}]{{1,3}}[)）]")
_AMOUNT_TAIL = lazy_compile(rf"[{DIGIT}]{{3}}[{SPACE}]+(?=[{DIGIT}])")
_INNER_SEP = lazy_compile(r"(?<=[0-9])[^0-9]+(?=[0-9])")  # what stands between digit groups
_DIGIT_CHARS = frozenset("0123456789０１２３４５６７８９")
_ASCII_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_ASCII_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_UPPER = _ASCII_UPPER | frozenset("ＡＢＣＤＥＦＧＨＩＪＫＬＭＮＯＰＱＲＳＴＵＶＷＸＹＺ")
_LETTERS = _UPPER | _ASCII_LETTERS
_TOKEN_CHARS = _LETTERS | {"_"}
_LABEL_PREFIXES = frozenset({"tel", "fax", "no", "mobile", "phone", "ph", "zip", "ip", "num"})
_HEXISH = frozenset("0123456789abcdefABCDEF-")

# Written groupings of card numbers: 16 as 4-4-4-4, Amex 15 as 4-6-5, Diners 14 as 4-6-4, 19.
_CARD_GROUPINGS = ([4, 4, 4, 4], [4, 6, 5], [4, 6, 4], [4, 4, 4, 4, 3], [4, 4, 4, 1])
_MAX_GROUPS = 6  # the most groups an identifier has: +81 (0) 3 1234 5678
_MAX_DIGITS = 24
_WHOLE_GROUP = 9  # digits: a group this long is a value, never one group of several


def _score(base: float, kind: str | None, wanted: frozenset[str]) -> float:
    if kind in wanted:
        return max(base, 0.95)
    if kind in (ctx.NEGATIVE, ctx.VERSION):
        return round(base - 0.35, 2)  # scores are reported with two decimals
    return base


_PHONE_CTX = frozenset({ctx.PHONE})
_POSTAL_CTX = frozenset({ctx.POSTAL})
_MYNUMBER_CTX = frozenset({ctx.MYNUMBER})
_CORPORATE_CTX = frozenset({ctx.CORPORATE})
_CARD_CTX = frozenset({ctx.CARD})
_MYNUMBER_CUED_SHAPES = ([3, 3, 3, 3], [6, 6])
# A value glued to letters is only as sure as its check digit; those without one (or with one
# that passes one time in ten, like 13-digit Visa and JAN codes) need the word of their type.
_GLUED_CUES: dict[str, tuple[str, ...]] = {
    PHONE_JP: (ctx.PHONE,),
    PHONE_INTL: (ctx.PHONE,),
    POSTAL_CODE_JP: (ctx.POSTAL,),
    BANK_ACCOUNT_JP: (ctx.BANK, ctx.YUCHO),
    HEALTH_INSURANCE_JP: (ctx.HEALTH,),
    DRIVER_LICENSE_JP: (ctx.LICENSE,),
    CORPORATE_NUMBER: (ctx.CORPORATE,),
    CREDIT_CARD: (ctx.CARD,),
}
_RESIDENCE_CTX = frozenset({ctx.RESIDENCE})
_PASSPORT_CTX = frozenset({ctx.PASSPORT})


def _phone(digits: str, folded: str, groups: list[str]) -> float | None:
    """The base score of a Japanese phone number (domestic or +81 form), or None if it is not
    one by the numbering plan; context words adjust it (``_score``)."""
    if "/" in folded or "." in folded:
        return None
    international = folded.startswith(("+", "(+"))
    if international:
        if not digits.startswith("81"):
            return None
        national = digits[2:]
        if "(0)" in folded.replace(" ", "") and national.startswith("0"):
            national = national[1:]
        if national.startswith("0"):
            return None
        national = "0" + national
        grouped = True
    else:
        if not digits.startswith("0"):
            return None
        national = digits
        grouped = len(groups) > 1
    n = len(national)
    if n < 10:
        return None
    head3, head4 = national[:3], national[:4]
    if head3 in ("070", "080", "090", "050") or head4 == "0800":
        valid = n == 11
        if grouped and not international and valid:
            valid = len(groups) == 3 and [len(g) for g in groups] in ([3, 4, 4], [4, 3, 4])
        base = 0.9 if grouped else 0.7
    elif head4 in ("0120", "0570"):
        valid = n == 10
        base = 0.9 if grouped else 0.55
    elif national[1] in "123456789" and head3 not in ("020", "060"):
        valid = n == 10
        if grouped and not international and valid:
            sizes = [len(g) for g in groups]
            valid = len(sizes) == 3 and sizes[2] == 4 and 2 <= sizes[0] <= 5
        base = 0.85 if grouped else 0.45
    else:
        return None
    return base if valid else None


# Country calling codes (ITU-T E.164): the one-digit and two-digit codes assigned, and the first
# two digits of the three-digit ones. +0 is none, nor are the two-digit codes not listed.
_CC_1 = frozenset("17")
_CC_2 = frozenset(
    """20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 60 61 62 63
    64 65 66 81 82 84 86 90 91 92 93 94 95 98""".split()  # noqa: SIM905
)
_CC_3_HEADS = frozenset(
    "21 22 23 24 25 26 29 35 37 38 42 50 59 67 68 69 80 85 87 88 96 97 99".split()  # noqa: SIM905
)


def _phone_intl(digits: str, folded: str, groups: list[str]) -> float | None:
    """The base score of a phone number in international form outside Japan (``+49 30
    12345678``, ``+33 6 12 34 56 78``, ``+1 212-555-0100``): an assigned country code, then
    6 to 13 digits (15 in all at most, E.164), ``(0)`` of the national trunk prefix allowed."""
    if "/" in folded or "." in folded:
        return None
    if digits[:1] in _CC_1:
        cc = 1
    elif digits[:2] in _CC_2:
        cc = 2
    elif digits[:2] in _CC_3_HEADS:
        cc = 3
    else:
        return None
    rest = len(digits) - cc
    if "(0)" in folded.replace(" ", "") and digits[cc : cc + 1] == "0":
        rest -= 1
    if not 6 <= rest <= 15 - cc:
        return None
    sizes = [len(g) for g in groups]
    if len(sizes) >= 3 and all(size == 3 for size in sizes[1:]):
        # +1 200 000, +12 345 678: a signed amount grouped by thousands as often as a number;
        # a phone only where a phone word says so
        return 0.45
    return 0.85


_BANK_SHAPES = ([5, 8], [5, 1, 8], [4, 3, 7])


def _shape_possible(n: int, sizes: list[int], folded: str) -> bool:
    """Could a run with these digit groups be any identifier at all? A cheap first filter."""
    if folded[0] in "+(":
        return True  # +81 / (03) phones
    if "." in folded:
        # Dots separate only the four octets of an IPv4 address (and its /prefix length), or
        # the groups of a phone number after its word (090.1234.5678).
        return (
            len(sizes) == 4
            or (len(sizes) == 5 and "/" in folded)
            or (len(sizes) == 3 and n in (10, 11))
        )
    if "/" in folded:
        return False  # dates and fractions: no identifier is written with slashes
    if n < 6 or n > 19:
        return False
    if sizes in ([6], [7], [3, 4], [8]) or sizes in _BANK_SHAPES:
        return True  # postal, bank, health insurance
    if n in (10, 11):
        return folded[0] == "0"
    if n == 12:
        return sizes in ([12], [4, 4, 4]) or sizes in _MYNUMBER_CUED_SHAPES
    if n == 13 and sizes in ([13], [1, 4, 4, 4]):
        return True
    return n >= 13 and (len(sizes) == 1 or sizes in _CARD_GROUPINGS)


_ARN = "arn:"
# An AWS account id's key, right before the number: "AccountId": ", account=, aws_account_id:
_ACCOUNT_KEY = lazy_compile(r"(?i:account|owner)(?i:[_ -]?id)?[\"']?[ \t]*[:=]?[ \t]*[\"']?$")


def _aws_account_id(text: str, start: int) -> bool:
    """Whether the 12 digits at ``start`` are an AWS account id: inside an ARN
    (arn:aws:iam::111122223333:role/x, arn:aws:sns:ap-northeast-1:111122223333:topic) or
    right after an account key (AccountId, aws_account_id, account:)."""
    if start and text[start - 1] == ":":
        arn = text.rfind(_ARN, max(0, start - 64), start)
        if arn >= 0 and not any(c.isspace() for c in text[arn:start]):
            return True
    return _ACCOUNT_KEY.search(text, max(0, start - 24), start) is not None


def _date_led(digits: str) -> bool:
    """Whether 12 digits open with a date, 19YYMMDD or 20YYMMDD (a timestamp to the minute, a
    dated reference): one My Number in about 1,300 does, at random."""
    return (
        digits[:2] in ("19", "20") and "01" <= digits[4:6] <= "12" and "01" <= digits[6:8] <= "31"
    )


def _lettered_possible(sizes: list[int]) -> bool:
    """Could digits right after letters be an identifier written with its letters (a passport
    TK1234567, a residence card AB12345678CD, an invoice number T1234567890123)?"""
    return sizes == [1, 4, 4, 4] or (len(sizes) == 1 and sizes[0] in (7, 8, 13))


def _sep_kind(separator: str) -> str:
    if "/" in separator or "." in separator:
        return "/"
    if separator.strip() == "":
        return " "
    return "-"


# A hex token's groups, joined by "-" or "_" as UUIDs and ids write them; read from the number
# outwards (before it, on the reversed text).
_HEX_GROUPS = lazy_compile(r"[0-9A-Fa-f]+(?:[-_][0-9A-Fa-f]+)*")
_HEX_RUN = lazy_compile(r"[0-9A-Fa-f]*")
_HEX_LETTERS = frozenset("abcdefABCDEF")
_ASCII_ALNUM = _ASCII_LETTERS | frozenset("0123456789")
_UUID = lazy_compile(r"[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}")
_HEX_TOKEN = 16  # characters: the shortest hex string read as a hash or digest, not as a word
_HEX_REACH = 64  # characters read each side of a run for the hex string around it


def _hex_neighbour(side: str) -> bool:
    """Whether ``side`` (the text after a "-" or "_" next to a number, read away from it) opens
    with a group of a hex token: hex letters and digits both (a716, 550e8400), and either
    several groups (a UUID) or one that is a whole word (``deadbeef42-``, not ``cid_``)."""
    match = _HEX_GROUPS.match(side)
    if match is None:
        return False
    group = match.group()
    if _HEX_LETTERS.isdisjoint(group) or not any(c.isdigit() for c in group):
        return False
    return "-" in group or "_" in group or side[match.end() : match.end() + 1] not in _ASCII_ALNUM


def _meeting(piece: str, kinds: list[str]) -> str:
    """The kind of separator (``_sep_kind``) where the values of a run meet; "" for none."""
    if " " in kinds:
        # Spaces are the weak separators: in a mixed run the values meet at a space.
        return " " if len(set(kinds)) > 1 else ""
    if "-" in piece and ("/" in piece) != ("." in piece):
        # Values written with dashes meet at a slash ("090-1234-5678/080-1234-5678",
        # "4111-1111-1111-1111/123"), dotted addresses at a dash ("10.0.0.1-10.0.0.9").
        return "/" if "/" in piece else "-"
    return ""


def _embedded(text: str, start: int, end: int) -> bool:
    """Is the run a group of a UUID or of a hex token (550e8400-...-446655440000)?"""
    if (
        start > 1
        and text[start - 1] in "-_"
        and _hex_neighbour(text[max(0, start - 41) : start - 1][::-1])
    ):
        return True
    return text[end : end + 1] in ("-", "_") and _hex_neighbour(text[end + 1 : end + 41])


def _in_hex_token(text: str, start: int, end: int) -> bool:
    """Whether letters glued to the digits are hex digits of a hash or digest (an ETag, a commit,
    a SHA-256) or of a literal (0x102800001029D): a word of 16 hex characters or more, or one
    after 0x, the run inside it (``card4111…`` is a word and a number; its "d" is no hex
    digit)."""
    if not (text[start:end].isascii() and text[start:end].isdigit()):
        return False
    before = _HEX_RUN.match(text[max(0, start - _HEX_REACH) : start][::-1])
    after = _HEX_RUN.match(text, end, end + _HEX_REACH)
    assert before is not None and after is not None  # "*": always a match, maybe empty
    left, right = start - before.end(), after.end()
    if text[left - 2 : left] in ("0x", "0X"):
        return True
    uuid = _UUID.search(text, max(0, start - 36), end + 36)
    if uuid is not None and uuid.start() <= start and end <= uuid.end():
        return True  # a group of a UUID in capitals: …-8DAC-FD1BC4887660 holds no passport
    # A word ends where the hex digits end; as far as they were read (a SHA-512), it is one.
    return (
        right - left >= _HEX_TOKEN
        and (start - left == _HEX_REACH or text[left - 1 : left] not in _ASCII_ALNUM)
        and (right - end == _HEX_REACH or text[right : right + 1] not in _ASCII_ALNUM)
    )


def _escaped(text: str, start: int) -> bool:
    """Whether the letter before ``start`` ends an escape of a JSON or C string (``\\n``,
    ``\\t``, ``\\r``, ``\\u306f``): a separator as written, not a word glued to the digits."""
    if start >= 2 and text[start - 2] == "\\" and text[start - 1] in "ntr":
        return True
    return (
        start >= 6
        and text[start - 6 : start - 4] == "\\u"
        and all(c in _HEXISH and c != "-" for c in text[start - 4 : start])
    )


def _letters_before(text: str, start: int) -> str:
    i = start
    while i > 0 and start - i < 5 and text[i - 1] in _UPPER | _ASCII_LETTERS:
        i -= 1
    return text[i:start]


class NumberDetector:
    """Classifies each digit run of a text into at most one identifier type."""

    def __init__(self, wanted: frozenset[str]) -> None:
        self._wanted = wanted
        self._iban = IBAN in wanted
        self._digit_groups = _GROUP.compiled.findall

    def detect(self, text: str, out: list[Finding]) -> None:
        length = len(text)
        for match in NUMBER_RUN.finditer(text):
            start, end = match.span()
            raw = match.group()
            before = text[start - 1] if start else ""
            if before in _TOKEN_CHARS or (end < length and text[end] in _LETTERS):
                # Digits glued to a word or after an underscore (ids, keys, hashes, product
                # codes): _classify decides what such a run can be.
                if start >= 2 and self._iban and text[start - 2 : start].isupper():
                    iban = iban_at(text, start - 2)
                    if iban is not None:
                        out.append(iban)
                        continue
                if len(raw) < 6 or (len(raw) < 7 and before in _LETTERS):
                    continue  # 7 digits at least after letters (TK1234567), as bare 6
            elif len(raw) < 6:
                continue  # too short for any identifier
            elif before in ",，" and start >= 2 and text[start - 2] in _DIGIT_CHARS:
                # "¥12,800 4111 1111 1111 1111": the first group ends an amount, and the value
                # starts after the space (one run with one separator is otherwise one value).
                group = _AMOUNT_TAIL.match(raw)
                if group is not None:
                    start, raw = start + group.end(), raw[group.end() :]
                    if len(raw) < 6:
                        continue
            if raw[0] not in _DIGIT_CHARS:
                while (
                    raw
                    and raw[0] not in _DIGIT_CHARS
                    and (raw[0] not in "+＋(（" or len(raw) == 1 or raw[1] not in _DIGIT_CHARS)
                ):
                    # "（(03)…", "（/ 1234…": the outer bracket and a leading separator are
                    # prose; a value starts at a digit, or at the + or ( right before one.
                    start, raw = start + 1, raw[1:]
                if not raw:
                    continue
            if raw[0] in "+＋" and start and _BRACKETED_PLUS.match(text, start - 1):
                start, raw = start - 1, text[start - 1] + raw  # "(+81) 90-…": both brackets
            if raw[-1] in ")）" or raw[0] in "(（":
                opening = raw.count("(") + raw.count("（")
                closing = raw.count(")") + raw.count("）")
                if raw[-1] in ")）" and closing > opening:  # the bracket closes prose
                    end -= 1
                    raw = raw[:-1]
                elif raw[0] in "(（" and raw[-1] in ")）" and opening + closing == 2:
                    start, end, raw = start + 1, end - 1, raw[1:-1]  # "（080-2345-6789）"
                elif raw[0] in "(（" and opening + closing == 1:
                    start, raw = start + 1, raw[1:]  # "(4532-...": an opening bracket of prose
            self._run(text, raw, start, end, out)

    def _run(self, text: str, raw: str, start: int, end: int, out: list[Finding]) -> None:
        before = text[start - 1] if start else ""
        if start >= 2 and before in _ASCII_UPPER and self._iban and text[start - 2].isupper():
            iban = iban_at(text, start - 2)  # IBANs start with two capitals and two digits
            if iban is not None:
                out.append(iban)
                return
        folded = raw if raw.isascii() else raw.translate(FOLD_TABLE)
        spaced = " " in folded
        if not spaced:
            # Without spaces a run is one value or nothing, but for two values joined by a
            # slash or a dash (below).
            groups: list[str] = self._digit_groups(folded)
            # Its shape alone can rule it out: most numbers in prose (dates, amounts, order
            # numbers, versions) stop here.
            sizes = [*map(len, groups)]
            if len(groups) <= _MAX_GROUPS and (
                _shape_possible(sum(sizes), sizes, folded)
                or (before in _LETTERS and _lettered_possible(sizes))
            ):
                finding = self._classify(text, start, end, folded, groups, sizes)
                if finding is not None:
                    out.append(finding)
                    return
            if "-" not in folded or ("/" in folded) == ("." in folded):
                return
        spans = [(m.start(), m.end()) for m in _GROUP.finditer(folded)]
        ndigits = sum(b - a for a, b in spans)
        whole_tried = not spaced or (ndigits <= _MAX_DIGITS and len(spans) <= _MAX_GROUPS)
        if spaced and whole_tried:
            finding = self._classify(text, start, end, folded, [folded[a:b] for a, b in spans])
            if finding is not None:
                out.append(finding)
                return
        done = (0, len(folded)) if whole_tried else None
        self._split(text, raw, folded, start, spans, done, out)

    def _split(
        self,
        text: str,
        raw: str,
        folded: str,
        start: int,
        spans: list[tuple[int, int]],
        done: tuple[int, int] | None,
        out: list[Finding],
    ) -> None:
        """The values of a run (``folded``, at ``start``) whose digit groups ``spans`` are not
        one value; ``done`` is a stretch of it already classified."""
        if len(spans) == 1:
            return
        # Split where the separator changes kind ("2024/01/05 090-1234-5678" is a date and a
        # phone): a run written with one separator throughout is one value or nothing, so
        # "4111 1111 1111 1112" never yields its first twelve digits as a My Number.
        gaps = [(spans[k][1], spans[k + 1][0]) for k in range(len(spans) - 1)]
        kinds = [_sep_kind(folded[a:b]) for a, b in gaps]
        # The columns of a table written with spaces ("1001  1234 5678 9018  090-…") meet at
        # the widest gaps, when the spaces between groups are not all as wide; each column is
        # then read as a run of its own.
        widths = [
            b - a + raw.count("\u3000", a, b) if kind == " " else 0
            for (a, b), kind in zip(gaps, kinds, strict=True)
        ]
        spaced = [width for width in widths if width]
        widest = max(spaced, default=0)
        columns = bool(spaced) and min(spaced) < widest
        written = ""  # what each value of the run is written with, if it must be
        if columns:
            cuts = [k for k, width in enumerate(widths) if width == widest]
        else:
            cut = _meeting(folded[spans[0][0] : spans[-1][1]], kinds)
            cuts = [k for k, kind in enumerate(kinds) if kind == cut]
            # Values that meet at a slash are written with dashes, at a dash with dots: the
            # digits of a Go pseudo-version (v0.0.0-20200501191002-183492172623) are none.
            written = {"/": "-", "-": "."}.get(cut, "")
            end = start + len(folded)
            if (
                not cuts
                and kinds[0] == " "
                and text[start - 1 : start] not in _TOKEN_CHARS
                and text[end : end + 1] not in _TOKEN_CHARS
            ):
                # Values listed with single spaces ("1001 123456789018 09012345678"): no value
                # is grouped with a group of nine digits or more, which is a value of its own
                # (but for a run glued to a word or an id: its first digits are the word's,
                # a716 …, or a UUID's whose underscores a second look read as spaces).
                cuts = [
                    k
                    for k in range(len(gaps))
                    if max(spans[k][1] - spans[k][0], spans[k + 1][1] - spans[k + 1][0])
                    >= _WHOLE_GROUP
                ]
        first = 0
        for k in [*cuts, len(spans) - 1]:
            segment = spans[first : k + 1]
            first = k + 1
            a, b = segment[0][0], segment[-1][1]
            if a > 0 and folded[a - 1] in "+(":  # keep a leading + or ( with its number
                a -= 1
            if b < len(folded) and folded[b] == ")" and "(" in folded[a:b]:
                b += 1
            finding = None
            if len(segment) <= _MAX_GROUPS and (a, b) != done and written in folded[a:b]:
                groups = [folded[x:y] for x, y in segment]
                finding = self._classify(text, start + a, start + b, folded[a:b], groups)
                if finding is not None:
                    out.append(finding)
            if finding is None and columns:
                self._split(text, raw, folded, start, segment, (a, b), out)

    def _classify(
        self,
        text: str,
        start: int,
        end: int,
        folded: str,
        groups: list[str],
        sizes: list[int] | None = None,
    ) -> Finding | None:
        """The identifier a run of digit ``groups`` (of ``sizes`` digits) is, written as
        ``folded``, if any."""
        if sizes is None:
            sizes = [*map(len, groups)]
        n = sum(sizes)
        prefix = ""
        # Letters glued to the digits (user123456789018, MN123456789018x, card4111…): the run
        # is a value only if its check digit says so, or the word before it names its type.
        glued = end < len(text) and text[end] in _LETTERS
        if start and text[start - 1] in _LETTERS and not _escaped(text, start):
            prefix = _letters_before(text, start)
            if fold(prefix).lower() in _LABEL_PREFIXES:
                prefix = ""  # TEL09012345678, No123456789018: a label, as if a space followed it
            else:
                glued = True
        if not prefix and not _shape_possible(n, sizes, folded):
            return None  # no identifier is written like this: most numbers in prose stop here
        if glued and _in_hex_token(text, start, end):
            return None  # the hex digits of a hash or digest, not letters of a word
        digits = "".join(groups)
        wanted = self._wanted
        looked_up: list[str | None] = []

        def context() -> str | None:
            # The context word is looked up only once a value has passed its shape and check
            # digits: most candidates are decided without it.
            if not looked_up:
                looked_up.append(ctx.context_before(text, start))
            return looked_up[0]

        def lettered(type_: str, score: float) -> Finding | None:
            # Every score here is a two-decimal constant below 1, or _score's rounded result.
            if type_ not in wanted or score <= 0:
                return None
            return Finding(type_, start, end, score)

        def emit(type_: str, score: float) -> Finding | None:
            if glued and not (
                type_ == MY_NUMBER
                or (type_ == CREDIT_CARD and n >= 14)
                or context() in _GLUED_CUES.get(type_, ())
            ):
                return None
            return lettered(type_, score)

        if prefix:
            found = self._with_letters(text, start, end, prefix, digits, sizes, context, lettered)
            if found is not None or not _shape_possible(n, sizes, folded):
                return found
        if _embedded(text, start, end):
            return None

        # After folding, separators are spaces, "-", "(", ")", "." and "/". Numbers written with
        # dots are IPv4 addresses (dotted quads, nothing else) or versions; with slashes, dates.
        if "." in folded or "/" in folded:
            cidr = _CIDR.fullmatch(folded) if len(groups) == 5 else None
            if cidr is not None:
                # 192.168.1.10/24: the address is the value, its prefix length is not (as for
                # IPv6, 2001:db8::1/64). No version or date is written so: an address whatever
                # word (subnet, mask) stands before it.
                octets = groups[:4]
                if not ipv4_ok(octets) or octets[0] == "255" or text[start - 1 : start] == "v":
                    return None
                found = emit(IP_ADDRESS, 0.85)
                return found and Finding(IP_ADDRESS, start, start + cidr.end(1), found.score)
            if (
                "/" not in folded
                and len(groups) in (3, 4)
                and not (len(groups) == 4 and ipv4_ok(groups))
                and context() == ctx.PHONE
            ):
                # Tel. +81.3.1234.5678, Mobile: 090.1234.5678: a phone where its word says so.
                phone = _phone(digits, folded.replace(".", "-"), groups)
                if phone is not None:
                    return emit(PHONE_JP, _score(phone, ctx.PHONE, _PHONE_CTX))
            inner = folded.lstrip("+(").rstrip(")")
            # Only dots between the groups, one each (then nothing else stands between them).
            if not len(inner) - n == inner.count(".") == len(groups) - 1:
                return None
            if len(groups) == 4 and ipv4_ok(groups):
                if start > 0 and text[start - 1] in "vV":
                    return None
                if groups[0] == "255":  # 255.255.255.0 is a netmask, not a host
                    return None
                return emit(IP_ADDRESS, 0.35 if context() == ctx.VERSION else 0.85)
            return None

        if folded.startswith(("+", "(+")) or (n in (10, 11) and digits[0] == "0"):
            phone = _phone(digits, folded, groups)
            if phone is not None and context() not in (ctx.BANK, ctx.HEALTH):
                return emit(PHONE_JP, _score(phone, context(), _PHONE_CTX))
            if phone is None and folded[0] in "+(" and not digits.startswith("81"):
                intl = _phone_intl(digits, folded, groups)
                if intl is not None and context() not in (ctx.BANK, ctx.HEALTH):
                    return emit(PHONE_INTL, _score(intl, context(), _PHONE_CTX))

        if n == 7:
            if sizes == [3, 4]:
                if start > 0 and text[start - 1] == "〒":
                    return emit(POSTAL_CODE_JP, 0.99)
                if context() == ctx.BANK:  # 口座番号: 123-4567 (a branch code, then the account)
                    return emit(BANK_ACCOUNT_JP, 0.85)
                # NNN-NNNN alone is a part number as often as a postal code ("部品 100-0001 を
                # 5個"): a postal code where 〒, a postal word or an address stands next to it.
                score = _score(0.45, context(), _POSTAL_CTX)
                if _prefecture_follows(text, end) or _address_follows(text, end):
                    score = max(score, 0.9)
                elif _ROMAN_ADDRESS_BEFORE.search(text, max(0, start - 24), start):
                    score = max(score, 0.85)  # "…, Minato-ku, Tokyo 105-0011"
                return emit(POSTAL_CODE_JP, score)
            if sizes == [7]:
                if (start > 0 and text[start - 1] == "〒") or context() == ctx.POSTAL:
                    return emit(POSTAL_CODE_JP, 0.95)
                if context() == ctx.BANK:
                    return emit(BANK_ACCOUNT_JP, 0.9)
            return None

        if n in (6, 8) and len(groups) == 1 and context() == ctx.HEALTH:
            return emit(HEALTH_INSURANCE_JP, 0.95 if health_insurer_ok(digits) else 0.7)

        yucho_shape = sizes in ([5, 8], [5, 1, 8])
        if (yucho_shape or sizes == [8]) and (
            context() == ctx.YUCHO or (yucho_shape and context() == ctx.BANK)
        ):
            if yucho_shape and digits[0] == "1":
                return emit(BANK_ACCOUNT_JP, 0.95)
            if sizes == [8]:
                return emit(BANK_ACCOUNT_JP, 0.9)
        if sizes == [4, 3, 7]:
            return emit(BANK_ACCOUNT_JP, 0.95 if context() == ctx.BANK else 0.75)
        if sizes == [8] and digits[0] == "1" and context() == ctx.BANK:
            return emit(BANK_ACCOUNT_JP, 0.85)

        if n == 12 and sizes in _MYNUMBER_CUED_SHAPES:
            # 266-473-782-880, 266473-782880: grouped otherwise than by fours, a My Number
            # only where the text says so.
            if context() == ctx.MYNUMBER and my_number_ok(digits):
                return emit(MY_NUMBER, 0.9)
            return None
        if n == 12 and sizes in ([12], [4, 4, 4]):
            if context() == ctx.LICENSE:
                return emit(DRIVER_LICENSE_JP, 0.95)
            if my_number_ok(digits):
                if (
                    sizes == [12]
                    and context() != ctx.MYNUMBER
                    and (_aws_account_id(text, start) or _date_led(digits))
                ):
                    # One AWS account id in eleven passes the check digit, and one timestamp
                    # or reference that opens with its date (202406111230, 202406110001)
                    return None
                return emit(MY_NUMBER, _score(0.65, context(), _MYNUMBER_CTX))
            return None

        if (
            n == 13
            and sizes in ([13], [1, 4, 4, 4])
            and corporate_number_ok(digits)
            and context() != ctx.CARD
        ):
            if (
                sizes == [13]
                and (digits[0] == "1" or (digits[:3] in ("978", "979") and ean13_ok(digits)))
                and context() != ctx.CORPORATE
            ):
                # Epoch milliseconds (2001-09 to 2033-05: 1000000000000-1999999999999) and
                # ISBN-13s (978…, 979… with their own check digit), one in nine of which passes
                # the check digit: a corporate number only after its word (法人番号, 登録番号)
                # or its invoice T, never bare or after ts, createdAt, a bibliography.
                return None
            return emit(CORPORATE_NUMBER, _score(0.65, context(), _CORPORATE_CTX))

        if (
            13 <= n <= 19
            and (len(sizes) == 1 or sizes in _CARD_GROUPINGS)
            and luhn_ok(digits)
            and card_issuer(digits) is not None
        ):
            # Thirteen digits from 4 are a Visa number of the 1990s, and every Japanese JAN
            # barcode (45…, 49…): a card only where the text says card. After an order or
            # invoice number's label, an ungrouped Luhn-valid run is that number, not a card.
            # Grouped as cards are printed (4-4-4-4, 4-6-5, 4-6-4) it is a card whatever word
            # stands before it: "ご注文の決済に 4111 1111 1111 1111", "12,800円 4111-…" (no
            # order number is written so, and a leaked card costs a bank more than a masked
            # reference).
            kind = context()
            if len(sizes) > 1 and kind in (ctx.NEGATIVE, ctx.VERSION):
                kind = None
            score = _score(0.85 if n > 13 else 0.45, kind, _CARD_CTX)
            if kind == ctx.NEGATIVE:
                score = min(score, 0.45)
            return emit(CREDIT_CARD, score)
        return None

    def _with_letters(
        self,
        text: str,
        start: int,
        end: int,
        prefix: str,
        digits: str,
        sizes: list[int],
        context: Callable[[], str | None],
        emit: Callable[[str, float], Finding | None],
    ) -> Finding | None:
        letters = fold(prefix)
        after = fold(text[end : end + 3])
        if letters == "T" and sizes == [1, 4, 4, 4] and corporate_number_ok(digits):
            return emit(CORPORATE_NUMBER, 0.95)
        if len(sizes) != 1:
            return None
        if len(letters) >= 2 and letters[-2:].isupper() and len(digits) == 8:
            tail = after[:2]
            if (
                len(tail) == 2
                and tail.isascii()
                and tail.isalpha()
                and tail.isupper()
                and not (after[2:3].isascii() and after[2:3].isalnum())
            ):
                found = emit(RESIDENCE_CARD_JP, _score(0.9, context(), _RESIDENCE_CTX))
                if found is not None:
                    return Finding(found.type, start - 2, end + 2, found.score)
            return None
        if after[:1].isascii() and after[:1].isalnum():
            return None
        if len(letters) == 2 and letters.isupper() and len(digits) == 7:
            base = 0.7 if letters[0] in "TM" else 0.5
            found = emit(PASSPORT_JP, _score(base, context(), _PASSPORT_CTX))
            if found is not None:
                return Finding(found.type, start - 2, end, found.score)
            return None
        if letters == "T" and len(digits) == 13 and corporate_number_ok(digits):
            return emit(CORPORATE_NUMBER, 0.95)
        return None


_PREFECTURE_HEADS = frozenset(
    [
        "北海",
        "青森",
        "岩手",
        "宮城",
        "秋田",
        "山形",
        "福島",
        "茨城",
        "栃木",
        "群馬",
        "埼玉",
        "千葉",
        "東京",
        "神奈",
        "新潟",
        "富山",
        "石川",
        "福井",
        "山梨",
        "長野",
        "岐阜",
        "静岡",
        "愛知",
        "三重",
        "滋賀",
        "京都",
        "大阪",
        "兵庫",
        "奈良",
        "和歌",
        "鳥取",
        "島根",
        "岡山",
        "広島",
        "山口",
        "徳島",
        "香川",
        "愛媛",
        "高知",
        "福岡",
        "佐賀",
        "長崎",
        "熊本",
        "大分",
        "宮崎",
        "鹿児",
        "沖縄",
    ]
)


# The end of a romanised address right before a postal code: a prefecture or a ward.
_ROMAN_ADDRESS_BEFORE = lazy_compile(
    r"(?:\b(?:" + "|".join(PREFECTURES_ROMAN) + r")(?:-(?:to|fu|ken|do))?"
    r"|[a-z]-(?:ku|shi|cho|machi|gun|mura)|Japan|JAPAN),?[ 　]{0,2}$"
)
# A city, ward, town or village right after a postal code (the prefecture omitted).
_CITY_AFTER = lazy_compile(r"[ 　\r\n]{0,3}[一-龥々ヶ]{1,5}[市区町村郡]")


def _address_follows(text: str, end: int) -> bool:
    return _CITY_AFTER.match(text, end) is not None


def _prefecture_follows(text: str, end: int) -> bool:
    head = text[end : end + 5].lstrip(" \u3000\r\n")
    return head[:2] in _PREFECTURE_HEADS
