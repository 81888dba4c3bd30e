"""Japanese addresses: prefecture → city/ward/town/village → block (丁目/番地/号) → building.

Two starts: a prefecture name, or (prefecture omitted) a city/ward followed soon by a block
number. From a start, one anchored regex built from atomic and possessive pieces reads the
rest, so each candidate costs a bounded number of steps. Romanised addresses
(``1-2-3 Marunouchi, Chiyoda-ku, Tokyo``) have their own pattern.
"""

from __future__ import annotations

from collections.abc import Iterable

from sekisho.classify._lazy import lazy_compile
from sekisho.classify._text import DASH
from sekisho.classify.findings import ADDRESS_JP, Finding

PREFECTURES: tuple[str, ...] = tuple(
    [
        "北海道",
        "青森県",
        "岩手県",
        "宮城県",
        "秋田県",
        "山形県",
        "福島県",
        "茨城県",
        "栃木県",
        "群馬県",
        "埼玉県",
        "千葉県",
        "東京都",
        "神奈川県",
        "新潟県",
        "富山県",
        "石川県",
        "福井県",
        "山梨県",
        "長野県",
        "岐阜県",
        "静岡県",
        "愛知県",
        "三重県",
        "滋賀県",
        "京都府",
        "大阪府",
        "兵庫県",
        "奈良県",
        "和歌山県",
        "鳥取県",
        "島根県",
        "岡山県",
        "広島県",
        "山口県",
        "徳島県",
        "香川県",
        "愛媛県",
        "高知県",
        "福岡県",
        "佐賀県",
        "長崎県",
        "熊本県",
        "大分県",
        "宮崎県",
        "鹿児島県",
        "沖縄県",
    ]
)
PREFECTURES_ROMAN: tuple[str, ...] = tuple(
    [
        "Hokkaido",
        "Aomori",
        "Iwate",
        "Miyagi",
        "Akita",
        "Yamagata",
        "Fukushima",
        "Ibaraki",
        "Tochigi",
        "Gunma",
        "Saitama",
        "Chiba",
        "Tokyo",
        "Kanagawa",
        "Niigata",
        "Toyama",
        "Ishikawa",
        "Fukui",
        "Yamanashi",
        "Nagano",
        "Gifu",
        "Shizuoka",
        "Aichi",
        "Mie",
        "Shiga",
        "Kyoto",
        "Osaka",
        "Hyogo",
        "Nara",
        "Wakayama",
        "Tottori",
        "Shimane",
        "Okayama",
        "Hiroshima",
        "Yamaguchi",
        "Tokushima",
        "Kagawa",
        "Ehime",
        "Kochi",
        "Fukuoka",
        "Saga",
        "Nagasaki",
        "Kumamoto",
        "Oita",
        "Miyazaki",
        "Kagoshima",
        "Okinawa",
    ]
)

