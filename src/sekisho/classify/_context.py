"""Context words: the label a person writes before a value says what the value is.

The nearest context word before a candidate wins (``電話: 03-… マイナンバー: 1234…`` gives each
number its own label). Negative words (order, invoice, version, ...) lower a score, because a
valid-looking number next to them is usually a business reference, not personal data.
"""

from __future__ import annotations

from sekisho.classify._lazy import lazy_compile

MYNUMBER = "mynumber"
CORPORATE = "corporate"
PHONE = "phone"
POSTAL = "postal"
CARD = "card"
BANK = "bank"
YUCHO = "yucho"
PASSPORT = "passport"
LICENSE = "license"
RESIDENCE = "residence"
HEALTH = "health"
NEGATIVE = "negative"
VERSION = "version"

_WORDS: dict[str, str] = {
    RESIDENCE: r"在留カード|在留|特別永住者証明書|[Rr]esidence [Cc]ard|[Rr]esidence",
    MYNUMBER: r"個人番号カード|マイナンバーカード|マイナンバー|個人番号|[Mm]y ?[Nn]umber|"
    r"MY ?NUMBER",
    CORPORATE: r"法人番号|登録番号|適格請求書|インボイス|[Cc]orporate [Nn]umber|"
    r"[Rr]egistration [Nn]o",
    PASSPORT: r"旅券|パスポート|[Pp]assport|PASSPORT",
    LICENSE: r"運転免許|免許証|免許|[Dd]river'?s? [Ll]icen[cs]e|[Ll]icen[cs]e",
    HEALTH: r"保険者番号|被保険者|保険証|健康保険|[Hh]ealth [Ii]nsurance|[Ii]nsurer",
    YUCHO: r"ゆうちょ|記号",
    BANK: r"口座|普通預金|当座|普通|預金|振込|支店|[Bb]ank [Aa]ccount|[Aa]ccount [Nn]o|[Aa]ccount|"
    r"[Aa]cct|A/C",
    CARD: r"クレジットカード|クレジット|カード|[Cc]redit [Cc]ard|[Cc]ard|CARD|VISA|Visa|JCB|"
    r"Master[Cc]ard|AMEX|Amex",
    PHONE: r"電話|携帯|TEL|Tel|tel|FAX|Fax|fax|[Pp]hone|PHONE|[Mm]obile|連絡先|☎|℡|内線",
    POSTAL: r"〒|郵便番号|[Pp]ostal|ZIP|[Zz]ip|[Pp]ost [Cc]ode",
    VERSION: r"バージョン|[Vv]ersion|[Vv]er\.|[Bb]uild|リリース|[Rr]elease",
    NEGATIVE: r"注文|受注|発注|伝票|請求書番号|見積|管理番号|問い?合わ?せ番号|受付番号|整理番号|"
    r"会員番号|製造番号|シリアル|型番|品番|商品|社員番号|[Oo]rder|ORDER|[Ii]nvoice|[Tt]racking|"
    r"[Ss]erial|[Tt]icket|[Rr]eference|[Rr]ef\.|SKU|[Pp]art [Nn]o|[Qq]uantity|金額|¥|￥|円",
}

_CONTEXT = lazy_compile("|".join(f"(?P<{name}>{words})" for name, words in _WORDS.items()))

WINDOW = 28


def context_before(text: str, start: int, window: int = WINDOW) -> str | None:
    """The kind of the nearest context word in the ``window`` characters before ``start``."""
    kind: str | None = None
    for match in _CONTEXT.finditer(text, max(0, start - window), start):
        kind = match.lastgroup
    return kind


def context_after(text: str, end: int, window: int = 8) -> str | None:
    """The kind of a context word right after a value (``090-…（携帯）``)."""
    match = _CONTEXT.search(text, end, min(len(text), end + window))
    return match.lastgroup if match else None
