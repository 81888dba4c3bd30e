"""The scanner: runs the detectors over a text and resolves their findings into one answer.

Speed comes from triggers. Two cheap regex passes (a trie of ASCII literals and one class of
Japanese cue characters) tell which detector families can match at all; only those run, each
a literal- or class-led regex plus work per candidate. Clean text therefore costs a handful of
C-speed scans and no per-character Python. Overlapping findings are resolved by score, then by
how specific the type is, then by length: the result is sorted and non-overlapping, as
docs/classification.md and shared/PII_LABELS.md describe.
"""

from __future__ import annotations

import bisect
import copy
import itertools
from collections.abc import Callable, Collection, Sequence

from sekisho.classify import _names
from sekisho.classify import findings as t
from sekisho.classify._address import ROMAN_GATE, detect_addresses
from sekisho.classify._dates import detect_birth_dates
from sekisho.classify._disguise import views
from sekisho.classify._labels import build_label_pattern, detect_labels
from sekisho.classify._numbers import NUMBER_RUN, NumberDetector
from sekisho.classify._person import CUE_WORDS as PERSON_CUES
from sekisho.classify._person import PersonDetector, romaji_surnames
from sekisho.classify._secrets import SECRET_GATES, SECRET_GATES_JP, detect_secrets
from sekisho.classify._trie import trie_regex
from sekisho.classify._web import detect_emails, detect_ipv6
from sekisho.classify.custom import CustomDetector, CustomRule
from sekisho.classify.findings import SPECIFICITY, TYPES, Finding

_NUMERIC_TYPES = frozenset(
    {
        t.MY_NUMBER, t.CORPORATE_NUMBER, t.PHONE_JP, t.PHONE_INTL, t.POSTAL_CODE_JP, t.PASSPORT_JP,
        t.DRIVER_LICENSE_JP, t.RESIDENCE_CARD_JP, t.HEALTH_INSURANCE_JP, t.BANK_ACCOUNT_JP,
        t.CREDIT_CARD, t.IP_ADDRESS,
    }
)  # fmt: skip

# Families of detectors and the words (ASCII or Japanese) of which one must occur in a text for
# the family to find anything. Each side is one trie regex: a single pass finds them all.
SECRETS, EMAIL, IPV6, LABELS, BIRTH, ADDRESS, PERSON = (
    "secrets", "email", "ipv6", "labels", "birth", "address", "person",
)  # fmt: skip
_FAMILY_WORDS: dict[str, tuple[str, ...]] = {
    SECRETS: (*SECRET_GATES, *SECRET_GATES_JP),
    LABELS: ("CONFIDENTIAL", "Confidential", "INTERNAL", "Internal", "SECRET", "Secret",
             "RESTRICTED", "PROPRIETARY", "Proprietary", "DISTRIBUTE", "Distribute", "TOP SECRET",
             "Top Secret", "秘", "機密", "取扱", "取り扱", "限り", "限定", "禁止", "要配慮"),
    BIRTH: ("Birth", "birth", "BIRTH", "DOB", "Dob", "dob", "D.O.B", "Born", "born", "生年", "生ま",
            "誕生", "日生", "Geburt", "Geb", "geb", "naissance", "né le", "née le", "Né"),
    ADDRESS: (*ROMAN_GATE, "都", "道", "府", "県", "市", "区"),
    PERSON: (*PERSON_CUES, "/"),
}  # fmt: skip
_TRIGGER_FAMILIES: dict[str, frozenset[str]] = {}
for _family, _words in _FAMILY_WORDS.items():
    for _word in _words:
        _TRIGGER_FAMILIES[_word] = _TRIGGER_FAMILIES.get(_word, frozenset()) | {_family}
_ADDRESS_CHARS = frozenset("都道府県市区")
_ROMAN = frozenset(ROMAN_GATE)
_PERSON_ONLY = frozenset({PERSON})


