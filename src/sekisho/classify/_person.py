"""Person names in Japanese and English business text.

Names are found from cues, not from every capitalised word: honorifics after a name (様, さん,
氏, 殿, 先生, 部長 ...), titles before it (Mr., Ms., Dr.), form fields (氏名, お名前, Name:,
担当), salutations (Dear ...), travel-record romaji (``YAMADA/TARO``) and full names whose
surname and given name are both in the shipped dictionaries. The cue regex is one literal-led
pass; the name itself is read from a small window around each cue. A katakana reading in
brackets right after a name (``山田 太郎（ヤマダ タロウ）``) is a second PERSON span.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache

from sekisho.classify import _names
from sekisho.classify._address import PREFECTURES_ROMAN
from sekisho.classify._lazy import lazy_compile
from sekisho.classify._table import column_under
from sekisho.classify._trie import trie_pattern, trie_regex
from sekisho.classify.findings import PERSON, Finding

_KANJI = "一-龥々〆ヶ"
_KATA = "ァ-ヴーｦ-ﾟ"  # with half-width katakana (ﾔﾏﾀﾞ ﾀﾛｳ), as bank transfers write names
_KATA_FIRST = "ァ-ヴｦ-ﾝ"

_HONORIFICS = ("様", "さま", "さん", "殿", "氏", "君", "くん", "ちゃん", "先生", "-san", "-sama")
_TITLES = (
    "部長", "課長", "社長", "係長", "主任", "専務", "常務", "取締役", "教授", "弁護士", "会長",
    "副社長", "室長", "所長", "支店長", "次長", "調査役", "局長", "審議官", "参事官", "大臣",
    "理事", "議員", "代表", "税理士", "医師", "事務官", "頭取", "知事", "市長", "次官", "長官",
    "監査役", "執行役員", "店長", "顧問", "相談役", "院長", "講師", "司法書士", "行政書士",
)  # fmt: skip
_FIELDS = (
    "氏名", "氏 名", "氏　名", "お名前", "名前", "フリガナ", "ふりがな", "担当者", "担当", "申請者",
    "契約者", "宛名", "差出人", "送信者", "受取人", "搭乗者", "名義", "者：", "者:", "Full name",
    "Full Name", "Name", "name", "NAME", "Passenger", "PASSENGER", "Contact", "Attn.", "Attn",
    "ATTN", "From", "To", "Cc", "Dear", "Hi", "Hello", "Patient", "Applicant", "Candidate",
    "Employee", "長男", "長女", "次男", "次女", "三男", "三女", "配偶者", "父：", "母：", "妻：",
    "夫：", "患者名", "届出人", "世帯主", "依頼人", "申込者",
)  # fmt: skip
_SALUTATIONS = frozenset({"Dear", "Hi", "Hello"})
# A line that is a department (or branch, team) and then a name: a signature or sender line.
# (Searched from the department word, not from each line's start: ~2x cheaper on text of
# many short lines; the line's start is then checked in Python.)
_SIGNATURE_LINE = lazy_compile(
    r"(?m)(?:部|課|室|局|支店|本部|センター|グループ|チーム|事業所)[ 　]+"
    r"([一-龥々]{1,4}(?:[ 　][一-龥々]{1,3})?)[ 　]*$"
)
_HONORIFIC_FIRST = frozenset("様殿氏")
# Fields whose value is a name only when written as a field ("担当：…"), not in running text.
_LOOSE_FIELDS = frozenset({"担当", "担当者"})
_EN_TITLES = ("Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "Mr", "Mrs", "Ms", "Dr", "Prof", "Miss",
              "MR", "MS", "MRS",
              # as an EU office writes them: German and French
              "Herr", "Herrn", "Frau", "Monsieur", "Madame", "Mme.", "Mme", "Mlle.",
              "Mlle")  # fmt: skip
# A title at the start of a field's value ("Name: Herr Hans Müller"): the title's own cue reads
# the name after it.
_FIELD_TITLES = frozenset(
    {
        "Mr",
        "Mrs",
        "Ms",
        "Dr",
        "Prof",
        "Miss",
        "Herr",
        "Herrn",
        "Frau",
        "Monsieur",
        "Madame",
        "Mme",
        "Mlle",
    }
)
_OURS = ("弊社の", "当社の", "弊行の", "当行の", "弊所の")
_SELF = ("と申します",)  # "アクメの田中と申します": a self-introduction names the writer
_CUE_KIND: dict[str, str] = {
    **{w: "hon" for w in _HONORIFICS},
    **{w: "title" for w in _TITLES},
    **{w: "field" for w in _FIELDS},
    **{w: "entitle" for w in _EN_TITLES},
    **{w: "ours" for w in _OURS},
    **{w: "self" for w in _SELF},
    "/": "slash",
}
# A flat alternation of literals: the regex engine then skips every position whose character
# cannot start a cue, which keeps clean text cheap. Boundaries are checked in Python.
CUE_WORDS: tuple[str, ...] = tuple(w for w in _CUE_KIND if w != "/")
_CUES_JP = trie_regex(w for w in _CUE_KIND if not w.isascii())
_CUES_EN = lazy_compile(
    lambda: trie_pattern(w for w in _CUE_KIND if w.isascii() and w != "/")[3:-1] + "|/(?=[A-Z]{2})"
)
# Latin letters beyond ASCII, as European names are written (Müller, García, Łukasz, Ștefan):
# Latin-1 Supplement, Latin Extended-A and -B (the Romanian Ș, Ț). A name read with
# ASCII letters only was cut at its first accented one ("Jos" of José), and redaction then
# left the rest of it.
_EU_UPPER = "".join(c for c in map(chr, range(0xC0, 0x250)) if c.isupper())
_EU_LOWER = "".join(c for c in map(chr, range(0xC0, 0x250)) if c.islower())
_UP = "A-Z" + _EU_UPPER
_LO = "a-z" + _EU_LOWER
_WORDCHAR = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_" + _EU_UPPER + _EU_LOWER
)
_BEFORE_LATIN = lazy_compile(rf"([{_UP}][{_LO}]+(?: [{_UP}][{_LO}]+)?)[ 　]?$")
_BEFORE_KATA = lazy_compile(
    rf"([{_KATA_FIRST}][{_KATA}]{{1,9}}(?:[ 　・･][{_KATA_FIRST}][{_KATA}]{{1,9}})?)[ 　]?$"
)
_BEFORE_KANJI = lazy_compile(rf"([{_KANJI}]{{1,6}}(?:[ 　][{_KANJI}]{{1,4}})?)[ 　]?$")
_BEFORE_HIRA = lazy_compile(r"([ぁ-ん]{2,4})$")

# After a field label: the rest of a compound label (名義 + 人, 契約者 + 名, 申請者 + 氏名), a
# script note, a colon, spaces.
_FIELD_GAP = lazy_compile(
    r"(?:氏名|人名|人|名)?[ 　]*(?:[(（](?:漢字|カナ|フリガナ|ローマ字)[)）])?[ 　]*[:：]?[ 　\t]*"
)
_VALUE_KANJI = lazy_compile(rf"[{_KANJI}]{{1,5}}(?:[ 　]{{1,2}}[{_KANJI}]{{1,5}})?")
_VALUE_KATA = lazy_compile(
    rf"[{_KATA_FIRST}][{_KATA}]{{1,11}}(?:[ 　・･][{_KATA_FIRST}][{_KATA}]{{1,11}})?"
)
_VALUE_KANJI_WORD = lazy_compile(rf"[{_KANJI}]{{1,5}}")
_VALUE_HIRA = lazy_compile("[ぁ-ゖ]{1,12}(?:[ 　・][ぁ-ゖ]{1,12})?")
_READING_FIELDS = frozenset({"ふりがな", "フリガナ"})
_COLUMN_FIELDS = frozenset({"氏名", "名前", "お名前", "フリガナ", "ふりがな", "Name", "Full name"})
_VALUE_LATIN = lazy_compile(
    rf"[{_UP}][{_LO}{_UP}'\-]{{1,20}}(?: [{_UP}][{_LO}{_UP}'\-]{{1,20}}){{0,2}}"
    rf"|[{_UP}]{{2,20}}(?:[ /][{_UP}]{{2,20}})"
)
_READING = lazy_compile(
    rf"[ 　]*[(（]([ァ-ヴ][{_KATA}]{{1,11}}(?:[ 　・][ァ-ヴ][{_KATA}]{{1,11}})?)[)）]"
)
_SALUTATION_NAME = lazy_compile(
    rf"([{_UP}][{_LO}'\-]{{1,20}}?(?: [{_UP}][{_LO}'\-]{{1,20}}?)?)(?:-(?:san|sama|kun|chan))?"
    r"[ \t]*(?:,|$|\n|!)"
)
_SELF_NAME = lazy_compile(rf"(?:の|。|\n|^)([{_KANJI}]{{1,4}}(?:[ 　][{_KANJI}]{{1,3}})?)$")
_UPPER_RUN_BEFORE = lazy_compile(r"([A-Z]{2,20})$")
_UPPER_RUN_AFTER = lazy_compile(r"[A-Z]{2,20}(?![A-Za-z])")

# Words that stand before an honorific but are not names (お客様, 皆さん, 仕様, 同様 ...).
_STOP_LAST = frozenset(
    "皆客者部課社係室局所店会方達族員中位神仏王殿様同仕模多異左今貴各奥彼御人主先長臣省庁体師家手親那屋"
)
# Katakana words that stand before 様 or さん and are not names (ユーザー様, パートさん).
_KATA_STOP = frozenset(
    {
        "ユーザー", "ユーザ", "オーナー", "メンバー", "スタッフ", "ベンダー", "クライアント",
        "パート", "ゲスト", "カスタマー", "サポーター", "パートナー", "ドライバー", "オペレーター",
        "ファン", "チーム", "ママ", "パパ", "アルバイト", "バイト", "ホスト", "マネージャー",
        "リーダー", "サポート", "センター", "ショップ", "ストア", "ホテル", "クリニック",
    }
)  # fmt: skip
# What follows a known surname in a company's or a place's name (山田商事様, 千葉銀行様, 田中町様).
_ORG_TAILS = frozenset(
    {
        "商事", "工業", "建設", "銀行", "製薬", "病院", "医院", "県庁", "県警", "観光", "産業",
        "商店", "物産", "電機", "電気", "証券", "保険", "生命", "信金", "興業", "運輸", "不動産",
        "製作", "商会", "工務", "組合", "農協", "歯科", "薬局", "書店", "法人", "学園", "大学",
        "市役", "町役", "村役", "農園", "農場", "牧場", "酒造", "水産", "食品", "製菓", "工房",
        "事務所", "協会", "財団",
    }
)  # fmt: skip
# The headings that stand beside 氏名 in a form's or a table's heading row.
_COLUMN_HEADINGS = frozenset(
    {
        "所属", "役職", "部署", "性別", "年齢", "生年月日", "住所", "現住所", "電話", "電話番号",
        "携帯", "内線", "連絡先", "備考", "国籍", "職業", "続柄", "署名", "印", "日付", "年月日",
        "入社日", "社員番号", "番号", "学歴", "職歴", "勤務先", "会社名", "所在地", "本籍",
        "承認者", "申請者", "担当者", "確認者", "作成者", "部門", "課", "部", "区分",
        "フリガナ", "ふりがな", "カナ", "メール", "メールアドレス",
    }
)  # fmt: skip
_COMPANY_WORD = trie_regex(("会社", "法人", *_ORG_TAILS))
_KANJI_RUN = lazy_compile(rf"[{_KANJI}]{{1,16}}")
_ORG_LAST = frozenset("町村市区県屋組店社堂院庁館寺駅港")
# What ends a department's or a company's name before a person's (営業部田中, 東京支店古賀).
_ORG_BEFORE_NAME = frozenset("部課室局店所社署係班科団会 　")
_STOP_FOLLOW_SAMA = frozenset("々子式態相")
# Words of time and manner that stand before a name with no particle between (本日林様,
# 昨日森さん, 先程田中様): none is a surname, so a kanji run that starts with one has the name
# after it.
_LEADING_WORDS = frozenset(
    {
        "本日", "今日", "昨日", "明日", "先日", "後日", "当日", "翌日", "前日", "同日", "毎日",
        "今朝", "昨朝", "毎朝", "今晩", "昨晩", "今夜", "昨夜", "先週", "今週", "来週", "毎週",
        "先月", "今月", "来月", "毎月", "昨年", "今年", "来年", "本年", "先程", "先刻", "至急",
        "早速", "先般", "過日", "以前", "別途", "直接", "本件", "引続",
    }
)  # fmt: skip
_LATIN_STOP = frozenset(
    {
        "Sir", "Madam", "Customer", "Customers", "Team", "All", "Colleagues", "Valued", "Member",
        "Client", "Partner", "Partners", "Friends", "Hiring", "Manager", "Support", "Sales",
        "The", "This", "That", "Our", "Your", "We", "Please", "Thank", "Thanks", "Re", "Fwd",
        "Subject", "Date", "Hello", "Hi", "Regards", "Best", "Company", "Project", "Tokyo",
        "Osaka", "Japan", "Inc", "Ltd", "Corp", "Department", "Dept", "Office", "DOB", "Age",
        "Gender", "Email", "Phone", "Address", "Title", "Position",
        "Board", "Staff", "Everyone", "Admin", "Engineering", "Legal", "HR", "IT", "Finance",
    }
)  # fmt: skip
# The second word of a company or place named with a given name (Sakura Technologies, Akira
# Systems, Beverly Hills), and the legal forms that may follow a two-word company name
# (Kevin Brown Ltd, Mei Solutions K.K.): no person's name.
_ORG_WORDS_EN = frozenset(
    {
        "Technologies", "Technology", "Tech", "Systems", "Networks", "Solutions", "Labs",
        "Laboratories", "Lab", "Group", "Holdings", "Partners", "Corporation", "Corp", "Inc",
        "Co", "Ltd", "Bank", "Motors", "Motor", "Electric", "Electronics", "Industries",
        "Industry", "Trading", "Software", "Consulting", "Capital", "Ventures", "Pharma",
        "Foods", "Airlines", "Media", "Games", "Studio", "Studios", "Design", "Digital", "Cloud",
        "Data", "Analytics", "Logistics", "Financial", "Securities", "Insurance", "Engineering",
        "Robotics", "Medical", "Health", "Energy", "Works", "Foundation", "Institute",
        "University", "College", "School", "Academy", "Hospital", "Clinic", "Hotel", "Hotels",
        "Shop", "Store", "Stores", "Mart", "Records", "Press", "Publishing", "Services",
        "Enterprises", "Associates", "International", "Global", "Japan", "Hills", "Valley",
        "Street", "Avenue", "Building", "Tower", "Park", "Station", "Airport", "Bridge",
    }
)  # fmt: skip
_ORG_AFTER = lazy_compile(
    r",? (?:Co\.|Inc\b|Ltd\b|LLC\b|Corp\b|Corporation\b|K\.K\.|GmbH\b|plc\b|PLC\b"
    r"|Limited\b|Holdings\b|Group\b)"
)
_WORD_AFTER = lazy_compile(r" ([A-Z][a-z]{1,20})\b")


def _org_follows(text: str, end: int) -> bool:
    """Whether a company's legal form or word follows a name: Kevin Brown Ltd, Mark Suzuki
    Motor, Emma Watson Hotels (a company or a place named after a person)."""
    if _ORG_AFTER.match(text, end) is not None:
        return True
    word = _WORD_AFTER.match(text, end)
    return word is not None and word.group(1) in _ORG_WORDS_EN


_NAME_FIELD_PREFIX_STOP = tuple(
    w.lower()
    for w in (
        "Company ",
        "File ",
        "Product ",
        "Project ",
        "Host ",
        "Domain ",
        "Server ",
        "Bucket ",
        "Field ",
        "Display ",
        "User ",
        "Account ",
        "Table ",
        "Column ",
        "Model ",
        "Branch ",
        "Bank ",
        "会社",
        "商品",
        "ファイル",
        "製品",
        "案件",
        "プロジェクト",
        "ユーザー",
        "銀行",
        "支店",
    )
)
_SLASH_STOP = frozenset(
    {"AND", "OR", "TCP", "UDP", "HTTP", "HTTPS", "INPUT", "OUTPUT", "READ", "WRITE", "YES", "NO",
     "ON", "OFF", "PDF", "CSV", "JSON", "XML", "HTML", "API", "URL", "GET", "POST", "PUT"}
)  # fmt: skip
_ROMAJI_CONTEXT = ("passenger", "name", "pax", "guest", "搭乗", "旅客", "氏名", "宿泊", "名簿")
_STRICT_FIELDS = frozenset({"From", "To", "Cc", "Contact", "Attn", "Attn.", "ATTN"})
# English nouns for a person that head a field only with its colon or tab (Employee: …); before
# another word they qualify it (Employee ID, Patient Portal, Passenger Name Record), and the
# words after them are a name only where the dictionaries know one.
_PERSON_NOUN_FIELDS = frozenset(
    {"Employee", "Patient", "Applicant", "Candidate", "Passenger", "PASSENGER", "Name", "name",
     "NAME", "Full name", "Full Name"}
)  # fmt: skip


@cache
def _full_name_ja() -> re.Pattern[str]:  # built from the dictionaries, so on first use
    """Kanji runs whose first two characters can begin a dictionary surname. Only the start of
    a run can begin an uncued name, so a pair after another kanji is skipped in the regex."""
    surnames = [s for s in _names.surnames_ja() if len(s) >= 2]
    first = "".join(sorted({s[0] for s in surnames}))
    second = "".join(sorted({s[1] for s in surnames}))
    return re.compile(f"[{first}](?<![{_KANJI}].)[{second}]")


def _is_kanji(ch: str) -> bool:
    """Is ``ch`` (one character, or "" past the end) in _KANJI? Compared, not matched: this
    runs for every surname-like pair of a Japanese text."""
    return "一" <= ch <= "龥" or (ch != "" and ch in "々〆ヶ")


# A surname may have a prefix (O'Brien, McDonald, MacLeod) or two parts (Smith-Jones); a
# hyphen before a lower-case word is an honorific's (Sato-san), outside.
_SURNAME_AFTER = lazy_compile(
    rf" (?:[A-Z]\. )?((?:O'|D'|Mc|Mac)?[{_UP}][{_LO}]{{1,20}}(?:-[{_UP}][{_LO}]{{1,20}})?)"
    rf"(?![{_UP}{_LO}'])"
)
# A romanised surname written before the given name (``Tanaka Taro``, ``TANAKA Taro``): searched
# with ``endpos`` at the given name, so ``$`` is the space before it.
_SURNAME_BEFORE = lazy_compile(rf"(?<![{_UP}{_LO}'])([{_UP}][{_LO}]{{1,15}}|[A-Z]{{2,15}})[ 　]$")
# Hepburn romanisation: syllables of Japanese (ka, shi, tsu, kyo, n ...). English names rarely
# take this shape (``James``, ``Adam`` and ``Young`` do not), romanised Japanese names always do.
_HEPBURN = lazy_compile(
    r"(?:(?:[kgsztdnhbpmr]y?|[fjwy]|sh|ch|ts)?(?:aa|ii|uu|ee|oo|ou|[aiueo])|n(?![aiueoy]))+"
)
_GIVEN_FIRST = lazy_compile(rf"[{_UP}][{_LO}]{{1,15}}(?= [{_UP}])")
# A given name not in the dictionary beside a known romanised Japanese surname (Kenta Suzuki,
# Suzuki Kenta): a capitalised word of Hepburn syllables. Not one of these: a company's or a
# place's word (Yamada Denki, Ito Yokado, Osaka Tanaka), an honorific (Tanaka Sensei), or an
# English word of that shape at a sentence's start (Make Tanaka aware, Note Sato is out).
_ROMAJI_WORD_BEFORE = lazy_compile(r"(?<![A-Za-z'.\-])([A-Z][a-z]{2,11}) $")
_ROMAJI_WORD_AFTER = lazy_compile(r" ([A-Z][a-z]{2,11})(?![A-Za-z'\-])")
# English words end in a silent e (Make, Note, Here, Nature, Minute); Japanese given names
# seldom do but for -suke and -ne (Daisuke, Akane).
_SILENT_E = lazy_compile(r"[a-z]{1,2}[^aiueo]e|[a-z]*(?:ur|ut|at|ot|om|iv|ic|id|ag|ur)e")
_ROMAJI_NOT_GIVEN = frozenset(
    {
        *PREFECTURES_ROMAN, "Tokyo", "Osaka", "Kyoto", "Kobe", "Nagoya", "Sapporo", "Sendai",
        "Yokohama", "Kawasaki", "Fukuoka", "Hiroshima", "Chiba", "Sakai", "Hamamatsu", "Okayama",
        "Kumamoto", "Kagoshima", "Naha", "Shinjuku", "Shibuya", "Ginza", "Umeda", "Namba",
        "Hakata", "Minato", "Chuo", "Chiyoda", "Japan", "Nippon", "Nihon",
        "Denki", "Shoji", "Sangyo", "Kogyo", "Shoten", "Seisakusho", "Ginko", "Kensetsu",
        "Bussan", "Seiyaku", "Shokai", "Unyu", "Kaihatsu", "Tsushin", "Tsusho", "Denko", "Kosan",
        "Shokuhin", "Gakuen", "Byoin", "Jimusho", "Kaisha", "Kabushiki", "Sogo", "Kikai",
        "Kasei", "Kagaku", "Denso", "Tekko", "Seiko", "Koki", "Kinzoku", "Yokado", "Kanko",
        "Kikaku", "Hoken", "Shinkin", "Shinbun", "Shimbun", "Honten", "Shiten", "Honsha",
        "Sensei", "Sama", "San", "Kun", "Chan", "Shacho", "Bucho", "Kacho", "Senpai", "Hakase",
        "Sushi", "Ramen", "Sake", "Anime", "Manga", "Karaoke", "Kaizen", "Kanban", "Judo",
        "Also", "Into", "Onto", "Undo", "Auto", "Radio", "Piano", "Data", "Area", "Idea",
        "Media", "Beta", "Mini", "Taxi", "Menu", "Open", "Hero", "Zero", "Memo", "Demo", "Photo",
        "Video", "Audio", "Studio", "Banana", "Agenda", "Saturn", "Venus", "Robin", "Human",
        "Woman", "Amen", "Omen", "Token", "Hidden", "Golden", "Mission", "Union", "Onion",
        "Kindle", "Nokia", "Mazda", "Yamaha", "Nintendo", "Sony", "Toyota", "Honda", "Nissan",
        "Subaru", "Hitachi", "Toshiba", "Panasonic", "Fujitsu", "Mitsubishi", "Sumitomo",
        "Mitsui", "Mizuho", "Nomura", "Daiwa", "Rakuten", "Uniqlo", "Muji", "Ricoh", "Kirin",
        "Asahi", "Suntory", "Shiseido", "Kao", "Bandai", "Konami", "Sega", "Capcom",
    }
)  # fmt: skip


_CAPITALISED = lazy_compile(r"(?<![A-Za-z])[A-Z][a-z]{1,15}(?![A-Za-z])")


def romaji_surnames() -> frozenset[str]:
    """The romanised Japanese surnames of the dictionary (Hepburn-shaped), as written in a
    sentence (Suzuki) and in capitals (SUZUKI, as bookings and CV headings write them):
    trigger words."""
    words = [w for w in _names.surnames_en() if _HEPBURN.fullmatch(w.lower())]
    return frozenset([*words, *(w.upper() for w in words)])


# A word in capitals beside a surname in capitals: YAMADA TARO, TARO YAMADA, SUZUKI KENTA.
_UPPER_WORD_AFTER = lazy_compile(r" ([A-Z]{3,12})(?![A-Za-z0-9'])")
_UPPER_WORD_BEFORE = lazy_compile(r"(?<![A-Za-z0-9'])([A-Z]{3,12}) $")


def _romaji_given(word: str) -> bool:
    """Whether a capitalised word beside a surname can be a romanised Japanese given name."""
    lower = word.lower()
    return (
        word not in _ROMAJI_NOT_GIVEN
        and word not in _LATIN_STOP
        and _HEPBURN.fullmatch(lower) is not None
        and _SILENT_E.fullmatch(lower) is None
    )


# Name cues (honorifics, titles, field labels, known names) one text may hold. Each costs tens
# of microseconds to read around; a text made of nothing but names ("山田様" 433,000 times, a
# 4 MB body) held the CPU for 12 s. Past this many, the detector gives up and says so: the
# pipeline then treats the request as a classifier failure, classified at the highest level
# (fail closed). Real documents stay far below it (20,000 cues: ~0.6 s of reading).
MAX_CUES = 20_000


class TooManyCues(ValueError):
    """A text holds more name cues than PersonDetector reads (MAX_CUES)."""


class PersonDetector:
    def __init__(self) -> None:
        self._surnames = _names.surnames_ja()
        self._given = _names.given_ja()
        self._given_en = _names.given_en()
        self._surnames_en = _names.surnames_en()
        self._roman = _names.romanised_upper()
        # The romanised Japanese names among the dictionaries' (Hepburn-shaped), looked up as
        # sets: the order check runs for every known given name in a text.
        self._romaji_surnames = romaji_surnames()
        self._romaji_given = frozenset(w for w in self._given_en if _HEPBURN.fullmatch(w.lower()))
        self._full_ja = _full_name_ja()

    def detect(
        self, text: str, out: list[Finding], cues: Iterable[tuple[int, int, str]] | None = None
    ) -> None:
        """Add PERSON findings.

        ``cues`` (start, end, word) are the cue words of the text when the caller has already
        found them (the scanner's trigger pass has); by default they are searched here.
        """
        found: list[Finding] = []
        standalone = cues is None
        if cues is None:
            matches = list(_CUES_EN.finditer(text))
            if not text.isascii():
                matches += _CUES_JP.finditer(text)
            cues = [(m.start(), m.end(), m.group()) for m in matches]
        cues = cues if isinstance(cues, list) else list(cues)
        if len(cues) > MAX_CUES:
            raise TooManyCues(
                f"{len(cues)} name cues in one text of {len(text)} characters; at most "
                f"{MAX_CUES} are read"
            )
        tables = "," in text or "\t" in text
        rows = range(0)  # the rows of the last table read
        for start, end, word in cues:
            kind = _CUE_KIND.get(word)
            if kind is None:
                if word in self._given_en:
                    self._given_name(text, start, end, found)
                elif word in self._surnames:
                    self._full_name_ja_at(text, start, found)
                elif word in self._romaji_surnames:
                    if word.isupper():
                        self._romaji_name_in_capitals(text, start, end, found)
                    else:
                        self._romaji_full_name(text, start, end, found)
                continue
            if kind == "slash":
                if text[end : end + 2].isupper() and text[end : end + 2].isascii():
                    self._slash(text, start, found)
                continue
            if word.isascii() and word[0].isalpha():
                if start > 0 and text[start - 1] in _WORDCHAR:
                    continue
                nxt = text[end : end + 1]
                if nxt in _WORDCHAR or (kind == "entitle" and nxt not in (" ", "\t")):
                    continue
            elif word == "氏" and text[end : end + 1] == "名":
                continue
            elif word[0] == "-" and text[end : end + 1] in _WORDCHAR:
                continue  # "-sanitised", "-sample": not Tanaka-san
            if kind == "hon" or kind == "title":
                self._before(text, start, end, kind == "title", found)
            elif kind == "field":
                if word in _COLUMN_FIELDS and start not in rows and tables:
                    rows = self._column(text, start, end, found)
                self._field(text, word, start, end, found)
            elif kind == "entitle":
                self._after_title(text, end, found)
            elif kind == "ours":
                self._ours(text, end, found)
            elif kind == "self":
                self._self_introduction(text, start, found)
            elif kind == "slash":
                self._slash(text, start, found)
        if not text.isascii():
            # Uncued Japanese full names: one class-led pass over surname-like kanji pairs.
            for match in self._full_ja.finditer(text):
                self._full_name_ja_at(text, match.start(), found)
            if "\n" in text:
                self._signatures(text, found)
        if standalone:
            for match in _GIVEN_FIRST.finditer(text):
                if match.group() in self._given_en:
                    self._given_name(text, match.start(), match.end(), found)
            for match in _CAPITALISED.finditer(text):
                if match.group() in self._romaji_surnames:
                    self._romaji_full_name(text, match.start(), match.end(), found)
        for finding in found:
            out.append(finding)
            after = text[finding.end : finding.end + 1]
            if not after or after not in "(（ 　":
                continue  # no reading in brackets follows
            reading = _READING.match(text, finding.end)
            if reading is not None:
                out.append(Finding(PERSON, reading.start(1), reading.end(1), 0.85))

    def _full_name_ja_at(self, text: str, start: int, out: list[Finding]) -> None:
        """An uncued full name at ``start`` whose surname and given name are both known."""
        if start > 0 and _is_kanji(text[start - 1]):
            return  # inside a longer kanji word
        surnames, given = self._surnames, self._given
        for length in (3, 2):
            if text[start : start + length] in surnames:
                pos = start + length
                if text[pos : pos + 1] in (" ", "　"):
                    pos += 1
                for glen in (3, 2, 1):
                    name = text[pos : pos + glen]
                    if len(name) == glen and name in given:
                        end = pos + glen
                        if not _is_kanji(text[end : end + 1]):
                            out.append(Finding(PERSON, start, end, 0.8))
                        return
                return

    def _given_name(self, text: str, start: int, end: int, out: list[Finding]) -> None:
        """``John Smith``: a known given name, then a capitalised word, with no cue. Or, in
        the Japanese order, a known romanised surname before it: ``Tanaka Taro``."""
        if (start > 0 and text[start - 1] in _WORDCHAR) or text[end : end + 1] in _WORDCHAR:
            return  # inside a longer word: "Ken" of "Kenta" is no given name
        if start > 1 and text[start - 1] in " 　":
            before = _SURNAME_BEFORE.search(text, max(0, start - 17), start)
            if (
                before is not None
                and text[start:end] in self._romaji_given
                and before.group(1).capitalize() in self._romaji_surnames
            ):
                out.append(Finding(PERSON, before.start(1), end, 0.75))
                return
        rest = _SURNAME_AFTER.match(text, end)
        if (
            rest is not None
            and rest.group(1) not in _LATIN_STOP
            and rest.group(1) not in _ORG_WORDS_EN
            and not _org_follows(text, rest.end())
        ):
            out.append(Finding(PERSON, start, rest.end(), 0.75))

    def _romaji_full_name(self, text: str, start: int, end: int, out: list[Finding]) -> None:
        """A known romanised surname with a given name the dictionary lacks beside it:
        ``Kenta Suzuki``, ``Suzuki Kenta``."""
        if (start > 0 and text[start - 1] in _WORDCHAR) or text[end : end + 1] in _WORDCHAR:
            return
        # Plain character tests first: most known surnames stand after a lower-case word or a
        # mark, and before one (customer Tanaka about …).
        if (
            start > 3
            and text[start - 1] == " "
            and text[text.rfind(" ", start - 14 if start > 14 else 0, start - 1) + 1].isupper()
        ):
            before = _ROMAJI_WORD_BEFORE.search(text, max(0, start - 13), start)
            if (
                before is not None
                and self._unknown_given(before.group(1))
                and not _org_follows(text, end)
            ):
                out.append(Finding(PERSON, before.start(1), end, 0.7))
                return
        if text[end : end + 1] == " " and text[end + 1 : end + 2].isupper():
            after = _ROMAJI_WORD_AFTER.match(text, end)
            if (
                after is not None
                and self._unknown_given(after.group(1))
                and not _org_follows(text, after.end())
            ):
                out.append(Finding(PERSON, start, after.end(), 0.7))

    def _romaji_name_in_capitals(self, text: str, start: int, end: int, out: list[Finding]) -> None:
        """A known surname in capitals with a given name in capitals beside it."""
        if (start > 0 and text[start - 1] in _WORDCHAR) or text[end : end + 1] in _WORDCHAR:
            return
        if text[end : end + 1] == " ":
            after = _UPPER_WORD_AFTER.match(text, end)
            if after is not None and self._given_in_capitals(after.group(1)):
                out.append(Finding(PERSON, start, after.end(), 0.75))
                return
        if start > 3 and text[start - 1] == " ":
            before = _UPPER_WORD_BEFORE.search(text, max(0, start - 14), start)
            if before is not None and self._given_in_capitals(before.group(1)):
                out.append(Finding(PERSON, before.start(1), end, 0.75))

    def _given_in_capitals(self, word: str) -> bool:
        name = word.capitalize()
        return name in self._given_en or self._unknown_given(name)

    def _unknown_given(self, word: str) -> bool:
        # Known given names are read from their own cue (with their own checks); a known
        # surname beside a surname is two people or a company (Tanaka Sato, Sumitomo Mitsui).
        return (
            word not in self._given_en
            and word not in self._surnames_en
            and word not in _ORG_WORDS_EN
            and _romaji_given(word)
        )

    # -- names before an honorific or title ------------------------------------------------
    def _surname_ends_at(self, text: str, end: int) -> bool:
        """Whether a known surname of two or three kanji ends at ``end`` (田中, 阿部, 緒方:
        their last kanji is also a word's that stands before an honorific, 中, 部, 方)."""
        return text[max(0, end - 2) : end] in self._surnames or (
            end >= 3 and text[end - 3 : end] in self._surnames
        )

    def _before(self, text: str, cue: int, cue_end: int, title: bool, out: list[Finding]) -> None:
        if cue == 0 or text[cue - 1] in "\n\t":
            return
        if text[cue - 1] in _STOP_LAST and not self._surname_ends_at(text, cue):
            return  # お客様, 皆さん, 営業部長 — but 田中様, 阿部部長, 緒方さん are names
        if text[cue] == "様" and text[cue_end : cue_end + 1] in _STOP_FOLLOW_SAMA:
            return
        window = text[max(0, cue - 14) : cue]
        base = cue - len(window)
        # Each pattern below ends in a letter of its own script (then an optional space), so
        # the last letter before the cue says which one can match: only that one is tried.
        last = window[-1]
        spaced = last in "　 "  # 田中 様: a space before the honorific, either width
        if spaced:
            last = window[-2:-1]
            if last in _STOP_LAST and not self._surname_ends_at(text, cue - 1):
                return
        if not last:
            return
        if "a" <= last <= "z" or last in _EU_LOWER:
            latin = _BEFORE_LATIN.search(window)
            if latin is None or title:
                return
            name = latin.group(1)
            first, _, second = name.partition(" ")
            if first not in _LATIN_STOP and first not in _SALUTATIONS:
                out.append(Finding(PERSON, base + latin.start(1), base + latin.end(1), 0.8))
            elif second and second not in _LATIN_STOP:  # "Dear Tanaka-san": the name alone
                start = base + latin.end(1) - len(second)
                out.append(Finding(PERSON, start, base + latin.end(1), 0.8))
            return
        if "ァ" <= last <= "ヴ" or last == "ー" or "ｦ" <= last <= "ﾟ":
            kata = _BEFORE_KATA.search(window)
            if kata is not None and not title and kata.group(1) not in _KATA_STOP:
                out.append(Finding(PERSON, base + kata.start(1), base + kata.end(1), 0.7))
            return
        if "一" <= last <= "龥" or last in "々〆ヶ":
            kanji = _BEFORE_KANJI.search(window)
            if kanji is None:
                return
            span = self._kanji_name(kanji.group(1), allow_unknown=not title)
            at = base + kanji.start(1)
            if span is not None and span[2] <= 0.6 and at > 0 and text[at - 1] in "ごお":
                return  # ご苦労様, お世話様, お得意様: an honorific prefix makes it a word
            if span is not None:
                a, b, score = span
                out.append(
                    Finding(PERSON, base + kanji.start(1) + a, base + kanji.start(1) + b, score)
                )
            return
        if spaced or not "ぁ" <= last <= "ん":
            return
        hira = _BEFORE_HIRA.search(window)
        if hira is not None and hira.group(1) in self._given:
            out.append(Finding(PERSON, base + hira.start(1), base + hira.end(1), 0.7))

    def _kanji_name(self, run: str, *, allow_unknown: bool) -> tuple[int, int, float] | None:
        """Where the name sits inside a kanji run ending at a cue (``営業部田中`` → 田中)."""
        if run in _LEADING_WORDS:
            return None  # 本日様, 先日さん
        skip = 0
        while run[skip : skip + 2] in _LEADING_WORDS and len(run) - skip > 2:
            skip += 2  # 本日林: the name is 林
        if skip:
            span = self._kanji_name(run[skip:], allow_unknown=allow_unknown)
            return None if span is None else (span[0] + skip, span[1] + skip, span[2])
        surnames = self._surnames
        for sep in (" ", "　"):
            if sep in run:  # "東海林 翔太": a known given name after a space carries the surname
                family, _, given = run.partition(sep)
                if given in self._given and 1 <= len(family) <= 3:
                    return 0, len(run), 0.85
                if given in surnames:  # "営業部 田中": the name is the part after the space
                    return len(family) + 1, len(run), 0.85
        for k in range(len(run)):
            rest = run[k:]
            for length in (4, 3, 2, 1):
                head = rest[:length]
                if len(head) == length and head in surnames:
                    tail = rest[length:].strip(" 　")
                    if tail and (tail in _ORG_TAILS or tail[-1] in _ORG_LAST):
                        return None  # 山田商事, 千葉銀行, 田中町: a company or a place
                    if not tail or tail in self._given or (len(tail) <= 2 and length >= 2):
                        if k and length == 1 and run[k - 1] not in _ORG_BEFORE_NAME:
                            # 萩原, 伊東, 大林: an unknown surname ending in a one-kanji one
                            # is the whole run, not its last kanji (redaction would leak 萩).
                            return 0, len(run), 0.75
                        return k, len(run), 0.9 if length >= 2 or tail else 0.75
        if not allow_unknown:
            return None
        compact = run.replace(" ", "").replace("　", "")
        if 2 <= len(compact) <= 5 and run[-1] not in _STOP_LAST and run[0] not in _STOP_LAST:
            return 0, len(run), 0.6
        return None

    # -- names after a field label, a title or 弊社の ---------------------------------------
    def _field(self, text: str, label: str, start: int, end: int, out: list[Finding]) -> None:
        before = text[max(0, start - 12) : start].lower()
        if before.endswith(_NAME_FIELD_PREFIX_STOP):
            return
        gap = _FIELD_GAP.match(text, end)
        pos = gap.end() if gap is not None else end
        if label in ("To", "From", "Cc", "Contact") and pos == end:
            return  # "To" and "From" are names only as header fields ("To: ...")
        strict = label in _STRICT_FIELDS
        explicit = ":" in text[end:pos] or "：" in text[end:pos]
        qualifier = label in _PERSON_NOUN_FIELDS and not explicit and "\t" not in text[end:pos]
        if text[pos : pos + 1] in _HONORIFIC_FIRST:
            return  # ご契約者様: the label's honorific, not a name
        value = _VALUE_KANJI.match(text, pos)
        if value is not None:
            if label in _SALUTATIONS:
                return
            run = _KANJI_RUN.match(text, pos)
            if run is not None and _COMPANY_WORD.search(text, pos, run.end()):
                return  # 申請者：株式会社山田商事, a company (PII_LABELS: not a person)
            department = value.group().split()[0]
            if department in _COLUMN_HEADINGS:
                return  # 氏名　所属　役職: a table's heading row, no name in it
            if (
                len(department) >= 3
                and department[-1] in _ORG_BEFORE_NAME
                and department not in self._surnames
            ):
                # 起案者：総務部 伊藤 健太: the department, then the name (阿部, 日下部 are names).
                at = pos = value.start() + len(department)
                while text[pos : pos + 1] in (" ", "　"):
                    pos += 1
                value = _VALUE_KANJI.match(text, pos) if pos > at else None
                if value is None:
                    return  # 申請者：経理部, a department and no person
            words = value.group().split()
            if len(words) == 2 and (
                words[1] in _COLUMN_HEADINGS or text[value.end() : value.end() + 1] in (":", "：")
            ):
                # 氏名：山田太郎　年齢：45歳: the second word is the next field's label
                value = _VALUE_KANJI_WORD.match(text, value.start())
                if value is None:
                    return
            if (label in _LOOSE_FIELDS and not explicit) or strict:
                span = self._kanji_name(value.group(), allow_unknown=False)
                if span is not None and span[0] == 0:
                    out.append(Finding(PERSON, pos, pos + span[1], span[2]))
                return
            out.append(Finding(PERSON, value.start(), value.end(), 0.85))
            self._listed(text, value.end(), out)
            return
        value = _VALUE_KATA.match(text, pos)
        if value is not None:
            if value.group() in _COLUMN_HEADINGS:
                return  # 氏名	フリガナ: a heading row
            if label in _LOOSE_FIELDS:
                return  # "担当：インフラチーム" names a team, not a person
            out.append(Finding(PERSON, value.start(), value.end(), 0.8))
            return
        if label in _READING_FIELDS:  # ふりがな　やまだ　はなこ: the reading, in hiragana
            if not any(c in text[end:pos] for c in " 　\t:："):
                return  # フリガナをご記入ください: prose about the field, no value
            value = _VALUE_HIRA.match(text, pos)
            if value is not None:
                out.append(Finding(PERSON, value.start(), value.end(), 0.8))
            return
        value = _VALUE_LATIN.match(text, pos)
        if value is None:
            return
        words = value.group().replace("/", " ").split(" ")
        if words[0] in _LATIN_STOP or words[0] in _FIELD_TITLES:
            return
        if label in _SALUTATIONS:
            # "Dear Priya," / "Hi Sarah": the name is the word(s) before the comma.
            first = _SALUTATION_NAME.match(text, pos)
            if first is not None and first.group(1).split(" ")[0] not in _LATIN_STOP:
                out.append(Finding(PERSON, first.start(1), first.end(1), 0.8))
            return
        if strict or qualifier:
            known = any(
                w in self._given_en or w in self._surnames_en or w.upper() in self._roman
                for w in words
            )
            line_end = text[value.end() : value.end() + 1] in ("", "\n", "\r")
            header = (
                strict
                and line_end
                and len(words) in (2, 3)
                and (end - len(label) == 0 or text[start - 1] == "\n")
            )
            if not known and not text.startswith(" <", value.end()) and not header:
                return
        out.append(Finding(PERSON, value.start(), value.end(), 0.8))

    def _listed(self, text: str, pos: int, out: list[Finding]) -> None:
        """More names after a field's first: 出席者：田中、鈴木、佐藤 (each a known surname)."""
        for _ in range(50):
            if text[pos : pos + 1] not in ("、", ",", "，", "・"):
                return
            value = _VALUE_KANJI.match(text, pos + 1)
            if value is None:
                return
            span = self._kanji_name(value.group(), allow_unknown=False)
            if span is None or span[0] != 0:
                return
            out.append(Finding(PERSON, value.start(), value.start() + span[1], span[2]))
            pos = value.start() + span[1]

    def _column(self, text: str, start: int, end: int, out: list[Finding]) -> range:
        """The names under a table's 氏名 or フリガナ heading (社員番号,氏名,フリガナ /
        1001,雨宮 凛,アメミヤ リン): each cell that is written as a name is one. Returns the
        range of the table's rows."""
        rows, cells = column_under(text, start, end)
        for first, last in cells:
            value = text[first:last]
            if value in _COLUMN_HEADINGS or value in _COLUMN_FIELDS:
                continue  # a heading row repeated (a table pasted twice, page by page)
            for shape in (_VALUE_KANJI, _VALUE_KATA, _VALUE_HIRA, _VALUE_LATIN):
                if shape.fullmatch(text, first, last) is not None:
                    out.append(Finding(PERSON, first, last, 0.8))
                    break
        return rows

    def _signatures(self, text: str, out: list[Finding]) -> None:
        """A line that is a department and a known surname (a signature, a sender line):
        営業部 山田, 人事課　佐藤 花子."""
        for line in _SIGNATURE_LINE.finditer(text):
            if line.start() - (text.rfind("\n", 0, line.start()) + 1) > 24:
                continue  # a department word deep inside a sentence, not a sender line
            span = self._kanji_name(line.group(1), allow_unknown=False)
            if span is not None and span[0] == 0:
                out.append(Finding(PERSON, line.start(1), line.start(1) + span[1], span[2]))

    def _after_title(self, text: str, pos: int, out: list[Finding]) -> None:
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        value = _VALUE_LATIN.match(text, pos)
        if value is not None:
            first = value.group().split(" ")[0]
            if first in _FIELD_TITLES:
                return  # "Herr Dr. Müller": the next title's cue reads the name
            if first not in _LATIN_STOP:
                out.append(Finding(PERSON, value.start(), value.end(), 0.85))
                return
        kanji = _VALUE_KANJI.match(text, pos)
        if kanji is not None:
            out.append(Finding(PERSON, kanji.start(), kanji.end(), 0.75))

    def _ours(self, text: str, pos: int, out: list[Finding]) -> None:
        value = _VALUE_KANJI.match(text, pos)
        if value is None:
            return
        span = self._kanji_name(value.group(), allow_unknown=False)
        if span is not None and span[0] == 0:
            out.append(Finding(PERSON, pos, pos + span[1], span[2]))

    def _self_introduction(self, text: str, cue: int, out: list[Finding]) -> None:
        match = _SELF_NAME.search(text, max(0, cue - 10), cue)
        if match is None:
            return
        span = self._kanji_name(match.group(1), allow_unknown=False)
        if span is not None and span[0] == 0:
            out.append(Finding(PERSON, match.start(1), match.start(1) + span[1], span[2]))

    def _slash(self, text: str, slash: int, out: list[Finding]) -> None:
        left = _UPPER_RUN_BEFORE.search(text, max(0, slash - 20), slash)
        right = _UPPER_RUN_AFTER.match(text, slash + 1)
        if left is None or right is None:
            return
        if left.start() > 0 and text[left.start() - 1].isalnum():
            return
        surname, given = left.group(1), right.group()
        if surname in _SLASH_STOP or given in _SLASH_STOP:
            return
        if surname not in self._roman and given not in self._roman:
            context = text[max(0, left.start() - 80) : left.start()].lower()
            if not any(w in context for w in _ROMAJI_CONTEXT):
                return
        end = right.end()
        for title in ("MSTR", "MISS", "MRS", "MR", "MS"):
            if given.endswith(title) and len(given) > len(title) + 1 and given not in self._roman:
                end -= len(title)
                break
        out.append(Finding(PERSON, left.start(1), end, 0.9))
