"""Dates of birth: a date next to a birth cue (生年月日, 誕生日, 生まれ, DOB, born ...).

Other dates (orders, deadlines, expiry, timestamps) are not personal data by themselves, so a
date is reported only with a cue. Dates are read in every form Japanese forms use: western and
era years (明治/大正/昭和/平成/令和, ``S60``, ``H1``), 元年, kanji numerals, full-width digits,
and English month names.
"""

from __future__ import annotations

import re

from sekisho.classify._lazy import lazy_compile
from sekisho.classify._table import column_under
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
    # (the other calendar's year may follow in brackets: 1985年（昭和60年）4月1日)
    rf"(?:[ 　]?年(?:[（(][^（()）\n]{{1,8}}[）)])?[ 　]?(?:[{_D}]{{1,2}}|[{_K}]{{1,2}})[ 　]?月"
    rf"[ 　]?(?:[{_D}]{{1,2}}|[{_K}]{{1,3}})[ 　]?日"
    rf"|[/／.．\-－][{_D}]{{1,2}}[/／.．\-－][{_D}]{{1,2}}(?![{_D}]))"
    # 12/04/1985, 12.04.1985
    rf"|[{_D}]{{1,2}}[/／.．\-][{_D}]{{1,2}}[/／.．\-][{_D}]{{4}}(?![{_D}])"
    # April 12, 1985 / 12 April 1985
    rf"|(?:{_MONTHS})\.? [0-9]{{1,2}}(?:st|nd|rd|th)?,? [0-9]{{4}}"
    rf"|[0-9]{{1,2}}(?:st|nd|rd|th)? (?:{_MONTHS})\.?,? [0-9]{{4}}"
)
_BRACKETED = re.compile(r"[（(][^（()）]*[）)]")
_CUES_BEFORE = (
    "生年月日", "誕生日", "Date of Birth", "Date of birth", "date of birth", "DATE OF BIRTH",
    "Birth Date", "Birth date", "birth date", "Birthdate", "birthdate", "Birthday", "birthday",
    "DOB", "D.O.B.", "D.O.B", "Born on", "born on", "Born", "born",
    # as an EU office writes them: German and French
    "Geburtsdatum", "Geb.-Datum", "geboren am", "geboren", "Geboren", "geb.",
    "Date de naissance", "date de naissance", "né le", "née le", "Né le", "Née le",
    # the keys of JSON, YAML, XML and code
    "dateOfBirth", "DateOfBirth", "date_of_birth", "DATE_OF_BIRTH", "birthDate", "BirthDate",
    "birth_date", "BIRTH_DATE", "dob", "Dob",
)  # fmt: skip
_WORD_CUES = frozenset({"dob", "Dob"})  # whole words only: not the dob of Adobe
# A year of birth in English, as 1985年生まれ in Japanese: born in 1985, Born: 1985. Not a
# cohort: born in the 1980s, in 1990s, in 1990 or later, in 1990-1995.
_BORN_YEAR = lazy_compile(r"(?:[ \t]+in|:)[ \t]+((?:19|20)[0-9]{2})(?![0-9])")
# What is born besides people: the idea was born in 2015 (as 2024年に誕生した新サービス).
_THING_BORN = lazy_compile(
    r"(?i)\b(?:idea|company|project|product|service|brand|startup|business|app|team|"
    r"initiative|concept|firm|platform|event|festival|movement|tradition)s?\b[^.\n]{0,24}$"
)
_COHORT_AFTER_EN = ("s", "'s", "’s", " or ", " and ", "-", "–", " to ", " through", " onward")
_CUES_AFTER = ("生まれ", "生", "誕生")
_CUE = trie_regex(_CUES_BEFORE + _CUES_AFTER)
_AFTER = frozenset(_CUES_AFTER)
_NOT_BIRTH_AFTER_生 = frozenset("年活産徒命涯物協成放中存鮮地育計態殖保")  # 生成, 生放送, 生育 ...
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
_MONTH_DAY_CUES = frozenset({"誕生日", "Birthday", "birthday"})
# The same in English: April 3, Apr. 3rd, 3 April.
_MONTH_DAY_EN = lazy_compile(
    rf"(?:{_MONTHS})\.? [0-9]{{1,2}}(?:st|nd|rd|th)?(?![0-9A-Za-z])"
    rf"|[0-9]{{1,2}}(?:st|nd|rd|th)? (?:{_MONTHS})\b"
)
_THINGS_AFTER_生まれの = tuple(
    "の" + thing
    for thing in (
        "新", "製品", "商品", "サービス", "ブランド", "モデル", "会社", "企業", "アプリ", "技術",
        "システム", "プロジェクト", "店", "お店", "品種", "ワイン", "車",
    )
)  # fmt: skip
_NOT_BIRTH_AFTER_誕生日 = (
    "会",
    "祝",
    "休",
    "パーティ",
    "プレゼント",
    "ケーキ",
    "特典",
    "クーポン",
    "セール",
)
# A year (or a year and month) of birth before 生まれ/生: only with its era or four digits, for
# "3年生" is a pupil in the third year (平成2年生まれ, 1990年生まれ, 昭和60年4月生).
_YEAR_MONTH = lazy_compile(
    rf"(?:(?:{_ERA})[ 　]?(?:[{_D}]{{1,2}}|元|[{_K}]{{1,3}})|[{_D}]{{4}}|[{_K}]{{4}})"
    rf"[ 　]?年(?:[ 　]?(?:[{_D}]{{1,2}}|[{_K}]{{1,2}})[ 　]?月)?"
)
_DATE_LAST = frozenset("日0123456789０１２３４５６７８９")  # every _DATE match ends in one of these
# What follows a year of birth that names a cohort rather than a person's birth.
_COHORT_AFTER = (
    "対象", "以降", "以前", "以上", "以下", "世代", "層", "まで", "から", "限定", "の世代",
    "の皆",
)  # fmt: skip
_PARTIAL_LAST = frozenset("年月日")  # a year, a year and month, a month and day
# A date and its birth word may stand apart by に (1985年4月3日に生まれた, …に誕生した); not
# 生 alone (2020年に生きる).
_CLAUSE_ENDS = ("", "。", "、", "．", "，", " ", "　", "\n", "！", ")", "）", "」")
_NI_CUES = frozenset({"生まれ", "誕生"})
_ERA_START = {"明治": 1868, "大正": 1912, "昭和": 1926, "平成": 1989, "令和": 2019}


