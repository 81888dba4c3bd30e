"""Email addresses, IPv6 addresses and IBANs.

Emails are found from their ``@`` (half or full width) outwards, so text without ``@`` costs
one ``str.find``. IPv6 candidates start from a ``:`` with hex digits on both sides and are
validated by :mod:`ipaddress`. IBANs are validated by country length and mod-97.
"""

from __future__ import annotations

import ipaddress

from sekisho.classify._lazy import lazy_compile
from sekisho.classify._text import fold
from sekisho.classify._validate import IBAN_LENGTHS, iban_ok
from sekisho.classify.findings import EMAIL, IBAN, IP_ADDRESS, Finding

_LOCAL_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-'"
    "ａｂｃｄｅｆｇｈｉｊｋｌｍｎｏｐｑｒｓｔｕｖｗｘｙｚＡＢＣＤＥＦＧＨＩＪＫＬＭＮＯＰＱＲＳＴＵＶＷＸＹＺ"
    "０１２３４５６７８９．＿－＋"
)
# Internationalised addresses (RFC 6531) have kanji and kana in the local part (山田@例え.jp);
# the particles that glue an address to Japanese prose (担当者は山田@…) end it. The local part
# is in one script: "連絡先taro@…" is the address taro@….
_HIRAGANA_IN_NAMES = "".join(
    chr(c) for c in range(0x3041, 0x3097) if chr(c) not in "はがをにでへとのもや"
)
_IDN_LOCAL = f"{_HIRAGANA_IN_NAMES}ァ-ヺー一-龥々"
_LOCAL_CLASS = "".join(sorted(_LOCAL_CHARS - {"-"})) + "\\-"
_LOCAL_RUN = lazy_compile(f"[{_LOCAL_CLASS}]*")
_IDN_LOCAL_RUN = lazy_compile(f"[{_IDN_LOCAL}]*")


def _at_signs(text: str) -> list[int]:
    """Positions of "@" and "＠" in order (str.find: far cheaper than a regex scan)."""
    found = []
    for sign in "@＠":
        at = text.find(sign)
        while at >= 0:
            found.append(at)
            at = text.find(sign, at + 1)
    return sorted(found)


# Labels may be internationalised (日本語ドメイン.jp) or their ACE form (xn--eckwd4c7c.xn--zckzah);
# the top-level domain is ASCII or ACE, so Japanese prose after an address stays outside.
_LABEL = "A-Za-z0-9Ａ-Ｚａ-ｚ０-９ぁ-ゖァ-ヺー一-龥々"
_DOMAIN = lazy_compile(
    rf"(?:[{_LABEL}](?:[{_LABEL}\-－]{{0,61}}[{_LABEL}])?[.．])+"
    r"(?:[A-Za-zＡ-Ｚａ-ｚ]{2,24}|xn--[a-z0-9]{2,59})(?![A-Za-z0-9Ａ-Ｚａ-ｚ０-９\-])"
)
_PLACEHOLDER_DOMAINS = ("example.com", "example.org", "example.net", "xxx.com", "domain.com")


def detect_emails(text: str, out: list[Finding]) -> None:
    if "@" not in text and "＠" not in text:
        return
    for i in _at_signs(text):
        if i == 0 or (text[i - 1] not in _LOCAL_CHARS and text[i - 1].isascii()):
            continue
        # The run of local-part characters that ends at the "@", read backwards (at most 64).
        run = _LOCAL_RUN if text[i - 1] in _LOCAL_CHARS else _IDN_LOCAL_RUN
        local = run.match(text[max(0, i - 64) : i][::-1])
        left = i - (local.end() if local is not None else 0)
        while left < i and fold(text[left]) in ".-+'":  # 'taro@corp.jp': a quote, not atext
            left += 1
        if left == i:
            continue
        domain = _DOMAIN.match(text, i + 1)
        if domain is None:
            continue
        end = domain.end()
        if text[end - 1 : end] in ".．":
            end -= 1
        value = fold(text[left:end]).lower()
        if ".." in value:
            continue
        score = 0.95
        if value.endswith(_PLACEHOLDER_DOMAINS) or value.startswith(("user@", "name@", "foo@")):
            score = 0.45  # documentation addresses (RFC 2606) and template users
        if _in_url_authority(text, left):
            continue  # userinfo of a URL, handled as a connection-string secret
        out.append(Finding(EMAIL, left, end, score))