# ASCII words that start with a lower-case letter would stop the trigger regex at most letters
# of English prose (b, g, k, n, p, x: one in eight), and each stop costs a try of every branch.
# They are tested as substrings instead, most behind a one-character test (``in`` of a single
# character is a memchr): a GitHub token has "_", an API key "sk-" and a Slack token a "-", a
# password (or accountKey) is followed by ":", "=" or "：", a lower-case bearer token by an
# "authorization:" header; "name" is a person cue and "birth", "born", "dob", "geb" (geboren,
# geb.) and "naissance" are birth-date cues. A credential's name (client_secret, access_token,
# api_key) is followed by ":" or "=" too.
_GITHUB_WORDS = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")
_DASH_WORDS = ("k-", "xox", "xapp-", "glpat-")
_UNDERSCORE_WORDS = ("npm_", "hf_", "whsec_")  # npm, Hugging Face and Stripe webhook tokens
_PASSWORD_WORDS = ("pass", "pwd", "countKey", "secret", "token", "key", "sig=")  # : or =
_BEARER = "bearer"
_PLAIN_WORDS = ("name", "birth", "born", "dob", "geb", "naissance")
_NAME_CUE = "name"  # the one lower-case word whose places matter (a form field, "name: ...")


# Characters a digit run can start with, most common first. Over a long text a few memchr
# tests are cheaper than the number regex when none of them occurs (prose, chat turns).
_NUMBER_LEADS = "0123456789（(+０１２３４５６７８９＋"
_LEAD_TEST_FROM = 512  # characters; below this the regex itself is as cheap as the tests


def _has_number_lead(text: str) -> bool:
    return len(text) < _LEAD_TEST_FROM or any(ch in text for ch in _NUMBER_LEADS)


def _lower_words(text: str, dates: bool = True) -> list[str]:
    """The lower-case trigger words that occur in ``text``; the birth-date cues only if
    ``dates`` (a date is written with a digit or 年, so a text with neither has none)."""
    found = [w for w in _PLAIN_WORDS if (dates or w == _NAME_CUE) and w in text]
    if "-" in text:
        found += [w for w in _DASH_WORDS if w in text]
    if ":" in text or "=" in text or "：" in text:
        found += [w for w in _PASSWORD_WORDS if w in text]
        if _BEARER in text:  # "authorization: bearer …"
            found.append(_BEARER)
    if "_" in text:
        if "gh" in text or "hub_pat_" in text:  # github_pat_ holds no "gh"
            found += [w for w in _GITHUB_WORDS if w in text]
        found += [w for w in _UNDERSCORE_WORDS if w in text]
    return found


def _ascii_words() -> list[str]:
    # Given names trigger the uncued full-name check ("John Smith"), romanised Japanese
    # surnames the check of a given name beside them ("Kenta Suzuki"), so it costs no pass.
    words = (w for w in _TRIGGER_FAMILIES if w.isascii() and not w[0].islower())
    return [*words, *_names.given_en(), *romaji_surnames()]


assert {w for w in _TRIGGER_FAMILIES if w.isascii() and w[0].islower()} == {
    *_GITHUB_WORDS,
    *_DASH_WORDS,
    *_UNDERSCORE_WORDS,
    *_PASSWORD_WORDS,
    _BEARER,
    *_PLAIN_WORDS,
}, "a lower-case trigger word is missing from the substring tests"
_ASCII_TRIGGER = trie_regex(_ascii_words)
_JP_TRIGGER = trie_regex(w for w in _TRIGGER_FAMILIES if not w.isascii())

Detector = Callable[[str, list[Finding]], None]


