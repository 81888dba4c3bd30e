"""Dates of birth: a date next to a birth cue (生年月日, 誕生日, 生まれ, DOB, born ...).

Other dates (orders, deadlines, expiry, timestamps) are not personal data by themselves, so a
date is reported only with a cue. Dates are read in every form Japanese forms use: western and
era years (明治/大正/昭和/平成/令和, ``S60``, ``H1``), 元年, kanji numerals, full-width digits,
and English month names.
"""

from __future__ import annotations

import re

from sekisho.classify._lazy import lazy_compile
from sekisho.classify._text import KANJI_NUMERAL, kanji_to_int
from sekisho.classify._trie import trie_regex
from sekisho.classify.findings import DATE_OF_BIRTH, Finding

_D = "0-9０-９"
_K = KANJI_NUMERAL
_MONTHS = (
    "January|February|March|April|May|June|July|August|September|October|November|December|"
    "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
)
_ERA = "明治|大正|昭和|平成|令和|[MTSHRＭＴＳＨＲ][.．]?"
_DATE = lazy_compile(
    # 昭和60年4月12日 / 平成元年1月8日 / 昭和六十年四月十二日 / S60.4.12 / 1985年4月12日
    # (a form may put spaces around the numbers: 昭和 60 年 4 月 1 日)
    rf"(?:(?:{_ERA})[ 　]?(?:[{_D}]{{1,2}}|元|[{_K}]{{1,3}})|[{_D}]{{4}}|[{_K}]{{4}})"
    rf"(?:[ 　]?年[ 　]?(?:[{_D}]{{1,2}}|[{_K}]{{1,2}})[ 　]?月"
    rf"[ 　]?(?:[{_D}]{{1,2}}|[{_K}]{{1,3}})[ 　]?日"
    rf"|[/／.．\-－][{_D}]{{1,2}}[/／.．\-－][{_D}]{{1,2}}(?![{_D}]))"
    # 12/04/1985, 12.04.1985
    rf"|[{_D}]{{1,2}}[/／.．\-][{_D}]{{1,2}}[/／.．\-][{_D}]{{4}}(?![{_D}])"
    # April 12, 1985 / 12 April 1985
    rf"|(?:{_MONTHS})\.? [0-9]{{1,2}}(?:st|nd|rd|th)?,? [0-9]{{4}}"
    rf"|[0-9]{{1,2}}(?:st|nd|rd|th)? (?:{_MONTHS})\.?,? [0-9]{{4}}"
)
_CUES_BEFORE = (
    "生年月日", "誕生日", "Date of Birth", "Date of birth", "date of birth", "DATE OF BIRTH",
    "Birth Date", "Birth date", "birth date", "Birthdate", "birthdate", "Birthday", "birthday",
    "DOB", "D.O.B.", "D.O.B", "Born on", "born on", "Born", "born",
)  # fmt: skip
_CUES_AFTER = ("生まれ", "生", "誕生")
_CUE = trie_regex(_CUES_BEFORE + _CUES_AFTER)
_AFTER = frozenset(_CUES_AFTER)
_NOT_BIRTH_AFTER_生 = frozenset("年活産徒命涯物協成放中存鮮地")  # 生成, 生放送, 生中継 ...
# 誕生の after a date: a birth date only where a person follows ("誕生の長女"); a product or a
# service is born too ("2024年4月12日誕生の新サービス").
_PERSON_AFTER_誕生の = (
    "長男", "長女", "次男", "次女", "三男", "三女", "赤", "息子", "娘", "孫", "子", "お子",
    "第", "男", "女", "方", "人",
)  # fmt: skip
# A month and day without a year: a birth date only right after 誕生日 (誕生日は4月12日).
_MONTH_DAY = lazy_compile(
    rf"(?:[{_D}]{{1,2}}|[{_K}]{{1,2}})[ 　]?月[ 　]?(?:[{_D}]{{1,2}}|[{_K}]{{1,3}})[ 　]?日"
)
_MONTH_DAY_CUES = frozenset({"誕生日"})
_DATE_LAST = frozenset("日0123456789０１２３４５６７８９")  # every _DATE match ends in one of these
_ERA_START = {"明治": 1868, "大正": 1912, "昭和": 1926, "平成": 1989, "令和": 2019}