_NOT_AUTHORITY = frozenset(" \t\r\n/?#")


def _in_url_authority(text: str, left: int) -> bool:
    """Whether ``left`` is inside the authority of a URL (``https://user@host``,
    ``postgres://app:pw@db``): "://" before it in the same token, no path, query or fragment
    between. An address after a URL (``https://x.jp 担当 hanako@…``) or in its query
    (``?to=hanako@…``) is an address."""
    scheme_end = text.rfind("://", max(0, left - 80), left)
    if scheme_end < 0:
        return False
    between = text[scheme_end + 3 : left]
    return between.isascii() and _NOT_AUTHORITY.isdisjoint(between)


_HEX = frozenset("0123456789abcdefABCDEF")
_V6_CHARS = _HEX | frozenset(":.")


# Every IPv6 address has two colons at most four hex digits apart; prose with times ("14:00")
# and labels ("Note:") has none, and costs one literal-led search.
_TWO_COLONS = lazy_compile(r":[0-9A-Fa-f]{0,4}:")


def detect_ipv6(text: str, out: list[Finding]) -> None:
    if ":" not in text or _TWO_COLONS.search(text) is None:
        return
    pos = text.find(":")
    covered = -1
    while pos >= 0:
        if (
            pos > covered
            and pos > 0
            and (text[pos + 1 : pos + 2] in _HEX or text[pos - 1] in _HEX)
            and text[pos + 1 : pos + 2] in _V6_CHARS
            and text[pos - 1] in _V6_CHARS
        ):
            left = pos
            while left > 0 and pos - left < 40 and text[left - 1] in _V6_CHARS:
                left -= 1
            right = pos
            while right < len(text) and right - left < 45 and text[right] in _V6_CHARS:
                right += 1
            candidate = text[left:right].strip(".")
            covered = right
            if candidate.count(":") >= 2 and not (left > 0 and text[left - 1].isalnum()):
                start = left + text[left:right].find(candidate)
                try:
                    address = ipaddress.IPv6Address(candidate)
                except ValueError:
                    address = None
                groups = candidate.split(":")
                fingerprint = "::" not in candidate and all(len(g) <= 2 for g in groups)
                if (
                    address is not None
                    and not fingerprint  # 3a:9f:12:c4:... is a key fingerprint or a MAC
                    and candidate not in ("::", "::1")
                    and (candidate.count(":") >= 3 or "::" in candidate)
                ):
                    out.append(Finding(IP_ADDRESS, start, start + len(candidate), 0.85))
        pos = text.find(":", pos + 1)


_IBAN = lazy_compile(r"([A-Z]{2})([0-9]{2})((?:[ ]?[A-Z0-9]){11,30})")


def iban_at(text: str, start: int) -> Finding | None:
    """An IBAN starting at ``start`` (its country code), or None.

    Called by the number detector for digit runs right after two capitals, so IBANs cost no
    pass of their own.
    """
    if start > 0 and text[start - 1].isascii() and text[start - 1].isalnum():
        return None
    match = _IBAN.match(text, start)
    if match is None:
        return None
    length = IBAN_LENGTHS.get(match.group(1))
    if length is None:
        return None
    # Take exactly the country's length of characters, spaces not counted.
    taken = 0
    end = start
    for ch in match.group():
        if taken == length:
            break
        end += 1
        if ch != " ":
            taken += 1
    if taken != length:
        return None
    if end < len(text) and text[end].isascii() and text[end].isalnum() and text[end - 1] != " ":
        return None
    if iban_ok(text[start:end].replace(" ", "")):
        return Finding(IBAN, start, end, 0.95)
    return None