class Scanner:
    """Finds personal data, secrets and confidentiality labels in a text.

    ``custom``: a tenant's own rules (type CUSTOM). ``min_score``: findings scoring below it
    are dropped. ``types``: report only these types (default: all). ``labels``: extra
    confidentiality markers for CONFIDENTIAL_LABEL. ``ner``: also run a Japanese NER model
    (GiNZA) when installed; raises if asked for and not installed.
    """

    def __init__(
        self,
        custom: Sequence[CustomRule] = (),
        min_score: float = 0.5,
        types: Collection[str] | None = None,
        *,
        labels: Sequence[str] = (),
        ner: bool = False,
    ) -> None:
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be between 0 and 1, got {min_score}")
        if types is not None:
            if isinstance(types, str):
                raise ValueError("types must be a collection of type names, not one string")
            unknown = sorted(set(types) - set(TYPES))
            if unknown:
                raise ValueError(
                    f"unknown finding type(s) {', '.join(unknown)}; known: {', '.join(TYPES)}"
                )
        wanted = frozenset(TYPES if types is None else types)
        self.min_score = min_score
        self.types = wanted
        self._numbers = NumberDetector(wanted) if wanted & (_NUMERIC_TYPES | {t.IBAN}) else None
        self._families: dict[str, Detector] = {}
        if t.EMAIL in wanted:
            self._families[EMAIL] = detect_emails
        if t.IP_ADDRESS in wanted:
            self._families[IPV6] = detect_ipv6
        if t.SECRET in wanted:
            self._families[SECRETS] = detect_secrets
        if t.CONFIDENTIAL_LABEL in wanted:
            if labels:
                pattern = build_label_pattern(tuple(labels))
                # A tenant's own markers need not contain any of the built-in gate words.
                self._families[LABELS] = lambda text, out: detect_labels(text, out, pattern, ())
            else:
                self._families[LABELS] = detect_labels
        if t.DATE_OF_BIRTH in wanted:
            self._families[BIRTH] = detect_birth_dates
        if t.ADDRESS_JP in wanted:
            self._families[ADDRESS] = detect_addresses
        self._person = PersonDetector() if t.PERSON in wanted else None
        self._always: list[Detector] = []
        if custom and t.CUSTOM in wanted:
            self._always.append(CustomDetector(custom).detect)
        if labels and t.CONFIDENTIAL_LABEL in wanted:
            # A tenant's own markers have no trigger characters of ours: always look.
            self._always.append(self._families.pop(LABELS))
        if ner:
            from sekisho.classify.ner import NerDetector  # imported only when asked for

            self._always.append(NerDetector(wanted).detect)

    def without_names(self) -> Scanner:
        """This scanner without its name detector: for a text too dense with names to read
        (``TooManyCues``), which must still be read for everything else."""
        clone = copy.copy(self)
        clone._person = None
        clone.types = self.types - {t.PERSON}
        return clone

    def scan(self, text: str) -> list[Finding]:
        """Findings in ``text``: sorted by start, non-overlapping, each at least min_score."""
        if not isinstance(text, str):
            raise TypeError(f"Scanner.scan needs a str, got {type(text).__name__}")
        if not text:
            return []
        candidates: list[Finding] = []
        self._detect(text, candidates)
        for view in views(text):  # identifiers written past the patterns (see _disguise)
            found: list[Finding] = []
            self._detect(view.text, found)
            for f in found:
                start, end = view.span(f.start, f.end)
                candidates.append(Finding(f.type, start, end, f.score, f.subtype))
        return resolve(candidates, self.min_score, self.types)

    def _detect(self, text: str, candidates: list[Finding]) -> None:
        """Every detector's candidates in ``text``, before overlaps are settled."""
        numbers = _has_number_lead(text)
        if self._numbers is not None and numbers:
            self._numbers.detect(text, candidates)
        cues = [(m.start(), m.end(), m.group()) for m in _ASCII_TRIGGER.finditer(text)]
        lower = _lower_words(text, dates=numbers or "年" in text)
        if _NAME_CUE in lower:
            cues += _name_cues(text, cues)
        if not text.isascii():
            cues += [(m.start(), m.end(), m.group()) for m in _JP_TRIGGER.finditer(text)]
        present = frozenset([*(word for _, _, word in cues), *lower])
        families: set[str] = set()
        for word in present:
            families |= _TRIGGER_FAMILIES.get(word, _PERSON_ONLY)
        if BIRTH not in families and not text.isascii() and ("年生" in text or "月生" in text):
            # 昭和60年生: substring tests, for 年 and 月 opening trigger words would stop the
            # trigger regex at every date of a Japanese text.
            families.add(BIRTH)
        if "@" in text or "＠" in text:
            families.add(EMAIL)
        if ":" in text:
            families.add(IPV6)
        for family, detect in self._families.items():
            if family in families:
                if family == SECRETS:
                    detect_secrets(text, candidates, present)
                elif family == LABELS:
                    detect_labels(text, candidates, gate=())  # the trigger words were the gate
                elif family == ADDRESS:
                    starts = [s for s, _, w in cues if w in _ADDRESS_CHARS]
                    detect_addresses(text, candidates, roman=bool(present & _ROMAN), starts=starts)
                else:
                    detect(text, candidates)
        if self._person is not None:
            self._person.detect(text, candidates, cues if PERSON in families else ())
        for detect in self._always:
            detect(text, candidates)