def _plausible(value: str) -> bool:
    """Reject what cannot be a birth date (month 13, day 32, year 2999)."""
    value = _BRACKETED.sub("", value)  # 1985年（昭和60年）4月1日: the year is read once
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


def _plausible_year_month(value: str) -> bool:
    numbers = [kanji_to_int(n) for n in re.findall(rf"[{_D}]+|[{_K}]+|元", value)]
    if any(n is None for n in numbers):
        return False
    nums = [n for n in numbers if n is not None]
    era = next((first for name, first in _ERA_START.items() if value.startswith(name)), None)
    if era is not None or value[:1] in "MTSHRＭＴＳＨＲ":
        year_ok = 1 <= nums[0] <= 64
    else:
        year_ok = 1868 <= nums[0] <= 2100
    return year_ok and (len(nums) == 1 or 1 <= nums[1] <= 12)


def _date_before(text: str, word: str, cue_start: int, cue_end: int) -> tuple[int, int] | None:
    """The birth date that ends right before a birth word (spaces, or に, between)."""
    window_start = max(0, cue_start - 24)
    before = text[window_start:cue_start].rstrip(" 　")
    if word in _NI_CUES and before.endswith("に"):
        before = before[:-1].rstrip(" 　")
    if not before:
        return None
    stop = window_start + len(before)
    # A date ends in 日 or a digit, a year or month of birth in 年 or 月, right before the cue:
    # most 生 in a text (学生, 発生, 先生) have neither and cost no date search.
    if before[-1] in _DATE_LAST:
        last = None
        for date in _DATE.finditer(text, window_start, stop):
            last = date
        if last is not None and last.end() == stop and _plausible(last.group()):
            return last.start(), last.end()
    if before[-1] not in _PARTIAL_LAST or word == "誕生":  # a product is born in a month too
        return None
    if before[-1] == "日":
        if word != "生まれ":
            return None
        day = None
        for match in _MONTH_DAY.finditer(text, max(window_start, stop - 9), stop):
            day = match
        if day is not None and day.end() == stop and _plausible_month_day(day.group()):
            return day.start(), day.end()
        return None
    if text.startswith(_COHORT_AFTER, cue_end):
        return None  # 1990年生まれの社員は30名, …生まれ以降: a cohort, no one's birth date
    year = None
    for match in _YEAR_MONTH.finditer(text, window_start, stop):
        year = match
    if year is not None and year.end() == stop and _plausible_year_month(year.group()):
        return year.start(), year.end()
    return None