# が is a particle, except inside place names: 霞が関, 自由が丘, 光が丘, 茅ヶ崎's spelling 茅が崎.
_GA_NAME = "が(?=[関丘崎谷浜原森岡台島坂沢瀬淵])"
_NAMECH = rf"(?:[^\s\d０-９、。,，;；()（）「」『』【】:：/／・はがをでにへ〒]|{_GA_NAME})"
# 都 ends only one prefecture, 東京都; elsewhere it is part of a city's name (京都市, 都留市,
# 宇都宮市, 都城市). No city has 通 in its name: 烏丸通丸太町 is a Kyoto street and its crossing.
_CITYCH = (
    r"(?:[^\s\d０-９、。,，;；()（）「」『』【】:：/／・はがをでにもとやへ〒都県通]"
    rf"|{_GA_NAME}|(?<!東京)都)"
)
_CITY = rf"(?>{_CITYCH}{{0,7}}?[市区町村郡])"
_NUM = r"(?:[0-9０-９]{1,5}+|[一二三四五六七八九十]{1,3}+)"
# 条 blocks (Sapporo, Asahikawa: 北1条西2丁目, 6条通9丁目) join the numbered parts too.
_JO = "条(?:[東西南北]|通)?"
# In kanji numerals a block needs 丁目, 番 or 号: 二条, 四条 alone are Kyoto's streets and the
# start of town names (二条殿町, 京都市立二条中学校), not blocks.
_BLOCK = (
    rf"(?:{_NUM}(?:丁目|番地|番|号|の|{_JO}|[{DASH}]))*+[0-9０-９]{{1,5}}+(?:番地|番|号)?"
    rf"|(?:{_NUM}{_JO})*+{_NUM}(?:丁目|番地|番|号)(?:{_NUM}(?:丁目|番地|番|号|{_JO}))*+"
)
_BUILDING_CH = r"[^\s、。,，;；()（）「」『』【】:：〒]"
_BUILDING_WORD = (
    "(?:ビルディング|ビル|マンション|ハイツ|タワー|コーポ|荘|レジデンス|ハウス|プラザ|センター"
    "|スクエア|館|棟|ヒルズ|庁舎)"
)
# A second building word in the same name (六本木ヒルズ森タワー, 本町ビル別館), but not across a
# particle or a digit (山田ビル内の受付センター is a building and then the sentence).
_BUILDING_MORE = (
    rf"(?:[^\s\d０-９、。,，;；()（）「」『』【】:：〒のにでをはがへと内]{{0,8}}?{_BUILDING_WORD})?"
)
# A floor may have its room after it (5階501号室).
_FLOOR = r"[0-9０-９]{1,4}+(?:(?:階|F|Ｆ)(?:[ 　]?[0-9０-９]{1,4}+号室)?|号室)"
_BUILDING = (
    rf"(?:[ 　]?{_BUILDING_CH}{{0,24}}?[ 　]?{_FLOOR}"  # 銀座三越 7F: a space may stand before it
    rf"|[ 　]?{_BUILDING_CH}{{1,20}}?{_BUILDING_WORD}{_BUILDING_MORE}"
    # a number after the building word: its floor or room, or building-room (マンション3-301);
    # not the start of what follows it (山田ビル 03-1234-5678, 山田ビル 2026年4月1日)
    rf"[A-ZＡ-Ｚ]?(?:[ 　]?(?:{_FLOOR}|[0-9０-９]{{1,4}}+(?:[{DASH}][0-9０-９]{{1,4}}+)?号?"
    rf"(?![0-9０-９{DASH}年月日時:：/／.．]))"
    r")?"
    rf"|[ 　]?{_FLOOR})?"
)
# Kyoto writes the way there: a street, the crossing, then up (north, 上る), down (下る), west
# or east (西入る, 東入る), or both (上る西入ル), to the town: 寺町通御池上る上本能寺前町488番地.
# The street may end in 町 (河原町通, 室町通) and then has been read as a town: 通 may open the way.
_UP_DOWN = "(?:上が?[るル]|下が?[るル]|[東西]入[るル]?)"
# Atomic: once read, the way is not read again another way when what follows fails.
_KYOTO_WAY = rf"(?>{_NAMECH}{{0,8}}?通り?{_NAMECH}{{0,8}}?{_UP_DOWN}{{1,2}})"
_TAIL = lazy_compile(
    rf"(?P<city>{_CITY}{{0,4}})(?:{_NAMECH}{{0,12}}?(?P<block>{_BLOCK}){_BUILDING})?"
)
# Where the text has a 通 (a street): after the way, the town (which may hold 二条 or 四丁目 of
# the street) and its number. Texts without one do not pay for the way.
_TAIL_STREET = lazy_compile(
    rf"(?P<city>{_CITY}{{0,4}})"
    rf"(?:{_KYOTO_WAY}(?:{_NAMECH}{{0,16}}?(?P<way_block>(?=[0-9０-９])(?:{_BLOCK})){_BUILDING}"
    # …上る上本能寺前町 with no number: the way says it is an address; it ends with the town.
    rf"|(?P<way_town>{_NAMECH}{{0,12}}町))"
    rf"|{_NAMECH}{{0,12}}?(?P<block>{_BLOCK}){_BUILDING})?"
)
_PREFECTURE_SET = frozenset(PREFECTURES)
_CITY_KANA = frozenset("さいたまつくばいわきひたちなかうるまみよしあわらかすみがうら")
# Every prefecture name ends in 都, 道, 府 or 県, and a city-first address has 市 or 区: one
# character class finds all starts, and the prefecture is confirmed by a set lookup.
_START = lazy_compile("[都道府県市区]")
_CITY_AHEAD = lazy_compile(
    rf"{_NAMECH}{{0,24}}?[0-9０-９一二三四五六七八九十]{{1,5}}(?:丁目|番|条|[{DASH}])"
)
# Or, where the text has a 通 (a street): a way (上ル, 西入) close ahead, then a town or a
# number. A search for the way's first character, then one match: a lazy walk trying the way
# at each character cost twice the gate's time on text of ways alone. (The tail reads the
# address itself; this only spares it the texts that cannot hold one.)
_WAY = lazy_compile(_UP_DOWN)
_WAY_AHEAD = lazy_compile(rf"{_UP_DOWN}{{1,2}}{_NAMECH}{{0,16}}?[町0-9０-９]")
_ROMAN_CUE = lazy_compile(r"-(?:ku|shi|cho|machi|gun|mura)\b")
ROMAN_GATE = ("-ku", "-shi", "-cho", "-machi", "-gun", "-mura")
_KANJI = lazy_compile(r"[一-龥々ヶ]")
_ROMAN_PREFECTURE = "(?:" + "|".join(PREFECTURES_ROMAN) + r")(?:-(?:to|fu|ken|do))?\b"
_ROMAN_WARD = r"[A-Z][a-z]+-(?:ku|shi|cho|machi|gun|mura)\b"
# A district, with its direction when it has one: Shiba, Kita-Shinjuku, Ebisu-minami.
_ROMAN_AREA = r"[A-Z][a-z]+(?:-[A-Za-z][a-z]+)?"
# A postal code (NNN-NNNN) is no block: "Minato-ku, Tokyo 105-0014" ends at Tokyo.
_ROMAN_BLOCK = r"(?!\d{3}-\d{4}(?![\d-]))\d{1,4}(?:-\d{1,4}){1,3}(?![\d-])"
# After the ward: the prefecture, or a designated city and its prefecture (Nishi-ku, Yokohama,
# Kanagawa).
_ROMAN_AFTER_WARD = (
    rf"(?:,?\s{_ROMAN_WARD})+(?:,?\s[A-Z][a-z]+,?\s{_ROMAN_PREFECTURE}|,?\s{_ROMAN_PREFECTURE})?"
)
_ROMAN = lazy_compile(
    # 1-2-3 Marunouchi, Chiyoda-ku, Tokyo (the English order, a floor, a building of up to
    # four words or a room before it: 5F Shinjuku Front Tower, 2-21-1 …)
    r"(?:(?:(?:Room|Apt\.?|Suite|Unit|#)\s?\d{1,4},?\s)?"
    r"(?:\d{1,3}F,?\s)?"
    r"(?:(?:[A-Z][A-Za-z]+ ){1,3}(?:Bldg\.?|Building|Tower|Heights|Mansion|Hills)"
    r"(?:\s?\d{1,3}F)?,?\s)?"
    rf"{_ROMAN_BLOCK},?\s{_ROMAN_AREA}{_ROMAN_AFTER_WARD}"
    # Marunouchi 1-2-3, Chiyoda-ku, Tokyo
    rf"|{_ROMAN_AREA}\s{_ROMAN_BLOCK}{_ROMAN_AFTER_WARD}"
    # Tokyo-to Chiyoda-ku Marunouchi 1-2-3 (the Japanese order)
    rf"|(?:{_ROMAN_PREFECTURE},?\s)?(?:{_ROMAN_WARD},?\s)+{_ROMAN_AREA},?\s{_ROMAN_BLOCK})"
)