def _plausible(value: str) -> bool:
    """Reject what cannot be a birth date (month 13, day 32, year 2999)."""
    numbers = [kanji_to_int(n) for n in re.findall(rf"[{_D}]+|[{_K}]+|元", value)]
    if any(n is None for n in numbers):
        return False
    nums = [n for n in numbers if n is not None]
    for era, first in _ERA_START.items():
        if value.startswith(era) and nums:
            nums[0] += first - 1
    if len(nums) < 2:
        return True  # month-name forms
    if len(nums) == 3:
        year_first = nums[0] > 31 or value[:1] in "明大昭平令MTSHRＭＴＳＨＲ"
        if year_first:
            _, month, day = nums
        else:
            day, month, _ = nums if nums[1] <= 12 else (nums[1], nums[0], nums[2])
        return 1 <= month <= 12 and 1 <= day <= 31
    return True


def _near(text: str, cue_end: int, date: re.Match[str]) -> bool:
    """Whether only a label's punctuation (or a few characters) stands between cue and date."""
    return len(text[cue_end : date.start()].strip(" 　:：\t()（）は=,-")) <= 4


def _time_follows(text: str, end: int) -> bool:
    return text[end : end + 1] in ("T", "t") and text[end + 1 : end + 2].isdigit()


def _plausible_month_day(value: str) -> bool:
    numbers = [kanji_to_int(n) for n in re.findall(rf"[{_D}]+|[{_K}]+", value)]
    if len(numbers) != 2 or numbers[0] is None or numbers[1] is None:
        return False
    return 1 <= numbers[0] <= 12 and 1 <= numbers[1] <= 31


def detect_birth_dates(text: str, out: list[Finding]) -> None:
    for cue in _CUE.finditer(text):
        word = cue.group()
        if word == "生" and text[cue.end() : cue.end() + 1] in _NOT_BIRTH_AFTER_生:
            continue
        if word not in _AFTER:
            limit = min(len(text), cue.end() + 24)
            date = _DATE.search(text, cue.end(), limit)
            if date is not None and _plausible(date.group()) and _near(text, cue.end(), date):
                if not _time_follows(text, date.end()):  # born 2024-04-12T10:00:00Z: a timestamp
                    out.append(Finding(DATE_OF_BIRTH, date.start(), date.end(), 0.9))
            elif word in _MONTH_DAY_CUES:
                day = _MONTH_DAY.search(text, cue.end(), limit)
                if (
                    day is not None
                    and _plausible_month_day(day.group())
                    and _near(text, cue.end(), day)
                ):
                    out.append(Finding(DATE_OF_BIRTH, day.start(), day.end(), 0.9))
        else:
            if (
                word == "誕生"
                and text[cue.end() : cue.end() + 1] == "の"
                and not text.startswith(_PERSON_AFTER_誕生の, cue.end() + 1)
            ):
                continue
            # A date ends in 日 or a digit, right before the cue (spaces aside): most 生 in a
            # text (学生, 発生, 先生) have neither and cost no date search.
            window_start = max(0, cue.start() - 24)
            before = text[window_start : cue.start()].rstrip(" 　")
            if not before or before[-1] not in _DATE_LAST:
                continue
            last = None
            for date in _DATE.finditer(text, window_start, cue.start()):
                last = date
            if (
                last is not None
                and not text[last.end() : cue.start()].strip(" 　")
                and _plausible(last.group())
            ):
                out.append(Finding(DATE_OF_BIRTH, last.start(), last.end(), 0.9))