def _product_is_born(text: str, end: int) -> bool:
    """Whether 誕生 at ``end`` is said of a thing: 誕生の or 誕生した before a word that is not
    a person (2024年4月12日誕生の新サービス, …に誕生した新ブランド)."""
    if text[end : end + 1] == "の":
        return not text.startswith(_PERSON_AFTER_誕生の, end + 1)
    if text.startswith("した", end):
        after = text[end + 2 : end + 3]
        return after not in _CLAUSE_ENDS and not text.startswith(_PERSON_AFTER_誕生の, end + 2)
    return False


def _latin_letter(ch: str) -> bool:
    return ch.isalpha() and ch < "\u0250"


def detect_birth_dates(text: str, out: list[Finding]) -> None:
    rows = range(0)  # the rows of the last table read
    for cue in _CUE.finditer(text):
        word = cue.group()
        if word[0].isascii() and cue.start() and _latin_letter(text[cue.start() - 1]):
            continue  # angeboren, stubborn: the cue is inside another word
        if word not in _AFTER and cue.start() not in rows and ("," in text or "\t" in text):
            # 社員番号,氏名,生年月日 / 1001,田中 太郎,1988/05/14: the column under the heading
            rows, cells = column_under(text, cue.start(), cue.end())
            for first, last in cells:
                value = text[first:last]
                if _DATE.fullmatch(text, first, last) is not None and _plausible(value):
                    out.append(Finding(DATE_OF_BIRTH, first, last, 0.9))
        if word == "生" and text[cue.end() : cue.end() + 1] in _NOT_BIRTH_AFTER_生:
            continue
        if word in _WORD_CUES and (
            text[cue.start() - 1 : cue.start()].isalpha()
            or text[cue.end() : cue.end() + 1].isalpha()
        ):
            continue
        if word not in _AFTER:
            if word == "誕生日" and text.startswith(_NOT_BIRTH_AFTER_誕生日, cue.end()):
                continue  # 誕生日会 2026年12月5日: the day of a party, not of a birth
            limit = min(len(text), cue.end() + 24)
            date = _DATE.search(text, cue.end(), limit)
            if date is not None and _plausible(date.group()) and _near(text, cue.end(), date):
                if not _time_follows(text, date.end()):  # born 2024-04-12T10:00:00Z: a timestamp
                    out.append(Finding(DATE_OF_BIRTH, date.start(), date.end(), 0.9))
            elif word in ("born", "Born"):
                year = _BORN_YEAR.match(text, cue.end())
                if (
                    year is not None
                    and not text.startswith(_COHORT_AFTER_EN, year.end())
                    and _THING_BORN.search(text, max(0, cue.start() - 40), cue.start()) is None
                ):
                    out.append(Finding(DATE_OF_BIRTH, year.start(1), year.end(1), 0.9))
            elif word in _MONTH_DAY_CUES:
                if word == "誕生日":
                    day = _MONTH_DAY.search(text, cue.end(), limit)
                    plausible = day is not None and _plausible_month_day(day.group())
                else:
                    day = _MONTH_DAY_EN.search(text, cue.end(), limit)
                    number = re.search(r"[0-9]+", day.group()) if day is not None else None
                    plausible = number is not None and 1 <= int(number.group()) <= 31
                if day is not None and plausible and _near(text, cue.end(), day):
                    out.append(Finding(DATE_OF_BIRTH, day.start(), day.end(), 0.9))
        else:
            if word == "誕生" and _product_is_born(text, cue.end()):
                continue
            if word == "生まれ" and text.startswith(_THINGS_AFTER_生まれの, cue.end()):
                continue  # 2024年生まれの新製品: a product is born too
            span = _date_before(text, word, cue.start(), cue.end())
            if span is not None:
                out.append(Finding(DATE_OF_BIRTH, span[0], span[1], 0.9))
