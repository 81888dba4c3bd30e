"""Build the labelled evaluation set tests/classify/data/eval.jsonl (seeded, reproducible).

Most examples come from templates of realistic business text (emails, HR forms, invoices,
travel records, chat logs, configuration and code) filled with random identifiers: valid ones
(check digits computed) are labelled, invalid ones (wrong check digit, wrong length, wrong
issuer) appear unlabelled as hard negatives, next to order numbers, timestamps, versions,
UUIDs, hashes, public keys and placeholders. Names come from a pool that deliberately
includes names absent from the package's dictionaries, so recall is not measured on the
dictionary. Hand-written passages (handwritten.txt) add realistic prose.

Markup: ``⟦TYPE|value⟧`` marks a gold span (``⟦SECRET:subtype|value⟧`` for a subtype).
Run: ``python benchmarks/classify/make_eval_set.py`` (rewrites the JSONL).
"""

# ruff: noqa: E501  (template data: long lines read better unbroken)

from __future__ import annotations

import base64
import json
import random
import re
import string
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from sekisho.classify._validate import (  # noqa: E402
    corporate_check_digit,
    iban_check_digits,
    luhn_check_digit,
    my_number_check_digit,
)

OUT = ROOT / "tests" / "classify" / "data" / "eval.jsonl"
HANDWRITTEN = Path(__file__).with_name("handwritten.txt")
MARK = re.compile(r"⟦([A-Z_]+)(?::([a-z_]+))?\|(.*?)⟧", re.S)

FW = str.maketrans(string.digits + string.ascii_letters + "-@.", "０１２３４５６７８９" + "".join(chr(0xFF41 + i) for i in range(26)) + "".join(chr(0xFF21 + i) for i in range(26)) + "－＠．")  # fmt: skip
DASHES = ["-", "-", "-", "‐", "−", "ー", "－", "―", "–"]

SURNAMES_JA = [
    "佐藤",
    "鈴木",
    "高橋",
    "田中",
    "伊藤",
    "渡辺",
    "山本",
    "中村",
    "小林",
    "加藤",
    "吉田",
    "山田",
    "松本",
    "井上",
    "木村",
    "清水",
    "森",
    "池田",
    "橋本",
    "石川",
    "鬼塚",
    "東海林",
    "五月女",
    "十河",
    "栗山",
    "猪瀬",
    "桧山",
    "蓮見",
    "芦田",
    "雨宮",
]
GIVEN_JA = [
    "太郎",
    "花子",
    "健一",
    "美咲",
    "翔太",
    "陽子",
    "大輔",
    "由美",
    "直樹",
    "恵",
    "颯真",
    "蒼汰",
    "琉生",
    "紬",
    "澪",
    "凪",
    "一郎",
    "真由美",
    "拓也",
    "彩",
]
READ_SUR = {
    "佐藤": "サトウ",
    "鈴木": "スズキ",
    "高橋": "タカハシ",
    "田中": "タナカ",
    "山田": "ヤマダ",
    "鬼塚": "オニヅカ",
    "栗山": "クリヤマ",
    "雨宮": "アメミヤ",
    "森": "モリ",
    "木村": "キムラ",
}
READ_GIV = {
    "太郎": "タロウ",
    "花子": "ハナコ",
    "健一": "ケンイチ",
    "美咲": "ミサキ",
    "凪": "ナギ",
    "颯真": "ソウマ",
    "澪": "ミオ",
    "一郎": "イチロウ",
    "彩": "アヤ",
    "拓也": "タクヤ",
}
ROMAJI_SUR = [
    "YAMADA",
    "SATO",
    "SUZUKI",
    "TANAKA",
    "ONIZUKA",
    "KURIYAMA",
    "AMEMIYA",
    "ITO",
    "WATANABE",
    "HASEGAWA",
]
ROMAJI_GIV = [
    "TARO",
    "HANAKO",
    "KENICHI",
    "MISAKI",
    "NAGI",
    "SOMA",
    "MIO",
    "ICHIRO",
    "AYA",
    "TAKUYA",
]
GIVEN_EN = [
    "John",
    "Mary",
    "David",
    "Sarah",
    "Michael",
    "Emily",
    "James",
    "Laura",
    "Priya",
    "Siobhan",
    "Anders",
    "Olumide",
    "Wei",
    "Hiroshi",
    "Yuki",
    "Daniel",
    "Rachel",
]
SURNAMES_EN = [
    "Smith",
    "Johnson",
    "Brown",
    "Taylor",
    "Wilson",
    "Clarke",
    "Okafor",
    "Lindqvist",
    "Nakamura",
    "Chen",
    "Fernandes",
    "O'Brien",
    "Yamamoto",
    "Walsh",
    "Kowalski",
]
CITIES = [
    ("東京都", "千代田区", "丸の内"),
    ("東京都", "港区", "六本木"),
    ("東京都", "新宿区", "西新宿"),
    ("大阪府", "大阪市北区", "梅田"),
    ("神奈川県", "横浜市西区", "みなとみらい"),
    ("愛知県", "名古屋市中村区", "名駅"),
    ("福岡県", "福岡市博多区", "博多駅前"),
    ("北海道", "札幌市中央区", "北一条西"),
    ("京都府", "京都市下京区", "烏丸通"),
    ("埼玉県", "さいたま市大宮区", "桜木町"),
    ("千葉県", "千葉市美浜区", "中瀬"),
    ("兵庫県", "神戸市中央区", "三宮町"),
    ("宮城県", "仙台市青葉区", "一番町"),
    ("広島県", "広島市中区", "基町"),
    ("沖縄県", "那覇市", "おもろまち"),
]
BUILDINGS = ["丸の内ビル", "グランドタワー", "サンシャインマンション", "第一生命ビル", "メゾン桜"]
ROMAN = [("Marunouchi", "Chiyoda-ku", "Tokyo"), ("Roppongi", "Minato-ku", "Tokyo"),
         ("Umeda", "Kita-ku", "Osaka"), ("Nishi-shinjuku", "Shinjuku-ku", "Tokyo"),
         ("Hakataekimae", "Hakata-ku", "Fukuoka")]  # fmt: skip


