"""Context words: the label a person writes before a value says what the value is.

The nearest context word before a candidate wins (``電話: 03-… マイナンバー: 1234…`` gives each
number its own label). Negative words (order, invoice, version, ...) lower a score, because a
valid-looking number next to them is usually a business reference, not personal data.
"""

from __future__ import annotations

from sekisho.classify._trie import trie_regex

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

_WORDS: dict[str, tuple[str, ...]] = {
    RESIDENCE: ("在留カード", "在留", "特別永住者証明書", "Residence Card", "Residence card",
                "residence card", "Residence", "residence"),
    MYNUMBER: ("個人番号カード", "マイナンバーカード", "マイナンバー", "個人番号", "My Number",
               "My number", "my number", "MyNumber", "MY NUMBER", "MYNUMBER",
               # the keys of code, data and URLs: my_number=, "myNumber":, kojin_bango:
               "mynumber", "my_number", "myNumber", "MY_NUMBER", "my-number", "kojin_bango",
               "kojinBango", "KOJIN_BANGO"),
    CORPORATE: ("法人番号", "登録番号", "適格請求書", "インボイス", "Corporate Number",
                "Corporate number", "corporate number", "Registration No", "registration no"),
    PASSPORT: ("旅券", "パスポート", "Passport", "passport", "PASSPORT"),
    LICENSE: ("運転免許", "免許証", "免許", "Driver's License", "Driver's license",
              "driver's license", "Driver License", "Driving Licence", "driving licence",
              "License", "license", "Licence", "licence"),
    HEALTH: ("保険者番号", "被保険者", "保険証", "健康保険", "Health Insurance", "Health insurance",
             "health insurance", "Insurer", "insurer"),
    YUCHO: ("ゆうちょ", "記号"),
    BANK: ("口座", "普通預金", "当座", "普通", "預金", "振込", "支店", "Bank Account",
           "Bank account", "bank account", "Account No", "Account no", "account no", "Account",
           "account", "Acct", "acct", "A/C"),
    CARD: ("クレジットカード", "クレジット", "カード", "Credit Card", "Credit card", "credit card",
           "Card", "card", "CARD", "VISA", "Visa", "JCB", "MasterCard", "Mastercard", "AMEX",
           "Amex", "決済", "Paid with", "paid with", "Charged to", "charged to", "Pay with",
           "pay with"),
    PHONE: ("電話", "携帯", "TEL", "Tel", "tel", "FAX", "Fax", "fax", "Phone", "phone", "PHONE",
            "Mobile", "mobile", "連絡先", "☎", "℡", "内線", "折り返し", "折返し",
            "Telefon", "Mobil", "Handy", "Rufnummer", "Portable"),
    POSTAL: ("〒", "郵便番号", "Postal", "postal", "ZIP", "Zip", "zip", "Post Code", "Post code",
             "post code", "Postcode", "postcode"),
    VERSION: ("バージョン", "ビルド", "Version", "version", "Ver.", "ver.", "Build", "build",
              "リリース", "Release", "release", "サブネット", "ネットマスク", "Netmask", "netmask",
              "Subnet", "subnet", "Mask", "mask"),
    NEGATIVE: ("注文", "受注", "発注", "伝票", "請求書番号", "見積", "管理番号", "問い合わせ番号",
               "問合せ番号", "問い合せ番号", "お問合せ番号", "受付番号", "整理番号", "お客様番号",
               "顧客番号", "契約番号", "従業員番号", "申込番号", "予約番号", "取引番号", "案件番号",
               "部品番号", "会員番号", "製造番号", "シリアル", "型番", "品番", "商品", "社員番号",
               "送り状番号", "追跡番号", "証券番号", "お届け番号", "配送番号", "決済番号", "JAN",
               "EAN", "ISBN", "バーコード", "請求書", "請求番号", "会員", "取引", "ポイントカード",
               "コード", "学生証", "学籍番号", "受験番号", "社員証",
               "Order", "order", "ORDER", "Invoice", "invoice", "Tracking", "tracking", "Serial",
               "serial", "Ticket", "ticket", "Transaction", "transaction", "Reference", "reference",
               "Ref.", "ref.", "SKU",
               "Part No", "Part no", "part no", "Quantity", "quantity", "金額", "¥", "￥", "円"),
}  # fmt: skip

_KIND: dict[str, str] = {}
for _kind, _words in _WORDS.items():
    for _word in _words:
        _KIND.setdefault(_word, _kind)  # a word listed twice keeps its first, more specific kind
# Two tries of literals, one of ASCII words and one of Japanese words (no word mixes both, so
# their matches never overlap and each side reads the same words it would in one trie). At a
# shared start the longest word wins (個人番号カード over 個人番号) and finditer moves past it,
# so カード inside 在留カード is not read again. Two small tries are much cheaper than one: the
# regex engine tries, at each character that can start a word, every first character of its
# trie in turn, and English prose has such a character at almost every position.
_ASCII_CONTEXT = trie_regex(w for w in _KIND if w.isascii())
_JP_CONTEXT = trie_regex(w for w in _KIND if not any(c.isascii() for c in w))
assert all(w.isascii() or not any(c.isascii() for c in w) for w in _KIND), "a word mixes scripts"

WINDOW = 28


def context_before(text: str, start: int, window: int = WINDOW) -> str | None:
    """The kind of the nearest context word in the ``window`` characters before ``start``."""
    before = text[max(0, start - window) : start]
    latin: list[str] = _ASCII_CONTEXT.findall(before)
    if before.isascii():
        return _KIND[latin[-1]] if latin else None
    japanese: list[str] = _JP_CONTEXT.findall(before)
    if not japanese:
        return _KIND[latin[-1]] if latin else None
    if not latin:
        return _japanese_kind(japanese)
    # Both kinds of word in the window (rare): the one that starts later is the nearer.
    last_latin = before.rfind(latin[-1])
    last_japanese = before.rfind(japanese[-1])
    return _KIND[latin[-1]] if last_latin > last_japanese else _japanese_kind(japanese)


def _japanese_kind(words: list[str]) -> str:
    """The kind of the last word; 記号 is ゆうちょ's unless a health insurance card's word
    stands before it (健康保険証 記号, 被保険者記号・番号)."""
    if words[-1] == "記号" and len(words) > 1 and _KIND[words[-2]] == HEALTH:
        return HEALTH
    return _KIND[words[-1]]