def _way_ahead(text: str, at: int) -> bool:
    """Whether a Kyoto way (then a town or a number) starts within 24 name characters of ``at``."""
    way = _WAY.search(text, at, at + 26)
    return way is not None and _WAY_AHEAD.match(text, way.start()) is not None


def _trim(text: str, start: int, end: int) -> int:
    # A block regex may stop on a separator ("1-2-"); the value ends at the last digit.
    while end > start + 1 and text[end - 1] in "-‐‑−－ー―の 　" and text[end - 2].isdigit():
        end -= 1
    return end


def detect_addresses(
    text: str, out: list[Finding], roman: bool = True, starts: Iterable[int] | None = None
) -> None:
    """Add ADDRESS_JP findings; ``starts`` are the positions of 都道府県市区 when known."""
    covered = -1
    street = "通" in text
    tail_pattern = _TAIL_STREET if street else _TAIL
    if starts is None:
        starts = [m.start() for m in _START.finditer(text)]
    for cue in starts:
        if cue < covered:
            continue
        ch = text[cue]
        if ch in "市区":
            if cue == 0 or text[cue - 1] in "-‐−－ー―0123456789 \n":
                continue
            # Walk back over the kanji of the city name (at most 4 of them).
            begin = cue
            while (
                begin > 0
                and cue - begin < 4
                and (
                    text[begin - 1] not in "市区町村都道府県"
                    or (text[begin - 1] == "都" and text[begin - 3 : begin - 1] != "東京")
                )
                and _KANJI.match(text, begin - 1)
            ):
                begin -= 1
            if begin == cue:  # さいたま市, つくば市: city names written in hiragana
                while begin > 0 and cue - begin < 5 and text[begin - 1] in _CITY_KANA:
                    begin -= 1
            if begin == cue or begin < covered:
                continue
            if not _CITY_AHEAD.match(text, cue + 1) and not (street and _way_ahead(text, cue + 1)):
                continue
            city_first = True
            tail = tail_pattern.match(text, begin)
        else:
            begin = -1
            for length in (3, 4, 2):
                if text[cue - length + 1 : cue + 1] in _PREFECTURE_SET:
                    begin = cue - length + 1
                    break
            if begin < 0 or begin < covered:
                continue
            city_first = False
            tail = tail_pattern.match(text, cue + 1)
        if tail is None:
            continue
        has_city = bool(tail.group("city"))
        if tail.group("block") or (street and tail.group("way_block")):
            end = _trim(text, begin, tail.end())
            score = 0.9 if has_city or city_first else 0.7
        elif street and tail.group("way_town"):
            end = tail.end()
            score = 0.8
        elif has_city and not city_first:
            end = tail.end("city")
            score = 0.6
        else:
            continue
        if end > begin:
            out.append(Finding(ADDRESS_JP, begin, end, score))
            covered = end
    if roman:
        covered = -1
        for cue_match in _ROMAN_CUE.finditer(text):
            if cue_match.start() < covered:
                continue
            found = _roman(text, cue_match.start())
            if found is not None:
                out.append(found)
                covered = found.end


# A ward (or city) and its prefecture with no block, as 東京都渋谷区 alone: Shibuya-ku, Tokyo.
_ROMAN_WARD_ONLY = lazy_compile(rf"{_ROMAN_WARD}(?:,?\s[A-Z][a-z]+)?,?\s{_ROMAN_PREFECTURE}")


def _roman(text: str, cue: int) -> Finding | None:
    line_start = max(text.rfind("\n", 0, cue) + 1, cue - 100)
    for match in _ROMAN.finditer(text, line_start, min(len(text), cue + 60)):
        if match.start() <= cue < match.end():
            return Finding(ADDRESS_JP, match.start(), match.end(), 0.85)
    begin = cue
    while begin > line_start and text[begin - 1].isalpha():
        begin -= 1
    ward = _ROMAN_WARD_ONLY.match(text, begin)
    if ward is not None and ward.end() > cue and (not begin or not text[begin - 1].isalnum()):
        return Finding(ADDRESS_JP, begin, ward.end(), 0.6)
    return None