class Gen:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def digits(self, n: int) -> str:
        return "".join(self.r.choice(string.digits) for _ in range(n))

    def style(self, value: str, *, allow_fw: bool = True) -> str:
        """Write a value the way real text does: full width now and then, odd dashes."""
        if "-" in value and self.r.random() < 0.35:
            dash = self.r.choice(DASHES)
            value = value.replace("-", dash)
        if allow_fw and self.r.random() < 0.25:
            value = value.translate(FW)
        return value

    # -- identifiers -------------------------------------------------------------------------
    def my_number(self, valid: bool = True) -> str:
        body = self.digits(11)
        check = my_number_check_digit(body)
        if not valid:
            check = (check + self.r.randint(1, 9)) % 10
        d = body + str(check)
        fmt = self.r.choice(["plain", "plain", "space", "dash"])
        if fmt == "space":
            d = f"{d[:4]} {d[4:8]} {d[8:]}"
        elif fmt == "dash":
            d = f"{d[:4]}-{d[4:8]}-{d[8:]}"
        return self.style(d)

    def corporate(self, valid: bool = True) -> str:
        body = str(self.r.randint(1, 9)) + self.digits(11)
        check = corporate_check_digit(body)
        if not valid:
            check = (check + self.r.randint(1, 8)) % 10
        d = str(check) + body
        if self.r.random() < 0.3:
            d = f"{d[0]}-{d[1:5]}-{d[5:9]}-{d[9:]}"
        return self.style(d)

    def phone(self) -> str:
        kind = self.r.choice(["mobile", "mobile", "tokyo", "osaka", "area3", "free", "ip", "intl",
                              "intl0", "plain"])  # fmt: skip
        if kind == "mobile":
            v = f"{self.r.choice(['090', '080', '070'])}-{self.digits(4)}-{self.digits(4)}"
        elif kind == "tokyo":
            v = f"03-{self.digits(4)}-{self.digits(4)}"
        elif kind == "osaka":
            v = f"(06){self.digits(4)}-{self.digits(4)}"
        elif kind == "area3":
            v = f"0{self.r.choice(['45', '52', '92', '11', '22'])}-{self.digits(3)}-{self.digits(4)}"
        elif kind == "free":
            v = f"0120-{self.digits(3)}-{self.digits(3)}"
        elif kind == "ip":
            v = f"050-{self.digits(4)}-{self.digits(4)}"
        elif kind == "intl":
            v = f"+81-{self.r.choice(['90', '80'])}-{self.digits(4)}-{self.digits(4)}"
        elif kind == "intl0":
            v = f"+81(0)3-{self.digits(4)}-{self.digits(4)}"
        else:
            v = f"{self.r.choice(['090', '080'])}{self.digits(8)}"
        return self.style(v)

    def bad_phone(self) -> str:
        return self.r.choice([f"090-{self.digits(4)}-{self.digits(3)}",
                              f"0120-{self.digits(2)}-{self.digits(3)}",
                              f"03-{self.digits(4)}-{self.digits(5)}"])  # fmt: skip

    def postal(self) -> str:
        return self.style(f"{self.digits(3)}-{self.digits(4)}")

    def card(self, valid: bool = True) -> str:
        issuer = self.r.choice(["4", "51", "55", "2221", "34", "37", "3530", "6011"])
        length = 15 if issuer in ("34", "37") else 16
        body = issuer + self.digits(length - len(issuer) - 1)
        check = luhn_check_digit(body)
        if not valid:
            check = (check + self.r.randint(1, 9)) % 10
        d = body + str(check)
        if length == 15:
            return f"{d[:4]} {d[4:10]} {d[10:]}" if self.r.random() < 0.6 else d
        sep = self.r.choice([" ", "-", ""])
        return self.style(sep.join(d[i : i + 4] for i in range(0, 16, 4)))

    def email(self) -> str:
        local = self.r.choice(["taro.yamada", "h.suzuki", "sales", "k-tanaka", "m_sato99",
                               "john.smith", "info", "priya.r"])  # fmt: skip
        domain = self.r.choice(["corp.co.jp", "example-bank.jp", "mail.kaisha.ne.jp",
                                "acme.com", "globex.io", "city.yokohama.lg.jp"])  # fmt: skip
        v = f"{local}@{domain}"
        return v.translate(FW) if self.r.random() < 0.15 else v

    def ip(self) -> str:
        if self.r.random() < 0.2:
            return self.r.choice(["2001:db8::8a2e:370:7334", "fe80::1ff:fe23:4567:890a",
                                  "2404:6800:4004:81b::200e"])  # fmt: skip
        return ".".join(str(self.r.randint(1, 254)) for _ in range(4))

    def iban(self, valid: bool = True) -> str:
        country, bban = self.r.choice([("DE", self.digits(18)), ("GB", "NWBK" + self.digits(14)),
                                       ("FR", self.digits(23))])  # fmt: skip
        check = iban_check_digits(country, bban)
        if not valid:
            check = f"{(int(check) + self.r.randint(1, 50)) % 97 + 2:02d}"
        v = country + check + bban
        if self.r.random() < 0.5:
            v = " ".join(v[i : i + 4] for i in range(0, len(v), 4))
        return v

    def passport(self) -> str:
        return self.r.choice(["TK", "TR", "TZ", "MZ", "TH"]) + self.digits(7)

    def residence(self) -> str:
        up = string.ascii_uppercase
        return (
            "".join(self.r.choice(up) for _ in range(2))
            + self.digits(8)
            + "".join(self.r.choice(up) for _ in range(2))
        )

    def health(self) -> str:
        body = self.r.choice(["06", "01", "31", "32", "63"]) + self.digits(5)
        return body + str(luhn_check_digit(body))

    def dob(self) -> str:
        y, m, d = self.r.randint(1950, 2005), self.r.randint(1, 12), self.r.randint(1, 28)
        kanji = "〇一二三四五六七八九"

        def kn(n: int) -> str:
            if n < 10:
                return kanji[n]
            return ("" if n < 20 else kanji[n // 10]) + "十" + (kanji[n % 10] if n % 10 else "")

        era, base = ("昭和", 1925) if y < 1989 else ("平成", 1988)
        ey = y - base
        return self.r.choice([
            f"{y}年{m}月{d}日", f"{y}/{m:02d}/{d:02d}", f"{era}{ey}年{m}月{d}日",
            f"{era}{kn(ey)}年{kn(m)}月{kn(d)}日", f"{'S' if era == '昭和' else 'H'}{ey}.{m}.{d}",
            f"{y}-{m:02d}-{d:02d}",
        ])  # fmt: skip

    def other_date(self) -> str:
        y, m, d = self.r.randint(2020, 2027), self.r.randint(1, 12), self.r.randint(1, 28)
        return self.r.choice(
            [
                f"{y}年{m}月{d}日",
                f"{y}/{m:02d}/{d:02d}",
                f"{y}-{m:02d}-{d:02d}T{self.r.randint(0, 23):02d}:30:00Z",
            ]
        )

    # -- names and addresses -----------------------------------------------------------------
    def jp_name(self, full: bool = True) -> tuple[str, str, str]:
        s, g = self.r.choice(SURNAMES_JA), self.r.choice(GIVEN_JA)
        sep = self.r.choice(["", " ", "　"])
        return (s + sep + g if full else s), s, g

    def en_name(self) -> str:
        return f"{self.r.choice(GIVEN_EN)} {self.r.choice(SURNAMES_EN)}"

    def address(self) -> str:
        pref, city, town = self.r.choice(CITIES)
        block = self.r.choice([
            f"{self.r.randint(1, 9)}-{self.r.randint(1, 30)}-{self.r.randint(1, 20)}",
            f"{self.r.randint(1, 5)}丁目{self.r.randint(1, 20)}番{self.r.randint(1, 15)}号",
            f"{self.r.randint(1, 9)}-{self.r.randint(1, 30)}",
        ])  # fmt: skip
        building = ""
        if self.r.random() < 0.4:
            building = (
                self.r.choice([" ", "　", ""])
                + self.r.choice(BUILDINGS)
                + str(self.r.randint(1, 30))
                + self.r.choice(["F", "階"])
            )
        elif self.r.random() < 0.2:
            building = f" {self.r.randint(101, 1205)}号室"
        head = pref + city if self.r.random() < 0.85 else city
        return self.style(head + town + block + building, allow_fw=False)

    def roman_address(self) -> str:
        town, ward, pref = self.r.choice(ROMAN)
        return f"{self.r.randint(1, 9)}-{self.r.randint(1, 20)}-{self.r.randint(1, 9)} {town}, {ward}, {pref}"

    # -- secrets -----------------------------------------------------------------------------
    def b64(self, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
        return "".join(self.r.choice(alphabet) for _ in range(n))

    def secret(self) -> tuple[str, str, str]:
        """(subtype, value, a line of text around ⟦⟧)."""
        kind = self.r.choice(["aws", "gh", "slack", "openai", "stripe", "jwt", "pem", "conn",
                              "password", "gcp", "bearer"])  # fmt: skip
        if kind == "aws":
            v = "AKIA" + self.b64(16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
            return "aws_access_key_id", v, "aws_access_key_id = {}"
        if kind == "gh":
            return "github_token", "ghp_" + self.b64(36), "export GITHUB_TOKEN={}"
        if kind == "slack":
            v = f"xoxb-{self.digits(12)}-{self.digits(13)}-{self.b64(24)}"
            return "slack_token", v, "SLACK_BOT_TOKEN: {}"
        if kind == "openai":
            return "openai_api_key", "sk-proj-" + self.b64(48), 'client = OpenAI(api_key="{}")'
        if kind == "stripe":
            return "stripe_secret_key", "sk_live_" + self.b64(24), "stripe.api_key = '{}'"
        if kind == "gcp":
            return (
                "gcp_api_key",
                "AIza" + self.b64(35, string.ascii_letters + string.digits + "_-"),
                "key={}",
            )
        if kind == "jwt":
            header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
            payload = (
                base64.urlsafe_b64encode(
                    json.dumps({"sub": self.digits(8), "iat": 1700000000}).encode()
                )
                .rstrip(b"=")
                .decode()
            )
            v = f"{header}.{payload}.{self.b64(43, string.ascii_letters + string.digits + '_-')}"
            return "jwt", v, "Authorization: Bearer {}"
        if kind == "pem":
            body = "\n".join(
                self.b64(64, string.ascii_letters + string.digits + "+/") for _ in range(4)
            )
            v = f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"
            return "private_key", v, "鍵はこちらです:\n{}\n"
        if kind == "conn":
            pw = self.b64(12) + "!"
            return (
                "connection_string_password",
                pw,
                "DATABASE_URL=postgres://app:{}@db.internal:5432/app",
            )
        if kind == "password":
            pw = self.b64(10) + self.r.choice(["#", "$", "%", "!"]) + self.digits(2)
            return (
                "password",
                pw,
                self.r.choice(["password: {}", "DB_PASSWORD={}", "パスワード：{}"]),
            )
        return "bearer_token", self.b64(40), "curl -H 'Authorization: Bearer {}'"


def templates(g: Gen) -> list[Callable[[], str]]:
    """Each template returns markup text for one example."""
    r = g.r

    def my_number() -> str:
        v = g.my_number()
        name, _, _ = g.jp_name()
        return r.choice([
            f"従業員情報\n氏名：⟦PERSON|{name}⟧\nマイナンバー：⟦MY_NUMBER|{v}⟧\n",
            f"扶養親族の個人番号は⟦MY_NUMBER|{v}⟧です。",
            f"My Number: ⟦MY_NUMBER|{v}⟧ (for year-end adjustment)",
            f"マイナンバーカード⟦MY_NUMBER|{v}⟧を確認しました。",
        ])  # fmt: skip

    def my_number_bad() -> str:
        return r.choice(
            [
                f"マイナンバー：{g.my_number(valid=False)}（誤記の可能性）",
                f"受注番号 {g.digits(12)} の件で連絡します。"
                if False
                else f"注文番号 {g.my_number(valid=False)} を発送しました。",
            ]
        )

    def corporate() -> str:
        v = g.corporate()
        return r.choice([
            f"適格請求書発行事業者 登録番号：T⟦CORPORATE_NUMBER|{v}⟧",
            f"法人番号 ⟦CORPORATE_NUMBER|{v}⟧ の取引先情報を更新してください。",
            f"Corporate Number: ⟦CORPORATE_NUMBER|{v}⟧",
        ])  # fmt: skip

    def corporate_bad() -> str:
        return f"登録番号：T{g.corporate(valid=False)}（要確認）"

    def phone() -> str:
        v = g.phone()
        name, _, _ = g.jp_name(full=False)
        return r.choice([
            f"お問い合わせは{name}まで。TEL：⟦PHONE_JP|{v}⟧",
            f"携帯⟦PHONE_JP|{v}⟧に折り返しお願いします。",
            f"Call me at ⟦PHONE_JP|{v}⟧ after 3pm.",
            f"電話番号\n⟦PHONE_JP|{v}⟧\n",
            f"連絡先：⟦PHONE_JP|{v}⟧（平日9時〜18時）",
        ])  # fmt: skip

    def phone_bad() -> str:
        return r.choice([
            f"注文番号 0{g.digits(9)} の配送状況",
            f"電話 {g.bad_phone()} は桁が足りません",
            f"伝票番号：0{g.digits(10)}",
            f"商品コード 090{g.digits(8)} 在庫あり",
        ])  # fmt: skip

    def postal_address() -> str:
        p, a = g.postal(), g.address()
        glue = r.choice(["", " ", "　"])
        return r.choice([
            f"〒⟦POSTAL_CODE_JP|{p}⟧{glue}⟦ADDRESS_JP|{a}⟧",
            f"郵便番号：⟦POSTAL_CODE_JP|{p}⟧\n住所：⟦ADDRESS_JP|{a}⟧",
            f"送付先：⟦ADDRESS_JP|{a}⟧までお願いします。",
            f"本社所在地 ⟦ADDRESS_JP|{a}⟧\n",
        ])  # fmt: skip

    def roman_address() -> str:
        return f"Ship to: ⟦ADDRESS_JP|{g.roman_address()}⟧ ⟦POSTAL_CODE_JP|{g.digits(3)}-{g.digits(4)}⟧"

    def postal_bad() -> str:
        return r.choice(
            [f"品番 {g.digits(3)}-{g.digits(4)} の在庫", f"型番：{g.digits(3)}-{g.digits(4)}"]
        )

    def email() -> str:
        v = g.email()
        return r.choice([
            f"メール：⟦EMAIL|{v}⟧",
            f"Please reply to ⟦EMAIL|{v}⟧ by Friday.",
            f"ご連絡は⟦EMAIL|{v}⟧へお願いします。",
            f"cc: ⟦EMAIL|{v}⟧",
        ])  # fmt: skip

    def email_bad() -> str:
        return r.choice(["例：user@example.com の形式で入力", "@channel 明日の会議について",
                         "price @ 3.5 USD", "twitter: @sekisho_dev"])  # fmt: skip

    def card() -> str:
        v = g.card()
        return r.choice([
            f"クレジットカード番号：⟦CREDIT_CARD|{v}⟧ 有効期限 12/27",
            f"Card number ⟦CREDIT_CARD|{v}⟧ was declined.",
            f"決済カード⟦CREDIT_CARD|{v}⟧で支払い済み",
        ])  # fmt: skip

    def card_bad() -> str:
        return r.choice([f"カード番号 {g.card(valid=False)} はエラーになりました",
                         f"注文番号 {g.digits(16)}", f"tracking {g.digits(4)} {g.digits(4)} {g.digits(4)} {g.digits(4)}"])  # fmt: skip

    def bank() -> str:
        acct = g.digits(7)
        return r.choice([
            f"振込先：みずほ銀行 丸の内支店 普通 ⟦BANK_ACCOUNT_JP|{acct}⟧",
            f"口座番号：⟦BANK_ACCOUNT_JP|{acct}⟧",
            f"ゆうちょ銀行 記号番号 ⟦BANK_ACCOUNT_JP|1{g.digits(4)}-{g.digits(8)}⟧",
            f"振込口座 ⟦BANK_ACCOUNT_JP|{g.digits(4)}-{g.digits(3)}-{acct}⟧",
            f"Bank account no. ⟦BANK_ACCOUNT_JP|{acct}⟧ (ordinary)",
        ])  # fmt: skip

    def bank_bad() -> str:
        return r.choice(
            [f"支店番号 {g.digits(3)} 銀行コード {g.digits(4)}", f"会員番号 {g.digits(7)}"]
        )

    def passport() -> str:
        v = g.passport()
        name = f"{r.choice(ROMAJI_SUR)}/{r.choice(ROMAJI_GIV)}"
        return r.choice([
            f"旅券番号：⟦PASSPORT_JP|{v}⟧",
            f"PASSENGER ⟦PERSON|{name}⟧ MR  PASSPORT ⟦PASSPORT_JP|{v}⟧",
            f"パスポート番号は⟦PASSPORT_JP|{v}⟧です。",
        ])  # fmt: skip

    def passport_bad() -> str:
        return f"型番 {g.passport()} の部品を発注"

    def licence_residence() -> str:
        return r.choice([
            f"運転免許証番号 第⟦DRIVER_LICENSE_JP|{g.digits(12)}⟧号",
            f"免許証番号：⟦DRIVER_LICENSE_JP|{g.digits(12)}⟧",
            f"在留カード番号 ⟦RESIDENCE_CARD_JP|{g.residence()}⟧ 在留期限 2027年3月31日",
            f"Residence card ⟦RESIDENCE_CARD_JP|{g.residence()}⟧",
        ])  # fmt: skip

    def health() -> str:
        return r.choice([f"保険者番号 ⟦HEALTH_INSURANCE_JP|{g.health()}⟧",
                         f"健康保険証の保険者番号：⟦HEALTH_INSURANCE_JP|{g.health()}⟧"])  # fmt: skip

    def ip() -> str:
        v = g.ip()
        return r.choice([f"接続元IP ⟦IP_ADDRESS|{v}⟧ からのアクセス", f"Failed login from ⟦IP_ADDRESS|{v}⟧",
                         f"server={v}".replace(v, f"⟦IP_ADDRESS|{v}⟧")])  # fmt: skip

    def ip_bad() -> str:
        v = f"{r.randint(1, 20)}.{r.randint(0, 9)}.{r.randint(0, 30)}.{r.randint(0, 9)}"
        return r.choice(
            [
                f"version {v} をリリース",
                f"バージョン{v}に更新",
                f"pip install pkg=={r.randint(1, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}",
            ]
        )

    def iban() -> str:
        return f"Beneficiary IBAN: ⟦IBAN|{g.iban()}⟧"

    def iban_bad() -> str:
        return f"IBAN {g.iban(valid=False)} rejected (checksum)"

    def dob() -> str:
        v = g.dob()
        return r.choice([
            f"生年月日：⟦DATE_OF_BIRTH|{v}⟧",
            f"⟦DATE_OF_BIRTH|{v}⟧生まれ",
            f"DOB: ⟦DATE_OF_BIRTH|{v}⟧",
            f"誕生日 ⟦DATE_OF_BIRTH|{v}⟧",
        ])  # fmt: skip

    def date_bad() -> str:
        return r.choice([f"納期：{g.other_date()}", f"有効期限 {g.other_date()}",
                         f"ts={g.other_date()} level=INFO", f"発行日 {g.other_date()}"])  # fmt: skip

    def person_jp() -> str:
        name, s, giv = g.jp_name()
        honor = r.choice(["様", "さん", "氏", "殿"])
        reading = ""
        if s in READ_SUR and giv in READ_GIV and r.random() < 0.4:
            reading = f"（⟦PERSON|{READ_SUR[s]} {READ_GIV[giv]}⟧）"
        return r.choice([
            f"⟦PERSON|{name}⟧{honor}\nいつもお世話になっております。",
            f"営業部の⟦PERSON|{s}⟧{honor}にご確認ください。",
            f"氏名：⟦PERSON|{name}⟧{reading}",
            f"弊社の⟦PERSON|{s}⟧よりご連絡いたします。" if s in ("佐藤", "鈴木", "高橋", "田中", "山田", "中村") else f"担当：⟦PERSON|{name}⟧",
            f"⟦PERSON|{s}⟧部長の承認が必要です。" if s in ("佐藤", "鈴木", "高橋", "田中", "山田") else f"⟦PERSON|{s}⟧さんの資料",
        ])  # fmt: skip

    def person_en() -> str:
        name = g.en_name()
        first, last = name.split(" ", 1)
        return r.choice([
            f"Dear ⟦PERSON|{first}⟧,\nThank you for your email.",
            f"Please contact Mr. ⟦PERSON|{last}⟧ in accounting.",
            f"Name: ⟦PERSON|{name}⟧",
            f"Ms. ⟦PERSON|{name}⟧ will join the call.",
            f"From: ⟦PERSON|{name}⟧ <{first.lower()}@globex.io>".replace(f"<{first.lower()}@globex.io>", f"<⟦EMAIL|{first.lower()}@globex.io⟧>"),
        ])  # fmt: skip

    def person_bad() -> str:
        return r.choice(["お客様各位", "皆様へのお知らせ", "仕様書を同様に更新しました。",
                         "株式会社田中製作所との契約", "The Company Name field is required.",
                         "AND/OR condition", "To be confirmed", "Dear Sir or Madam,"])  # fmt: skip

    def secret() -> str:
        subtype, value, line = g.secret()
        return line.replace("{}", f"⟦SECRET:{subtype}|{value}⟧")

    def secret_bad() -> str:
        return r.choice([
            "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
            "OPENAI_API_KEY=sk-xxxxxxxxxxxxxxxxxxxxxxxx",
            "password: ${DB_PASSWORD}",
            f"sha256: {g.b64(64, '0123456789abcdef')}",
            f"request_id={g.b64(8, '0123456789abcdef')}-{g.b64(4, '0123456789abcdef')}-4{g.b64(3, '0123456789abcdef')}-a{g.b64(3, '0123456789abcdef')}-{g.b64(12, '0123456789abcdef')}",
            "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1L7VLPHCgcBIjANBgkq\n-----END PUBLIC KEY-----",
            "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBa\n-----END CERTIFICATE-----",
            "Authorization: Bearer <YOUR_TOKEN>",
            f"commit {g.b64(40, '0123456789abcdef')}",
        ])  # fmt: skip

    def label() -> str:
        v = r.choice(["【社外秘】", "【極秘】", "取扱注意", "関係者外秘", "CONFIDENTIAL", "【部外秘】",
                      "INTERNAL USE ONLY", "STRICTLY CONFIDENTIAL", "社内限り"])  # fmt: skip
        return r.choice(
            [
                f"⟦CONFIDENTIAL_LABEL|{v}⟧\n2025年度 事業計画（案）",
                f"{r.choice(['件名：', 'Subject: '])}⟦CONFIDENTIAL_LABEL|{v}⟧ 組織変更について",
            ]
        )

    def label_bad() -> str:
        return r.choice(
            [
                "秘密保持契約（NDA）の締結について",
                "機密性の高い情報の取り扱い方針を議論",
                "confidential information should be handled carefully",
            ]
        )

    def mixed() -> str:
        name, _, _ = g.jp_name()
        return (
            f"⟦CONFIDENTIAL_LABEL|【社外秘】⟧\n氏名：⟦PERSON|{name}⟧\n"
            f"電話：⟦PHONE_JP|{g.phone()}⟧\nメール：⟦EMAIL|{g.email()}⟧\n"
            f"住所：〒⟦POSTAL_CODE_JP|{g.postal()}⟧ ⟦ADDRESS_JP|{g.address()}⟧\n"
            f"生年月日：⟦DATE_OF_BIRTH|{g.dob()}⟧\n注文番号：{g.digits(10)}\n"
        )

    weighted = [
        (my_number, 3), (my_number_bad, 2), (corporate, 3), (corporate_bad, 1), (phone, 4),
        (phone_bad, 2), (postal_address, 4), (roman_address, 1), (postal_bad, 1), (email, 3),
        (email_bad, 1), (card, 3), (card_bad, 2), (bank, 3), (bank_bad, 1), (passport, 2),
        (passport_bad, 1), (licence_residence, 2), (health, 1), (ip, 2), (ip_bad, 2), (iban, 1),
        (iban_bad, 1), (dob, 3), (date_bad, 2), (person_jp, 5), (person_en, 4), (person_bad, 2),
        (secret, 5), (secret_bad, 3), (label, 2), (label_bad, 1), (mixed, 2),
    ]  # fmt: skip
    return [f for f, w in weighted for _ in range(w)]


def parse(markup: str) -> tuple[str, list[dict[str, object]]]:
    text_parts: list[str] = []
    spans: list[dict[str, object]] = []
    pos = 0
    length = 0
    for m in MARK.finditer(markup):
        before = markup[pos : m.start()]
        text_parts.append(before)
        length += len(before)
        value = m.group(3)
        item: dict[str, object] = {"start": length, "end": length + len(value), "type": m.group(1)}
        if m.group(2):
            item["subtype"] = m.group(2)
        spans.append(item)
        text_parts.append(value)
        length += len(value)
        pos = m.end()
    text_parts.append(markup[pos:])
    return "".join(text_parts), spans


def main() -> None:
    g = Gen(20261127)
    pool = templates(g)
    rows: list[str] = []
    examples = [g.r.choice(pool)() for _ in range(560)]
    handwritten = HANDWRITTEN.read_text("utf-8").split("\n=====\n")
    examples += [h.strip("\n") for h in handwritten if h.strip()]
    for i, markup in enumerate(examples):
        text, spans = parse(markup)
        assert "⟦" not in text and "⟧" not in text, markup
        rows.append(
            json.dumps({"id": f"e{i:04d}", "text": text, "findings": spans}, ensure_ascii=False)
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(rows) + "\n", "utf-8")
    print(f"wrote {len(rows)} examples to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