def _name_cues(text: str, cues: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Places of "name" that no other trigger word covers ("Full name" is one cue)."""
    found = []
    starts = [start for start, _, _ in cues]
    at = text.find(_NAME_CUE)
    while at >= 0:
        i = bisect.bisect_right(starts, at)
        if i == 0 or cues[i - 1][1] <= at:
            found.append((at, at + len(_NAME_CUE), _NAME_CUE))
        at = text.find(_NAME_CUE, at + len(_NAME_CUE))
    return found


def resolve(
    candidates: list[Finding], min_score: float, types: Collection[str] | None = None
) -> list[Finding]:
    """Keep the best of overlapping findings: higher score, then more specific, then longer;
    in text order.

    Findings are taken best first, each kept unless it overlaps one kept before. Two findings
    in different runs of overlapping findings never meet, so each run is settled on its own,
    and most runs are a single finding: linear time after one sort. (Settling all at once,
    inserting into sorted lists, took 3.4 s for the 150,000 addresses of a 4 MB prompt and
    held the event loop that long.)
    """
    kept = [f for f in candidates if f.score >= min_score and (types is None or f.type in types)]
    if len(kept) <= 1:
        return kept
    kept.sort(key=_position)
    chosen: list[Finding] = []
    run = [kept[0]]
    end = kept[0].end
    for finding in itertools.islice(kept, 1, None):
        if finding.start < end:
            run.append(finding)
            if finding.end > end:
                end = finding.end
            continue
        if len(run) == 1:
            chosen.append(run[0])
        else:
            chosen.extend(_best_of(run))
        run = [finding]
        end = finding.end
    if len(run) == 1:
        chosen.append(run[0])
    else:
        chosen.extend(_best_of(run))
    return chosen


def _position(f: Finding) -> tuple[int, int]:
    return f.start, f.end


def _priority(f: Finding) -> tuple[float, int, int, int]:
    return -f.score, -SPECIFICITY.get(f.type, 0), f.start - f.end, f.start


def _best_of(run: list[Finding]) -> list[Finding]:
    """The findings of one run of overlapping ones that are kept, in text order: each is
    checked against the characters already taken, a byte per character of the run."""
    base = run[0].start
    taken = bytearray(max(f.end for f in run) - base)
    chosen = []
    for f in sorted(run, key=_priority):
        start, end = f.start - base, f.end - base
        if taken.find(1, start, end) != -1:
            continue
        taken[start:end] = b"\x01" * (end - start)
        chosen.append(f)
    chosen.sort(key=_position)
    return chosen


_default: Scanner | None = None


def default_scanner() -> Scanner:
    """The shared scanner with default settings, built on first use."""
    global _default
    if _default is None:
        _default = Scanner()
    return _default


def scan(text: str) -> list[Finding]:
    """Scan with the default scanner (every type, min_score 0.5, no custom rules)."""
    return default_scanner().scan(text)


__all__ = ["NUMBER_RUN", "Scanner", "default_scanner", "resolve", "scan"]
