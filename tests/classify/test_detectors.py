"""Each detector finds what real Japanese and English business text contains, with exact spans."""

from __future__ import annotations

import itertools

import pytest

from sekisho.classify import CustomRule, Finding, Scanner, redact, scan


def found(text: str, scanner: Scanner | None = None) -> list[tuple[str, str]]:
    findings = (scanner or Scanner()).scan(text)
    return [(f.type, text[f.start : f.end]) for f in findings]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("マイナンバーは１２３４５６７８９０１８です", ("MY_NUMBER", "１２３４５６７８９０１８")),
        ("個人番号: 1234 5678 9018", ("MY_NUMBER", "1234 5678 9018")),
        ("個人番号（/ 1234 5678 9018）", ("MY_NUMBER", "1234 5678 9018")),  # prose marks outside
        ("登録番号 T7000012050002", ("CORPORATE_NUMBER", "7000012050002")),
        ("法人番号：7-0000-1205-0002", ("CORPORATE_NUMBER", "7-0000-1205-0002")),
        ("電話:090-1234-5678", ("PHONE_JP", "090-1234-5678")),
        ("携帯０９０ー１２３４ー５６７８まで", ("PHONE_JP", "０９０ー１２３４ー５６７８")),
        ("TEL +81(0)3-1234-5678", ("PHONE_JP", "+81(0)3-1234-5678")),
        ("フリーダイヤル 0120-123-456", ("PHONE_JP", "0120-123-456")),
        ("TEL 0120-12-34 56", ("PHONE_JP", "0120-12-34 56")),  # date-and-hour shaped, yet a phone
        ("〒1000001東京都", ("POSTAL_CODE_JP", "1000001")),
        ("郵便番号 100-0001", ("POSTAL_CODE_JP", "100-0001")),
        ("受付 2024/01/05 090-1234-5678 から", ("PHONE_JP", "090-1234-5678")),
        ("旅券番号 TK1234567", ("PASSPORT_JP", "TK1234567")),
        ("在留カード番号 AB12345678CD", ("RESIDENCE_CARD_JP", "AB12345678CD")),
        ("運転免許証 第123456789012号", ("DRIVER_LICENSE_JP", "123456789012")),
        ("保険者番号 06139015", ("HEALTH_INSURANCE_JP", "06139015")),
        ("普通預金 口座番号 1234567", ("BANK_ACCOUNT_JP", "1234567")),
        ("ゆうちょ 記号番号 12345-12345671", ("BANK_ACCOUNT_JP", "12345-12345671")),
        ("card 4111 1111 1111 1111 exp", ("CREDIT_CARD", "4111 1111 1111 1111")),
        ("server at 192.168.10.20 now", ("IP_ADDRESS", "192.168.10.20")),
        ("v6 2001:db8::8a2e:370:7334 ok", ("IP_ADDRESS", "2001:db8::8a2e:370:7334")),
        ("IBAN DE89 3704 0044 0532 0130 00", ("IBAN", "DE89 3704 0044 0532 0130 00")),
        # Two digits, then letters: runs this short reach the detector only after two capitals.
        ("IBAN GB82 WEST 1234 5698 7654 32 です", ("IBAN", "GB82 WEST 1234 5698 7654 32")),
        ("振込先 NL91ABNA0417164300", ("IBAN", "NL91ABNA0417164300")),
        (
            "ｔａｒｏ＠ｅｘａｍｐｌｅ．ｃｏ．ｊｐへ",
            ("EMAIL", "ｔａｒｏ＠ｅｘａｍｐｌｅ．ｃｏ．ｊｐ"),
        ),
        ("生年月日：平成元年1月8日", ("DATE_OF_BIRTH", "平成元年1月8日")),
        ("昭和六十年四月十二日生まれ", ("DATE_OF_BIRTH", "昭和六十年四月十二日")),
        ("【社外秘】本資料は", ("CONFIDENTIAL_LABEL", "【社外秘】")),
        ("山田太郎様", ("PERSON", "山田太郎")),
        ("YAMADA/TARO MR", ("PERSON", "YAMADA/TARO")),
        # Romanised, surname first (the Japanese order), with no cue around it.
        ("the account of customer Tanaka Taro.", ("PERSON", "Tanaka Taro")),
        ("Customer: TANAKA Taro", ("PERSON", "TANAKA Taro")),
        ("Suzuki Hanako called about her loan", ("PERSON", "Suzuki Hanako")),
        (
            "住所：東京都千代田区丸の内1-2-3 丸の内ビル5F",
            ("ADDRESS_JP", "東京都千代田区丸の内1-2-3 丸の内ビル5F"),
        ),
        (
            "Office: 1-2-3 Marunouchi, Chiyoda-ku, Tokyo",
            ("ADDRESS_JP", "1-2-3 Marunouchi, Chiyoda-ku, Tokyo"),
        ),
    ],
)
def test_detector_reports_the_value_exactly_as_written(
    text: str, expected: tuple[str, str]
) -> None:
    assert expected in found(text)


@pytest.mark.parametrize(
    "text",
    [
        "マイナンバー 123456789012",  # wrong check digit
        "注文番号 1234-5678-9012",
        "card 4111 1111 1111 1112",  # Luhn fails
        "version 1.2.3.4 released",
        "2024-01-05 10:30:00 job finished",
        "id 550e8400-e29b-41d4-a716-446655440000",
        "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "AWS docs use AKIAIOSFODNN7EXAMPLE as the example key",
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOC\n-----END PUBLIC KEY-----",
        "お客様各位、仕様書を同様にご確認ください。",
        "納期：2024年4月12日",
        "account 1234-5678 opened 2024-06-11, app v2.14.3, signed 12/04/1985",
        "ticket opened 2024-06-11 08:42, order 2024-00731, ref 240915-03",
        # Surname-first needs both words to be romanised Japanese names from the dictionaries.
        "Suzuki Motor results",
        "the Young Adam screening",
    ],
)
def test_look_alikes_are_not_reported(text: str) -> None:
    assert found(text) == []


def test_secret_spans_cover_only_the_credential() -> None:
    text = "DATABASE_URL=postgres://app:s3cr3tPa55@db.internal:5432/app"
    assert found(text) == [("SECRET", "s3cr3tPa55")]
    assert scan(text)[0].subtype == "connection_string_password"


AZURE_SECRET = "wXy1Q~abcdefghijklmnopqrstuvwxyz01234"


@pytest.mark.parametrize(
    ("text", "value", "subtype"),
    [
        (
            "db=mysql+pymysql://app:Pa55w0rd!@db.internal/x",
            "Pa55w0rd!",
            "connection_string_password",
        ),
        ("rk_live_abcdefghijklmnop1234", "rk_live_abcdefghijklmnop1234", "stripe_secret_key"),
        (f"client secret {AZURE_SECRET}", AZURE_SECRET, "azure_client_secret"),
        ("PASSWORD=Tr0ub4dor&3", "Tr0ub4dor&3", "password"),
        ("パスワード：hunter2hunter2", "hunter2hunter2", "password"),
    ],
)
def test_secret_is_found_whatever_its_pattern_starts_with(
    text: str, value: str, subtype: str
) -> None:
    findings = scan(text)
    assert [(text[f.start : f.end], f.subtype) for f in findings] == [(value, subtype)]


def test_a_secret_prefix_inside_a_word_is_not_a_secret() -> None:
    assert found("mask_live_abcdefghijklmnop1234 xsk-proj-abcdefghijklmnopqrstuvwx12") == []


def test_private_key_block_is_one_span_including_begin_and_end() -> None:
    block = "-----BEGIN RSA PRIVATE KEY-----\n" + "MIIEow" * 20 + "\n-----END RSA PRIVATE KEY-----"
    assert found(f"key:\n{block}\n") == [("SECRET", block)]


def test_custom_terms_match_whatever_width_and_case_they_are_written_in() -> None:
    rule = CustomRule("project-codenames", terms=["Project-Sakura", "さくら計画"])
    scanner = Scanner(custom=[rule])
    text = "ＰＲＯＪＥＣＴ－ＳＡＫＵＲＡ と project sakura? と さくら計画"
    findings = scanner.scan(text)
    assert [(text[f.start : f.end], f.subtype) for f in findings] == [
        ("ＰＲＯＪＥＣＴ－ＳＡＫＵＲＡ", "project-codenames"),
        ("さくら計画", "project-codenames"),
    ]


def test_custom_terms_are_whole_words_when_they_start_or_end_with_a_letter() -> None:
    scanner = Scanner(custom=[CustomRule("codes", terms=["BLUEFIN", "極光計画", "X-1"])])
    text = "BLUEFINS, xbluefin, (ｂｌｕｅｆｉｎ), 新極光計画案, AX-1, x-1."
    assert [text[f.start : f.end] for f in scanner.scan(text)] == [
        "ｂｌｕｅｆｉｎ",
        "極光計画",
        "x-1",
    ]


def test_a_custom_term_with_a_backslash_matches_it_and_a_dash_term_does_not() -> None:
    # The dash class's source holds a backslash (escaping its hyphen); a term's own backslash
    # had been taken for a dash, so such a term never matched anything.
    scanner = Scanner(custom=[CustomRule("paths", terms=["share\\finance", "ab-cd"])])
    text = "share\\finance と ｓｈａｒｅ＼ｆｉｎａｎｃｅ と ab\\cd と ab－cd"
    assert [text[f.start : f.end] for f in scanner.scan(text)] == [
        "share\\finance",
        "ｓｈａｒｅ＼ｆｉｎａｎｃｅ",
        "ab－cd",
    ]


def test_custom_pattern_rule_reports_its_name_as_subtype() -> None:
    scanner = Scanner(custom=[CustomRule("customer-ids", pattern=r"CUST-[0-9]{6}")])
    assert scanner.scan("see CUST-004211") == [Finding("CUSTOM", 4, 15, 0.9, "customer-ids")]


def test_custom_rule_errors_say_what_to_fix() -> None:
    with pytest.raises(ValueError, match="exactly one of 'terms'"):
        CustomRule("x")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        CustomRule("x", pattern="(")
    with pytest.raises(ValueError, match="matches the empty string"):
        CustomRule("x", pattern="a*")


def test_tenant_labels_extend_the_confidentiality_markers() -> None:
    scanner = Scanner(labels=["取引先限り"])
    assert found("【取引先限り】の資料", scanner) == [("CONFIDENTIAL_LABEL", "【取引先限り】")]


def test_tenant_labels_are_found_even_when_they_share_no_word_with_the_built_in_ones() -> None:
    scanner = Scanner(labels=["社外持出厳禁", "PARTNER EYES ONLY"])
    assert found("【社外持出厳禁】 PARTNER EYES ONLY", scanner) == [
        ("CONFIDENTIAL_LABEL", "【社外持出厳禁】"),
        ("CONFIDENTIAL_LABEL", "PARTNER EYES ONLY"),
    ]


def test_types_filter_and_min_score() -> None:
    text = "山田太郎様 090-1234-5678"
    assert found(text, Scanner(types=["PHONE_JP"])) == [("PHONE_JP", "090-1234-5678")]
    assert found(text, Scanner(min_score=0.99)) == []
    with pytest.raises(ValueError, match="unknown finding type"):
        Scanner(types=["PHONE"])


def test_findings_are_sorted_and_do_not_overlap() -> None:
    text = "氏名 山田太郎様 〒100-0001 東京都千代田区千代田1-1 TEL 03-1234-5678 mail t@x.co.jp"
    findings = scan(text)
    assert findings == sorted(findings, key=lambda f: f.start)
    assert all(a.end <= b.start for a, b in itertools.pairwise(findings))


def test_normalised_text_maps_every_position_back_to_the_original() -> None:
    from sekisho.classify._text import Normalised

    original = "ＰＲＯＪＥＣＴ－Ｘ　ｶﾅ"
    folded = Normalised.of(original, drop_spaces=True)
    assert folded.text == "project-xカナ"
    start = folded.text.index("x")
    assert folded.original_span(start, start + 1) == (8, 9)
    assert original[slice(*folded.original_span(0, len(folded.text)))] == original


def test_asking_for_the_ner_detector_without_ginza_says_how_to_install_it() -> None:
    from sekisho.classify import ner

    if ner.available():
        pytest.skip("GiNZA is installed here; the error path cannot be exercised")
    with pytest.raises(RuntimeError, match="pip install ginza ja_ginza"):
        Scanner(ner=True)
    assert Scanner().scan("山田太郎様") == [Finding("PERSON", 0, 4, 0.9)]


def test_a_long_text_without_digits_still_has_its_kanji_numeral_birth_date() -> None:
    # Long texts without any digit skip the number pass; a birth date in kanji numerals
    # (written with 年) must still be read after an English cue.
    prose = "The quarterly review covered revenue growth and hiring plans. " * 10
    text = prose + "He was born 昭和六十年四月十二日 in Osaka."
    assert ("DATE_OF_BIRTH", "昭和六十年四月十二日") in found(text)


@pytest.mark.parametrize(
    "text",
    ["田中様に連絡済みです", "田中部長に確認します", "阿部様", "服部さんへ", "緒方様", "山中さん",
     "安達様", "本多さん", "田所様", "岡部部長"],
)  # fmt: skip
def test_a_surname_whose_last_kanji_is_also_a_words_is_a_name_before_an_honorific(
    text: str,
) -> None:
    """中, 部, 方, 達, 多 and 所 end words that stand before honorifics without being names
    (途中, 営業部長, 先方様, 友達): they used to stop 田中様, the fourth most common surname
    with an honorific, from being read as a name."""
    assert ("PERSON", text[:2]) in found(text)


@pytest.mark.parametrize(
    "text", ["お客様各位", "営業部長に確認", "皆さん", "先方様", "友達さん", "本部長", "御中"]
)
def test_words_before_an_honorific_that_are_not_names_stay_unread(text: str) -> None:
    assert [t for t, _ in found(text) if t == "PERSON"] == []


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("田中 様、お世話になっております。", "田中"),  # an ASCII space before the honorific
        ("株式会社ABC 経理部 田中 様", "田中"),
        ("佐藤 部長に確認します", "佐藤"),
        ("馬場 純子 様", "馬場 純子"),
        ("田中支店長", "田中"),  # bank and ministry titles
        ("渡辺審議官のご説明", "渡辺"),
        ("萩原様", "萩原"),  # not cut to 原 (a one-kanji surname)
        ("大林様", "大林"),  # not in the dictionary, and still not cut to 林
        ("経理課林様", "林"),  # after a department, the one-kanji surname alone
        ("口座名義：ﾔﾏﾀﾞ ﾀﾛｳ", "ﾔﾏﾀﾞ ﾀﾛｳ"),  # half-width katakana, as bank transfers write it
        ("ｽｽﾞｷ様", "ｽｽﾞｷ"),
        ("本日林様にお会いしました", "林"),  # a word of time before the name, no particle
        ("昨日森さんから電話", "森"),
        ("先程萩原様より", "萩原"),
    ],
)
def test_names_as_japanese_business_text_writes_them(text: str, name: str) -> None:
    """Found by an audit of a few thousand templated texts: each of these was missed."""
    assert ("PERSON", name) in found(text)


@pytest.mark.parametrize(
    "text",
    ["ご本人様確認書類", "代理人様", "ご依頼主様", "ユーザー様各位", "パートさん募集", "山田商事様",
     "千葉銀行様", "田中町様", "ご契約者様の住所", "お客 様", "皆 様", "金融庁様", "ご苦労様でした",
     "お世話様です", "ご馳走様でした", "旦那様", "お得意様", "八百屋さん", "本日様"],
)  # fmt: skip
def test_words_companies_and_places_before_an_honorific_are_not_names(text: str) -> None:
    assert [t for t, _ in found(text) if t == "PERSON"] == []


def test_a_barcode_or_an_order_number_is_not_a_card() -> None:
    """Thirteen digits from 4 are every Japanese JAN barcode (and a Visa of the 1990s): a card
    only where the text says card; after an order number's label, no card at all."""
    assert found("JANコード 4945061231009") == []
    assert found("4945061231009") == []
    assert found("注文番号 4945807302157365") == []
    assert ("CREDIT_CARD", "4222222222222") in found("カード番号 4222222222222")


def test_a_branch_and_account_number_after_its_label_is_an_account_not_a_postal_code() -> None:
    assert found("口座番号: 123-4567") == [("BANK_ACCOUNT_JP", "123-4567")]
    assert found("〒100-0005 東京都") == [("POSTAL_CODE_JP", "100-0005")]


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("口座名義人：ヤマダ タロウ", "ヤマダ タロウ"),  # the label's 人 was read as the name
        ("名義人：大島優子", "大島優子"),
        ("契約者名：小倉 智昭", "小倉 智昭"),
        ("患者名：佐藤花子", "佐藤花子"),
        ("振込依頼人：ﾔﾏﾀﾞ ﾀﾛｳ", "ﾔﾏﾀﾞ ﾀﾛｳ"),
    ],
)
def test_compound_name_labels_give_the_name_not_their_last_kanji(text: str, name: str) -> None:
    assert [v for t, v in found(text) if t == "PERSON"] == [name]


@pytest.mark.parametrize(
    "address",
    ["東京都千代田区霞が関3丁目1番1号", "東京都目黒区自由が丘1-2-3",
     "北海道札幌市中央区北1条西2丁目1番地", "北海道旭川市6条通9丁目46番地",
     "栃木県宇都宮市本町1-2-3", "宇都宮市本町1-2-3", "宮崎県都城市姫城町6-21"],
)  # fmt: skip
def test_addresses_with_ga_in_a_place_name_or_jo_blocks_are_whole(address: str) -> None:
    """霞が関 stopped the address at the ward; Sapporo's 条 blocks at the first number."""
    assert ("ADDRESS_JP", address) in found(f"住所：{address}")
    assert found("東京都港区が担当します") == [("ADDRESS_JP", "東京都港区")]  # が, a particle


def test_a_birth_date_written_with_spaces_around_its_numbers_is_found() -> None:
    text = "生年月日 和暦：昭和 60 年 4 月 1 日"
    assert ("DATE_OF_BIRTH", "昭和 60 年 4 月 1 日") in found(text)
    assert found("会議は 2024 年 4 月 1 日です") == []  # a date, not a birth date


@pytest.mark.parametrize("written", ["123-456-789-018", "123456-789018"])
def test_a_my_number_grouped_otherwise_is_found_where_the_text_says_my_number(
    written: str,
) -> None:
    assert ("MY_NUMBER", written) in found(f"マイナンバー:{written}")
    assert found(f"部品 {written}") == []  # without the cue: a part number, say


@pytest.mark.parametrize(
    "text", ["Please ask Tanaka-san about it", "Dear Tanaka-san,", "Hi Tanaka-san!"]
)
def test_a_romanised_name_with_san_is_the_name_without_the_honorific(text: str) -> None:
    assert [v for t, v in found(text) if t == "PERSON"] == ["Tanaka"]
    assert found("non-sanitised input, the pre-sample") == []


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("以上\n人事課 佐藤", ["佐藤"]),
        ("--\n株式会社サンプル\n営業部 加藤 大介", ["加藤 大介"]),
        ("出席者：田中、鈴木、佐藤", ["田中", "鈴木", "佐藤"]),
        ("営業部 会議\n明日", []),  # not a surname
        ("出席者：田中、会議室", ["田中"]),
    ],
)
def test_signature_lines_and_listed_names(text: str, names: list[str]) -> None:
    assert [v for t, v in found(text) if t == "PERSON"] == names


def test_github_fine_grained_and_classic_tokens_are_found_whole() -> None:
    fine_grained = "github_pat_11ABCDEFG0123456789abc_" + "A1b2C3d4E5" * 5 + "f6G7h8I9j"
    classic = "ghp_" + "a1B2c3D4e5" * 3 + "F6g7H8"
    text = f"GH_TOKEN={fine_grained} and {classic}"
    assert [(text[f.start : f.end], f.subtype) for f in scan(text)] == [
        (fine_grained, "github_token"),
        (classic, "github_token"),
    ]
    alone = f"token: {fine_grained}"  # no classic token beside it to open the gate
    assert [(f.start, f.subtype) for f in scan(alone)] == [(7, "github_token")]


JSON_KEY = (  # line breaks written as \n, as a key pasted into JSON or YAML has them
    "-----BEGIN EC PRIVATE KEY-----"
    "\\nMHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY/PuoAoGCCqGSM49"
)
KEY_LINES = "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\n" * 3 + "0Z3VS5"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (f"鍵:\n-----BEGIN RSA PRIVATE KEY-----\n{KEY_LINES}", None),
        (f"-----BEGIN RSA PRIVATE KEY-----\n{KEY_LINES}\n-----END CERTIFICATE-----\nthanks", None),
        (f"-----BEGIN PRIVATE KEY-----\n{KEY_LINES}\n\nThanks, see you.", None),
        (f'{{"key": "{JSON_KEY}\\n"}}', JSON_KEY),
    ],
)
def test_a_private_key_without_its_end_line_is_still_a_secret(text: str, key: str | None) -> None:
    # A key pasted in part leaks as much as a whole one: BEGIN through its key material.
    if key is None:
        begin = text.index("-----BEGIN")
        key = text[begin : text.index(KEY_LINES) + len(KEY_LINES)]
    assert [(f.subtype, text[f.start : f.end]) for f in scan(text)] == [("private_key", key)]


def test_a_begin_line_alone_is_no_secret() -> None:
    assert found("Keys start with -----BEGIN RSA PRIVATE KEY----- and end with an END line.") == []


@pytest.mark.parametrize(
    ("text", "card"),
    [
        ("Order paid with 4111 1111 1111 1111", "4111 1111 1111 1111"),
        ("ご注文の決済に 4111 1111 1111 1111 を使用しました", "4111 1111 1111 1111"),
        ("12,800円 4111-1111-1111-1111 で決済", "4111-1111-1111-1111"),
        ("Amount ¥12,800 charged to 5555 5555 5555 4444", "5555 5555 5555 4444"),
        ("ご注文金額 ¥9,800 3782 822463 10005", "3782 822463 10005"),
        ("Order 1234, paid with 4111111111111111", "4111111111111111"),
    ],
)
def test_a_card_after_an_order_or_amount_word_is_still_a_card(text: str, card: str) -> None:
    assert found(text) == [("CREDIT_CARD", card)]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('password = "correct horse battery staple"', "correct horse battery staple"),
        ("password=Pa55<w0rd>99", "Pa55<w0rd>99"),
        ("password=abc;def123", "abc;def123"),
        ("password: Pa,ss,w0rd99", "Pa,ss,w0rd99"),
        ('"password": "it\'sMyPa55"', "it'sMyPa55"),
        ("postgres://app:p@ssw0rd@db:5432/x", "p@ssw0rd"),
        ("https://api.example.jp/login?user=a&password=Sup3rS3cret&x=1", "Sup3rS3cret"),
        ("Server=db;Password=Secr3t;Trusted_Connection=False", "Secr3t"),
        ("パスワード：hunter2hunter2です", "hunter2hunter2"),
        ("(password=hunter22) をお使いください", "hunter22"),
        # Forms that were missed: a key that ends in password, an empty user, a value that
        # contains a placeholder word or starts with $ or %.
        ('{"dbPassword": "s3cr3tPass99"}', "s3cr3tPass99"),
        ("PGPASSWORD=s3cr3tPass99", "s3cr3tPass99"),
        ("redis://:Pa55word@cache:6379/0", "Pa55word"),
        ("password=Yourname2024!", "Yourname2024!"),
        ("password: Sample#Pass77", "Sample#Pass77"),
        ("password=$ecretPa55", "$ecretPa55"),
        ("password=%Pa55word", "%Pa55word"),
    ],
)
def test_a_password_span_is_the_whole_value_so_redaction_leaks_none_of_it(
    text: str, value: str
) -> None:
    assert [text[f.start : f.end] for f in scan(text) if f.type == "SECRET"] == [value]


@pytest.mark.parametrize(
    "text",
    [
        "password=<your-password>",
        "password=${DB_PASSWORD}",
        "DB_PASSWORD=$DB_PASSWORD",
        "password=%(password)s",
        "password={password}",
        "password: {{ .Values.db.password }}",
        "password=********",
        "password=YOUR_PASSWORD",
        "password=example",
        "password: xxxx",
        "password: [REDACTED]",
        "mysql://root:example@db/x",
        "compass: north, bypass=true",
        'password = os.environ["DB_PASSWORD"]',
        "password = os.getenv('DB_PASSWORD')",
        "password=get_secret()",
        "db_password = settings.vault.read(",
    ],
)
def test_a_password_placeholder_is_no_secret(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize("value", ["Pa55(w0rd)", "s3cr3t[1]", "Hunter2()x"])
def test_a_password_with_brackets_of_its_own_is_still_a_password(value: str) -> None:
    assert [t for t, _ in found(f"password={value}")] == ["SECRET"]


@pytest.mark.parametrize(
    ("text", "addresses"),
    [
        ("allow 203.0.113.5/32", ["203.0.113.5"]),
        ("subnet 192.168.1.0/24 の 192.168.1.10/24", ["192.168.1.0", "192.168.1.10"]),
        ("inet 172.16.5.4/16 brd 172.16.255.255", ["172.16.5.4", "172.16.255.255"]),
        ("10.0.0.0/8 2024-01-05 に追加", ["10.0.0.0"]),
        ("inet6 2001:db8::1/64", ["2001:db8::1"]),  # IPv6 alike: the address, not its prefix
    ],
)
def test_an_address_with_a_prefix_length_is_an_address_without_it(
    text: str, addresses: list[str]
) -> None:
    assert [v for t, v in found(text) if t == "IP_ADDRESS"] == addresses


def test_a_slash_after_a_version_or_a_netmask_is_no_address() -> None:
    assert found("v1.2.3.4/5, 255.255.255.0/24, 1.2.3.4/33, 2024/1.2.3.4") == []


@pytest.mark.parametrize(
    ("text", "emails"),
    [
        ("資料：https://x.jp 担当 hanako@corp.jp", ["hanako@corp.jp"]),
        ("see https://t.co/ab taro@corp.jp", ["taro@corp.jp"]),
        ("https://host/path?to=taro@corp.jp", ["taro@corp.jp"]),
        ("https://user@host.com/x", []),  # a URL's userinfo is not an address
        ("postgres://app:s3cr3tPa55@db.internal:5432/app", []),
    ],
)
def test_an_address_after_a_url_is_found_and_a_urls_userinfo_is_not_one(
    text: str, emails: list[str]
) -> None:
    assert [v for t, v in found(text) if t == "EMAIL"] == emails


@pytest.mark.parametrize(
    "text",
    [
        "arn:aws:iam::111122223333:role/Admin",
        "arn:aws:sns:ap-northeast-1:111122223333:alerts",
        '{"AccountId": "111122223333"}',
        "aws_account_id = 111122223333",
        '{"ts": 1712912345604}',
        "Date.now() returned 1712912345604",
        '{"createdAt": 1712912345604, "updated_at": 1712912345604}',
        "1712912345604",
    ],
)
def test_aws_account_ids_and_epoch_milliseconds_are_not_identity_numbers(text: str) -> None:
    # 111122223333 passes the My Number check digit, 1712912345604 the corporate number's.
    assert found(text) == []


def test_cued_my_numbers_and_corporate_numbers_that_look_like_them_are_still_found() -> None:
    assert found("マイナンバー 111122223333") == [("MY_NUMBER", "111122223333")]
    assert found("法人番号 1712912345604") == [("CORPORATE_NUMBER", "1712912345604")]
    assert found("登録番号 T1712912345604") == [("CORPORATE_NUMBER", "1712912345604")]
    assert found("法人番号 7000012050002") == [("CORPORATE_NUMBER", "7000012050002")]
    assert found("T7000012050002") == [("CORPORATE_NUMBER", "7000012050002")]


@pytest.mark.parametrize(
    "address",
    [
        "京都市中京区河原町1-2",  # 都 ended the walk back: 京都市 was left out
        "都留市上谷1-1-1",
        "京都府京都市中京区寺町通御池上る上本能寺前町488番地",  # Kyoto's 通…上る/下る/入る
        "京都市下京区烏丸通七条下る東塩小路町721-1",
        "京都市上京区烏丸通今出川上る西入ル相国寺門前町701番地",
        "札幌市中央区北1条西2丁目3-4",  # Sapporo without 北海道
        "東京都千代田区丸の内1-2-3",
    ],
)
def test_addresses_in_kyoto_street_form_or_with_to_in_the_city_are_whole(address: str) -> None:
    assert found(f"住所：{address}") == [("ADDRESS_JP", address)]


@pytest.mark.parametrize(
    "address",
    [
        "Tokyo-to Chiyoda-ku Marunouchi 1-2-3",
        "Osaka-shi Kita-ku Umeda 2-4-9",
        "Marunouchi 1-2-3, Chiyoda-ku, Tokyo",
        "1-2-3 Marunouchi, Chiyoda-ku, Tokyo",
    ],
)
def test_romanised_addresses_are_found_in_either_order(address: str) -> None:
    assert found(f"Ship to: {address}.") == [("ADDRESS_JP", address)]


@pytest.mark.parametrize(
    "address",
    [
        # Districts written with their direction: Nishi-Shinjuku, Kita-Aoyama, Higashi-Ikebukuro
        "2-21-1 Kita-Shinjuku, Shinjuku-ku, Tokyo",
        "Nishi-Shinjuku 2-8-1, Shinjuku-ku, Tokyo",
        "Tokyo-to Toshima-ku Higashi-Ikebukuro 3-1-1",
        # The floor and a building of several words before the block
        "3F Tokyo Building, 2-7-3 Marunouchi, Chiyoda-ku, Tokyo",
        "5F Shinjuku Front Tower, 2-21-1 Kita-Shinjuku, Shinjuku-ku, Tokyo",
        # A ward of a designated city: the city, then the prefecture
        "1-1-1 Minatomirai, Nishi-ku, Yokohama, Kanagawa",
        "1-1 Chuo, Aoba-ku, Sendai, Miyagi",
    ],
)
def test_romanised_addresses_in_english_documents_are_whole(address: str) -> None:
    text = f"registered office at {address} 100-0005, Japan"
    assert [v for t, v in found(text) if t == "ADDRESS_JP"] == [address]


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("We are located in Shibuya-ku, Tokyo.", "Shibuya-ku, Tokyo"),
        ("Nagoya-shi, Aichi 460-0001", "Nagoya-shi, Aichi"),
        ("Tokyo is a great city.", None),
        ("The Shinjuku Front Tower opened.", None),
    ],
)
def test_a_romanised_ward_and_prefecture_alone_are_an_address_as_in_japanese(
    text: str, address: str | None
) -> None:
    # 東京都渋谷区 alone is an address (0.6); so is Shibuya-ku, Tokyo.
    assert [v for t, v in found(text) if t == "ADDRESS_JP"] == ([address] if address else [])


@pytest.mark.parametrize(
    ("text", "postal"),
    [
        ("部品 100-0001 を5個", None),  # a part number, not a postal code
        ("型式 123-4567 の在庫", None),
        ("〒100-0001", "100-0001"),
        ("郵便番号 100-0001", "100-0001"),
        ("100-0001 東京都千代田区千代田1-1", "100-0001"),
        ("100-0001\n東京都千代田区千代田1-1", "100-0001"),
        ("100-0001 千代田区千代田1-1", "100-0001"),
        ("1-2-3 Shiba, Minato-ku, Tokyo 105-0011", "105-0011"),
    ],
)
def test_a_bare_postal_code_shape_needs_a_postal_cue_or_an_address_next_to_it(
    text: str, postal: str | None
) -> None:
    assert [v for t, v in found(text) if t == "POSTAL_CODE_JP"] == ([postal] if postal else [])


@pytest.mark.parametrize(
    ("text", "birth_date"),
    [
        ("2024年4月12日生成のレポート", None),
        ("2024年4月12日誕生の新サービス", None),  # a service is born too
        ("born 2024-04-12T10:00:00Z in the job log", None),  # a timestamp
        ("2024年4月12日誕生の長女", "2024年4月12日"),
        ("誕生日は4月12日です", "4月12日"),  # a month and day after 誕生日: a birth date
        ("お誕生日：4月12日", "4月12日"),
        ("誕生日は4月12日、入社日は2024年4月1日", "4月12日"),
        ("誕生日 1993年6月21日", "1993年6月21日"),
    ],
)
def test_only_birth_dates_are_dates_of_birth(text: str, birth_date: str | None) -> None:
    assert [v for t, v in found(text) if t == "DATE_OF_BIRTH"] == (
        [birth_date] if birth_date else []
    )


@pytest.mark.parametrize(
    ("text", "email"),
    [
        ("担当者は山田@例え.jpです", "山田@例え.jp"),  # internationalised (RFC 6531)
        ("宛先 taro@日本語ドメイン.jp へ", "taro@日本語ドメイン.jp"),
        ("to taro@xn--eckwd4c7c.xn--zckzah today", "taro@xn--eckwd4c7c.xn--zckzah"),
        ("contact o'brien@corp.ie", "o'brien@corp.ie"),  # ' is atext (RFC 5322)
        ("'taro@corp.jp'", "taro@corp.jp"),
        ("連絡先taro@corp.jpまで", "taro@corp.jp"),  # one script: the label stays outside
    ],
)
def test_internationalised_and_apostrophe_addresses_are_found_whole(text: str, email: str) -> None:
    assert [v for t, v in found(text) if t == "EMAIL"] == [email]


AZURE_KEY = (
    "pU3KGCUwux1tEyze1iN7LtkeP3IfyxlxF0SU1kk8nVw0YL4xIB5p/tqg7ui5mX9cfCmZ/a/lkyU81lSvTfrXFA=="
)
SLACK_APP = "xapp-1-A0123456789-1234567890123-abcdef0123456789abcdef0123456789"


@pytest.mark.parametrize(
    ("text", "value", "subtype"),
    [
        (f"AccountKey = {AZURE_KEY}", AZURE_KEY, "azure_storage_key"),
        (f'{{"accountKey": "{AZURE_KEY}"}}', AZURE_KEY, "azure_storage_key"),
        (
            f"AccountName=x;AccountKey={AZURE_KEY};EndpointSuffix=core",
            AZURE_KEY,
            "azure_storage_key",
        ),
        (
            "authorization: bearer 8f3kLm29xQpZ7vN4wR1tY6uB",
            "8f3kLm29xQpZ7vN4wR1tY6uB",
            "bearer_token",
        ),
        (
            "AUTHORIZATION: BEARER 8f3kLm29xQpZ7vN4wR1tY6uB",
            "8f3kLm29xQpZ7vN4wR1tY6uB",
            "bearer_token",
        ),
        (f"SLACK_APP_TOKEN={SLACK_APP}", SLACK_APP, "slack_token"),
    ],
)
def test_keys_and_tokens_in_their_other_written_forms_are_found(
    text: str, value: str, subtype: str
) -> None:
    assert [(text[f.start : f.end], f.subtype) for f in scan(text)] == [(value, subtype)]


def test_the_bearer_of_a_letter_is_no_token() -> None:
    assert found("the bearer of this-extraordinarily-long-hyphenated-word: ok") == []


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("TEL (+81) 90-1234-5678", "(+81) 90-1234-5678"),  # both brackets, not the closing one
        ("連絡先：（＋８１）９０－１２３４－５６７８", "（＋８１）９０－１２３４－５６７８"),
        ("(+81)3-1234-5678 まで", "(+81)3-1234-5678"),
        ("電話（+81 90-1234-5678）", "+81 90-1234-5678"),  # brackets of prose stay outside
    ],
)
def test_a_bracketed_country_code_is_inside_the_phone_span_with_both_brackets(
    text: str, phone: str
) -> None:
    assert found(text) == [("PHONE_JP", phone)]


@pytest.mark.parametrize(
    ("text", "birth_date"),
    [
        ("田中太郎は1985年4月3日に誕生した。", "1985年4月3日"),
        ("長女は2015年8月1日に誕生しました。", "2015年8月1日"),
        ("1985年4月3日に生まれた", "1985年4月3日"),
        ("昭和六十年四月三日に生まれる", "昭和六十年四月三日"),
        ("昭和60年4月3日生（満41歳）", "昭和60年4月3日"),
        ("平成2年生まれの山田です。", "平成2年"),  # a birth year is part of a birth date
        ("1990年生まれ、東京都出身。", "1990年"),
        ("昭和60年生（41歳）", "昭和60年"),
        ("昭和60年4月生まれ", "昭和60年4月"),
        ("父は昭和35年に生まれた。", "昭和35年"),
        ("4月3日生まれの方", "4月3日"),
        # not births: a grade at school, a product's launch, other dates
        ("小学3年生の長男", None),
        ("2年生まれ", None),  # no era and no four-digit year: not a year of birth
        ("新サービスは2024年4月に誕生した。", None),
        ("2024年4月12日に誕生した新サービス", None),
        ("2024年4月に生産を開始", None),
        ("2020年に生きる", None),
        ("誕生日会 2026年12月5日 18時から", None),  # a party, not a birth
        ("誕生日祝い：2026年12月5日", None),
        ("誕生日休暇 12月5日", None),
        ("誕生日：1985年12月5日", "1985年12月5日"),
        ("2024年生まれの新製品", None),  # a product is born too
        ("2024年4月3日生まれのブランド", None),
        ("平成2年生まれの社員", "平成2年"),
        # the other calendar's year in brackets, as forms write it
        ("1985年（昭和60年）4月1日生", "1985年（昭和60年）4月1日"),
        ("生年月日：昭和60年(1985年)4月1日", "昭和60年(1985年)4月1日"),
        ("生年月日：1985年（昭和60年）13月1日", None),
    ],
)
def test_birth_dates_before_a_birth_word_are_found_as_written(
    text: str, birth_date: str | None
) -> None:
    assert [v for t, v in found(text) if t == "DATE_OF_BIRTH"] == (
        [birth_date] if birth_date else []
    )


@pytest.mark.parametrize(
    "address",
    [
        "京都府京都市中京区烏丸通二条下ル二条殿町５５２番地　烏丸マンション３０２号室",
        "京都市中京区烏丸通御池上ル二条殿町552番地",  # a town whose name opens with 二条
        "京都府京都市中京区河原町通三条上ル恵比須町427番地 京都ビル5階",  # a street named …町
        "京都市上京区今出川通り寺町西入ル大原口町221",  # 通り, and a bare number after the town
        "京都市中京区寺町通四条上がる中之町565",  # 上がる
        "京都市東山区大和大路通四条下る四丁目小松町123",
        "京都市下京区烏丸通塩小路下ル東塩小路町721番地1",
        "京都市中京区三条通烏丸西入御倉町79番地",
    ],
)
def test_a_kyoto_address_is_whole_through_its_town_and_number(address: str) -> None:
    assert found(f"住所：{address}") == [("ADDRESS_JP", address)]


@pytest.mark.parametrize(
    ("text", "address"),
    [
        (
            "住所：京都府京都市中京区寺町通御池上る上本能寺前町",
            "京都府京都市中京区寺町通御池上る上本能寺前町",
        ),
        (
            "京都市中京区寺町通御池上る上本能寺前町にあります",
            "京都市中京区寺町通御池上る上本能寺前町",
        ),
        ("京都市下京区烏丸通七条下る東塩小路町", "京都市下京区烏丸通七条下る東塩小路町"),
    ],
)
def test_a_kyoto_address_without_a_number_runs_through_its_town(text: str, address: str) -> None:
    assert [v for t, v in found(text) if t == "ADDRESS_JP"] == [address]


@pytest.mark.parametrize(
    "text", ["平成15年3月 京都市立二条中学校 卒業", "京都市内の二条城を見学", "大阪市立一条小学校"]
)
def test_a_street_number_like_nijo_alone_is_no_block_of_an_address(text: str) -> None:
    assert [v for t, v in found(text) if t == "ADDRESS_JP"] == []


@pytest.mark.parametrize(
    "address",
    [
        "東京都港区六本木6-10-1 六本木ヒルズ森タワー 45階",  # two building words in one name
        "大阪市中央区本町2-3-4 本町ビル別館 8F",
        "東京都新宿区西新宿2-8-1 第一本庁舎 32階",  # a space before the floor
        "東京都中央区銀座4-6-16 銀座三越 7F",
        "愛知県名古屋市中村区名駅4丁目7-1 ミッドランドスクエア 12F",
        "大阪府大阪市北区梅田3丁目1番3号 ノースゲートビルディング 15階",
        "千葉県船橋市本町1丁目3番1号 船橋フェイスビル5階501号室",  # a floor, then a room
        "大阪府堺市北区中百舌鳥町2-104 なかもずマンション3-301",  # building 3, room 301
        "東京都練馬区光が丘２ー５ー１　光が丘パークタウン２５号棟１０１号室",
    ],
)
def test_a_building_and_its_floor_after_a_space_are_part_of_the_address(address: str) -> None:
    assert found(f"住所：{address}") == [("ADDRESS_JP", address)]


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("東京都港区1-2-3 山田ビル内の受付センターへ", "東京都港区1-2-3 山田ビル"),
        ("東京都港区1-2-3 山田ビルにお越しください。3階です", "東京都港区1-2-3 山田ビル"),
        ("東京都港区芝1-2-3 会議は10時から", "東京都港区芝1-2-3"),
        ("東京都港区芝1-2-3 山田ビル 2026年4月1日移転", "東京都港区芝1-2-3 山田ビル"),
    ],
)
def test_a_building_name_does_not_run_on_into_the_sentence_after_it(
    text: str, address: str
) -> None:
    assert [v for t, v in found(text) if t == "ADDRESS_JP"] == [address]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("健康保険証　記号：12345678　番号：9876", ("HEALTH_INSURANCE_JP", "12345678")),
        ("被保険者記号・番号 12345678・9876", ("HEALTH_INSURANCE_JP", "12345678")),
        ("被保険者証 記号 123456", ("HEALTH_INSURANCE_JP", "123456")),
        # ゆうちょ's 記号 stays a bank account, even after an insurance word further back
        ("保険料の振込先：ゆうちょ銀行 記号 10120 番号 12345671", ("BANK_ACCOUNT_JP", "12345671")),
        ("ゆうちょ銀行　記号：12345678", ("BANK_ACCOUNT_JP", "12345678")),
    ],
)
def test_the_symbol_of_a_health_insurance_card_is_no_bank_account(
    text: str, expected: tuple[str, str]
) -> None:
    assert found(text) == [expected]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("起案者：総務部 伊藤 健太", ["伊藤 健太"]),
        ("申請者：経理部　山本 翔太", ["山本 翔太"]),
        ("申請者：大阪支店 山本", ["山本"]),
        ("申請者：経理部", []),  # a department, no person
        ("申請者：阿部 翔太", ["阿部 翔太"]),  # 阿部 ends in 部 and is a surname
        # a company in a name field is no person (it was cut to its first five kanji)
        ("申請者：株式会社山田商事", []),
        ("契約者：山田商事株式会社", []),
        ("依頼人：有限会社佐藤工務店", []),
        ("名義：医療法人山田会", []),
        ("生産者：山田農園", []),
        ("出荷者：佐藤牧場", []),
    ],
)
def test_a_department_before_the_name_in_a_field_is_not_part_of_the_name(
    text: str, names: list[str]
) -> None:
    assert [v for t, v in found(text) if t == "PERSON"] == names


@pytest.mark.parametrize(
    "text",
    [
        "請求番号 123456789018",  # 123456789018 passes the My Number check digit
        "請求書No.2026112800123",  # passes the corporate number's
        "Transaction ID: 1234 5678 9018",
        "会員ID：123456789018",
        "取引ID 123456789018",
        "ポイントカード番号 1234 5678 9018",
        "お客様コード　０９０１２３４５６７８",
        "学生証番号 123456789018",
        "学籍番号：123456789018",
    ],
)
def test_business_references_that_pass_a_check_digit_are_not_identity_numbers(text: str) -> None:
    assert found(text) == []


def test_a_call_back_number_is_a_phone_number_even_after_an_order_word() -> None:
    text = "お客様から電話あり。注文の商品について。折り返し先：03-5555-1234"
    assert [(f.type, f.score) for f in Scanner().scan(text)] == [("PHONE_JP", 0.95)]


@pytest.mark.parametrize(
    "text", ['password = "0@0.AA"', "DB_PASSWORD='taro@example.jp'", 'パスワード："a.b@c.co"']
)
def test_a_quoted_password_that_looks_like_an_email_address_is_a_secret(text: str) -> None:
    assert [f.type for f in Scanner().scan(text)] == ["SECRET"]


@pytest.mark.parametrize(
    "text",
    [
        "No.  氏名        所属      内線   携帯",
        "氏名　　所属　　役職",
        "氏名 性別 年齢",
        "氏名\t生年月日\t住所",
        "申請者　　　　　承認者",
    ],
)
def test_the_column_headings_after_a_name_heading_are_no_names(text: str) -> None:
    assert [v for t, v in found(text) if t == "PERSON"] == []


@pytest.mark.parametrize(
    ("text", "reading"),
    [
        ("ふりがな　やまだ　はなこ", "やまだ　はなこ"),
        ("ふりがな：さとう いちろう\n氏名：佐藤 一郎", "さとう いちろう"),
        ("フリガナ　ヤマダ　ハナコ", "ヤマダ　ハナコ"),
    ],
)
def test_a_reading_written_in_hiragana_after_its_label_is_a_name(text: str, reading: str) -> None:
    assert reading in [v for t, v in found(text) if t == "PERSON"]


@pytest.mark.parametrize("text", ["フリガナをご記入ください", "ふりがなはひらがなで書いてください"])
def test_prose_about_a_reading_field_holds_no_name(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize("name", ["Jane Smith", "Priya Patel", "Mia Johnson"])
def test_a_common_english_given_name_and_surname_without_a_cue_are_a_name(name: str) -> None:
    assert found(f"Please set up {name} starting Dec 1.") == [("PERSON", name)]


@pytest.mark.parametrize("sep", [",", "\t"])
def test_the_birth_date_column_of_a_table_under_its_heading_is_found(sep: str) -> None:
    rows = [
        ["社員番号", "氏名", "生年月日", "入社日"],
        ["1001", "田中 太郎", "1988/05/14", "2012/04/01"],
        ["1002", "中村 美咲", "平成4年11月30日", "2015/04/01"],
        ["1003", "佐藤 健", "", "2016/04/01"],
    ]
    text = "\n".join(sep.join(row) for row in rows) + "\n\n入社日 2026/04/01 の研修"
    assert [v for t, v in found(text) if t == "DATE_OF_BIRTH"] == ["1988/05/14", "平成4年11月30日"]


def test_a_table_without_a_birth_date_heading_has_no_birth_dates() -> None:
    text = "社員番号,氏名,入社日\n1001,田中 太郎,1988/05/14\n"
    assert [v for t, v in found(text) if t == "DATE_OF_BIRTH"] == []


@pytest.mark.parametrize("sep", [",", "\t"])
def test_the_name_and_reading_columns_of_a_table_under_their_headings_are_names(sep: str) -> None:
    rows = [
        ["社員番号", "氏名", "フリガナ", "内線"],
        ["1001", "雨宮 凛", "アメミヤ リン", "2101"],
        ["1002", "東海林 翠", "ショウジ ミドリ", "2202"],
    ]
    text = "\n".join(sep.join(row) for row in rows)
    assert [v for t, v in found(text) if t == "PERSON"] == [
        "雨宮 凛",
        "アメミヤ リン",
        "東海林 翠",
        "ショウジ ミドリ",
    ]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("氏名：山田太郎　年齢：45歳　性別：男", ["山田太郎"]),  # the next field is no surname
        ("氏名 山田 太郎 所属 営業部", ["山田 太郎"]),
        ("Name\tDOB\tDept\nJohn Smith\t04/12/1985\tSales", ["John Smith"]),
    ],
)
def test_a_name_field_value_stops_before_the_next_field(text: str, names: list[str]) -> None:
    assert [v for t, v in found(text) if t == "PERSON"] == names


@pytest.mark.parametrize(
    "text",
    [
        "2026年度 新卒採用 平成15年生まれ対象",
        "1990年生まれ世代の社員は30名",
        "1990年生まれ以降の世代",
        "昭和60年生まれから平成2年生まれまで",
    ],
)
def test_a_year_of_birth_that_names_a_cohort_is_no_ones_birth_date(text: str) -> None:
    assert [v for t, v in found(text) if t == "DATE_OF_BIRTH"] == []


def test_a_phone_number_after_a_building_is_not_read_into_the_address() -> None:
    assert found("東京都港区芝1-2-3 山田ビル 03-1234-5678") == [
        ("ADDRESS_JP", "東京都港区芝1-2-3 山田ビル"),
        ("PHONE_JP", "03-1234-5678"),
    ]


@pytest.mark.parametrize(
    ("text", "subtype"),
    [
        ("【機密性3】本資料は", "機密性3"),
        ("［機密性３］本資料は", "機密性3"),
        ("機密性２情報です", "機密性2"),
        ("【社外秘】本資料は", None),
        ("CONFIDENTIAL", None),
    ],
)
def test_a_marker_naming_a_government_class_carries_it(text: str, subtype: str | None) -> None:
    from sekisho.classify import Scanner

    [label] = [f for f in Scanner().scan(text) if f.type == "CONFIDENTIAL_LABEL"]
    assert label.subtype == subtype


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Name: Hans Müller", "Hans Müller"),
        ("Name: José García", "José García"),
        ("Name: François Lefèvre", "François Lefèvre"),
        ("Name: Søren Kierkegaard", "Søren Kierkegaard"),
        ("Name: Łukasz Nowak", "Łukasz Nowak"),
        ("Name: Anne-Sophie Müller-Lüdenscheidt", "Anne-Sophie Müller-Lüdenscheidt"),
        ("Dear Dr. Schäfer, thanks", "Schäfer"),
        ("Ms. Agnès Dubois called", "Agnès Dubois"),
        ("Mr. Jürgen Weiß called", "Jürgen Weiß"),
        ("Dear Mr. Hans Müller, we", "Hans Müller"),
        ("Dear Zoë,", "Zoë"),
        ("Name: Ștefan Țurcanu", "Ștefan Țurcanu"),
    ],
)
def test_a_european_name_with_accented_letters_is_one_whole_name(text: str, name: str) -> None:
    """An EU subsidiary's text names Müller, García, Łukasz: a name cut at its first accented
    letter ("Jos" of José) left the rest of it in a redacted prompt."""
    assert [v for t, v in found(text) if t == "PERSON"] == [name]
    assert name.split(" ")[-1] not in redact(text, Scanner().scan(text))


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Sehr geehrter Herr Müller,", "Müller"),
        ("Herr Schmidt hat gestern angerufen", "Schmidt"),
        ("Sehr geehrte Frau Weber, vielen Dank", "Weber"),
        ("Bonjour Madame Lefèvre,", "Lefèvre"),
        ("Monsieur Jean Dupont a appelé", "Jean Dupont"),
        ("Mme Agnès Dubois", "Agnès Dubois"),
        ("Mme. Dubois", "Dubois"),
        ("Name: Herr Hans Müller", "Hans Müller"),
        ("Bitte Herrn José García zurückrufen.", "José García"),
        ("Kontakt: Herr Dr. Müller", "Müller"),  # the title after the title is no name
        ("Sehr geehrte Frau Prof. Dr. Weber,", "Weber"),
    ],
)
def test_a_name_after_a_german_or_french_title_is_a_name(text: str, name: str) -> None:
    """Herr, Frau, Monsieur, Madame, Mme are the titles an EU office's letters use, as Mr. and
    Ms. are in English ones."""
    assert [v for t, v in found(text) if t == "PERSON"] == [name]


@pytest.mark.parametrize("text", ["Die Frau am Schalter", "Herrlich!", "Frauen und Männer"])
def test_a_german_title_word_without_a_name_after_it_is_no_name(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(
    ("text", "date"),
    [
        ("Geburtsdatum: 12.04.1985", "12.04.1985"),
        ("Frau Weber, geb. 12.04.1985, wohnhaft in Berlin", "12.04.1985"),
        ("Er wurde geboren am 03.11.1979 in Köln.", "03.11.1979"),
        ("Date de naissance : 12/04/1985", "12/04/1985"),
        ("Mme Dubois, née le 12/04/1985", "12/04/1985"),
        ("M. Martin, né le 01/02/1970", "01/02/1970"),
    ],
)
def test_a_date_after_a_german_or_french_birth_cue_is_a_date_of_birth(text: str, date: str) -> None:
    assert ("DATE_OF_BIRTH", date) in found(text)


@pytest.mark.parametrize(
    "text",
    [
        "Lieferdatum: 12.04.2025",
        "Rechnung vom 12.04.2025, gebucht",
        "Date de livraison : 12/04/2025",
        "angeboren seit 01.01.2000",  # congenital: a cue inside another word is none
        "stubborn since 01.01.2000",
    ],
)
def test_a_date_after_no_birth_cue_in_german_or_french_is_no_date_of_birth(text: str) -> None:
    assert [t for t, _ in found(text) if t == "DATE_OF_BIRTH"] == []


@pytest.mark.parametrize(
    "number",
    [
        "+49 30 12345678",
        "+49 (0)30 1234 5678",
        "+49 151 23456789",
        "+4915123456789",
        "+33 1 42 68 53 00",
        "+33 6 12 34 56 78",
        "+44 20 7946 0958",
        "+1 212-555-0100",
        "+353 1 234 5678",
        "+39 06 1234 5678",
    ],
)
def test_a_phone_number_in_international_form_outside_japan_is_phone_intl(number: str) -> None:
    """An EU office writes its numbers +49 or +33: they went upstream unseen, PHONE_JP being
    Japan's numbering plan only."""
    assert found(f"Telefon: {number}") == [("PHONE_INTL", number)]
    assert found(f"Rückruf unter {number} bitte") == [("PHONE_INTL", number)]
    assert found("TEL +81 3-1234-5678") == [("PHONE_JP", "+81 3-1234-5678")]


@pytest.mark.parametrize(
    "text",
    [
        "Umsatz +1 200 000 EUR gegenüber Vorjahr",  # an amount with a sign, grouped by threes
        "Kurs +12 345 678",
        "+0 12 3456 7890",  # no country code starts with 0
        "+49 30",  # too short for a number
        "Version +1.2.3.4",
    ],
)
def test_a_signed_amount_or_a_short_run_after_a_plus_is_no_phone_number(text: str) -> None:
    assert [t for t, _ in found(text) if t.startswith("PHONE")] == []


SHARED_ACCESS_KEY = "Xk9pL2mN8qR4sT6uV1wY3zA5bC7dE0fG2hJ4kL6mN8o="


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("JWT_SECRET=9c1f0e8b7a6d5c4b3a29180f7e6d5c4b", "9c1f0e8b7a6d5c4b3a29180f7e6d5c4b"),
        ("SESSION_SECRET=kd83Jd92nLq0Zx7Vb4Mn", "kd83Jd92nLq0Zx7Vb4Mn"),
        ("export API_KEY='3f8a9c2e7b1d4f6a0e5c9b8d'", "3f8a9c2e7b1d4f6a0e5c9b8d"),
        ("SECRET_KEY=django-insecure-9x#k2$m@p!q7r&s*t", "django-insecure-9x#k2$m@p!q7r&s*t"),
        ("HF_TOKEN=hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ01234567", "hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ01234567"),
        (
            '  client_secret: "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"',
            "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",
        ),
        ('{"apiKey": "pk9Xq2LmN8pQ7rS6tU5vW4"}', "pk9Xq2LmN8pQ7rS6tU5vW4"),
        ('{"page": 2, "token": "tk9Xq2LmN8pQ7rS6tU5vW4"}', "tk9Xq2LmN8pQ7rS6tU5vW4"),
        ("access_token = 'ya29.a0AfH6SMBx3kq9Lm2Np8Qr'", "ya29.a0AfH6SMBx3kq9Lm2Np8Qr"),
        ("curl -H 'X-API-Key: 7f3k9Xz2TmW8pL5vR1yB' https://api", "7f3k9Xz2TmW8pL5vR1yB"),
        (
            "Ocp-Apim-Subscription-Key: 0a1b2c3d4e5f60718293a4b5c6d7e8f9",
            "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        ),
        (
            "Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=Root;"
            f"SharedAccessKey={SHARED_ACCESS_KEY}",
            SHARED_ACCESS_KEY,
        ),
        (
            f"HostName=acme.azure-devices.net;DeviceId=d1;SharedAccessKey={SHARED_ACCESS_KEY};x=1",
            SHARED_ACCESS_KEY,
        ),
    ],
)
def test_a_credential_under_a_secret_key_or_token_name_is_a_secret(text: str, value: str) -> None:
    # .env files, YAML, JSON and HTTP headers name their credentials *_SECRET, *_TOKEN,
    # *_API_KEY, X-API-Key, SharedAccessKey: the value is a secret whatever its own shape.
    assert found(text) == [("SECRET", value)]


@pytest.mark.parametrize(
    "text",
    [
        "TOKEN_EXPIRY=3600",
        "JWT_SECRET_EXPIRES_IN=7d",
        "API_KEY=your-api-key-here",
        "SECRET_KEY=${SECRET_KEY}",
        "GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}",
        "api_key = os.environ['API_KEY']",
        "token: string",
        "max_tokens=4096",
        "SharedAccessKeyName=RootManageSharedAccessKey",
        "STRIPE_PUBLISHABLE_KEY=pk_test_51MzQbKJH28d7fGhT0pLxYz9",
        '"nextPageToken": "CgwIARIICgYxMjM0NTY"',
        '"next_page_token": "eyJvZmZzZXQiOjEwMH0"',
        "continuation_token=AbC123dEf456gHi789",
        "api_key = settings.OPENAI_API_KEY_V2",
        "token: config.auth.slack_bot_token2",
        "access_key: AKIAIOSFODNN7EXAMPLE",
        "API_KEY=sample-key-1234567890",
        "TOP SECRET: the launch plan for 2025",
        "secret_key = get_random_secret_key()",
        "MAIL_PASSWORD=",
    ],
)
def test_a_secret_name_without_a_credential_is_no_secret(text: str) -> None:
    assert [value for type_, value in found(text) if type_ == "SECRET"] == []


@pytest.mark.parametrize(
    "text",
    [
        "Sakura Technologies Co., Ltd. signed the NDA.",
        "a contract with Akira Systems Corporation",
        "Hikari Networks Inc. and Kenji Holdings announced",
        "Emily Labs, Grace Foundation and Daniel Group",
        "the Beverly Hills office",
        "Mei Solutions K.K., Tokyo",
        "Kevin Brown Ltd",
        "Mark Suzuki Motor as a reference customer.",
        "Emma Watson Hotels opened in Kyoto.",
    ],
)
def test_a_company_named_like_a_person_is_no_person(text: str) -> None:
    # Companies of Japanese partners are often named after a given name (Sakura, Akira,
    # Hikari): the company word after it says it is a company.
    assert [v for t, v in found(text) if t == "PERSON"] == []


def test_a_person_beside_a_company_is_still_a_person() -> None:
    text = "Sarah Mitchell of Brightline Analytics Inc. met Ichiro Tanaka of Sakura Technologies."
    assert [v for t, v in found(text) if t == "PERSON"] == ["Sarah Mitchell", "Ichiro Tanaka"]


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("The report was prepared by Kenta Suzuki last week.", "Kenta Suzuki"),
        ("Please cc Ryosuke Hayashi and me.", "Ryosuke Hayashi"),
        ("Attendees: Yuta Kimura, Haruka Ueda", "Yuta Kimura"),
        ("Reviewer: Shohei Tanaka (QA)", "Shohei Tanaka"),
        ("Project lead Suzuki Kenta will reply.", "Suzuki Kenta"),
        ("Misaki Nakano joined the Osaka office.", "Misaki Nakano"),
    ],
)
def test_a_romanised_japanese_name_with_a_known_surname_is_found_whatever_its_given_name(
    text: str, name: str
) -> None:
    # The given-name dictionary cannot hold every Japanese given name (Kenta, Ryosuke,
    # Shohei); a known surname and a given name written in Hepburn romanisation beside it are
    # a name in either order.
    assert name in [v for t, v in found(text) if t == "PERSON"]


@pytest.mark.parametrize(
    "text",
    [
        "Yamada Denki opened a new store.",
        "We buy from Ito Yokado and Kato Sangyo.",
        "Tanaka Sensei will teach the class.",
        "The Osaka Tanaka branch",
        "Make Tanaka aware of it.",
        "Note Sato is out today.",
        "Chiba Bank and Suzuki Motor Corporation",
        "Honda Civic and Toyota Prius",
        "Tokyo Sato office",
    ],
)
def test_a_known_surname_beside_a_company_place_or_english_word_is_no_full_name(
    text: str,
) -> None:
    names = [v for t, v in found(text) if t == "PERSON"]
    assert all(" " not in v for v in names), names


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Customer: Michael O'Brien (michael@contoso.com)", "Michael O'Brien"),
        ("Escalated by Sean McDonald yesterday.", "Sean McDonald"),
        ("Signed, Anna Smith-Jones", "Anna Smith-Jones"),
        ("Attendees: Tom Harris, Priya Raman", "Tom Harris"),
        ("Tom Harris: Great, thanks.", "Tom Harris"),
        ("Please ask Mike Brown and Chris Evans.", "Mike Brown"),
        ("Please ask Mike Brown and Chris Evans.", "Chris Evans"),
        ("Reviewed by Steve Miller and Matt Jones", "Matt Jones"),
    ],
)
def test_english_names_with_short_given_names_or_prefixed_surnames_are_found(
    text: str, name: str
) -> None:
    assert name in [v for t, v in found(text) if t == "PERSON"]


@pytest.mark.parametrize(
    "text",
    ["Tom Ford Eyewear is a brand.", "Jun 2025 Report", "the Hanako Sato-san file"],
)
def test_short_given_names_keep_their_limits(text: str) -> None:
    names = [v for t, v in found(text) if t == "PERSON"]
    assert all("-" not in v and "Report" not in v and "Eyewear" not in v for v in names), names


@pytest.mark.parametrize(
    "text",
    [
        "Employee ID: E12345",
        "Employee No. 12345",
        "Employee Number: 00123",
        "Applicant ID: 12",
        "Patient ID: 12345",
        "Candidate No. 7",
        "See the Employee Handbook for details.",
        "Log in to the Patient Portal.",
        "Candidate Experience Survey",
        "Applicant Tracking System",
        "Employee Status: Active",
        "Passenger Name Record",
    ],
)
def test_a_person_noun_before_another_noun_is_no_name_field(text: str) -> None:
    # "Employee", "Patient", "Candidate" head a field only with its colon (Employee: …); before
    # another word they qualify it (Employee ID, Patient Portal), which is no name.
    assert [v for t, v in found(text) if t == "PERSON"] == []


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Employee: Priya Raman", "Priya Raman"),
        ("Patient: Hanako Sato", "Hanako Sato"),
        ("Candidate: Emily Watson", "Emily Watson"),
        ("Candidate Name: Kwame Mensah", "Kwame Mensah"),
        ("Passenger\tKWAME/MENSAH", "KWAME/MENSAH"),
    ],
)
def test_a_person_noun_with_its_colon_still_gives_the_name(text: str, name: str) -> None:
    assert [v for t, v in found(text) if t == "PERSON"] == [name]


@pytest.mark.parametrize(
    ("text", "date"),
    [
        ('{"name": "Taro", "dateOfBirth": "1985-04-03"}', "1985-04-03"),
        ('{"dob": "1985-04-03", "plan": "gold"}', "1985-04-03"),
        ("date_of_birth: 1985-04-03", "1985-04-03"),
        ("user.birth_date = '1985/04/03'", "1985/04/03"),
        ("BIRTH_DATE=1985-04-03", "1985-04-03"),
        ("<BirthDate>1985-04-03</BirthDate>", "1985-04-03"),
        ("customer.birthDate = LocalDate.of(1985, 4, 3); // 1985-04-03", None),
        ("Birthday: April 3", "April 3"),
        ("birthday: 3rd April", "3rd April"),
        ("Adobe 2024-04-03 release notes", None),
        ("Birthday party on April 3 at the office", None),
    ],
)
def test_birth_dates_under_the_keys_of_code_and_data_are_found(text: str, date: str | None) -> None:
    # JSON, YAML, XML and code name the field dateOfBirth, dob, birth_date, BirthDate; an
    # English birthday may have no year, as 誕生日は4月12日 has none.
    assert [v for t, v in found(text) if t == "DATE_OF_BIRTH"] == ([date] if date else [])


SENDGRID_KEY = "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"


@pytest.mark.parametrize(
    ("text", "value", "subtype"),
    [
        (f"sg = SendGridAPIClient('{SENDGRID_KEY}')", SENDGRID_KEY, "sendgrid_api_key"),
        (
            "git clone https://oauth2:glpat-Ab3dE5fG7hJ9kL1mN3pQ@gitlab.example.com/x.git",
            "glpat-Ab3dE5fG7hJ9kL1mN3pQ",
            "gitlab_token",
        ),
        (
            "//registry.npmjs.org/:_authToken npm_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5",
            "npm_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5",
            "npm_token",
        ),
        (
            "login(hf_aBcDeFgHiJkLmNoPqRsTuVwXyZaBcDeFgHi)",
            "hf_aBcDeFgHiJkLmNoPqRsTuVwXyZaBcDeFgHi",
            "huggingface_token",
        ),
        (
            "the OAuth client secret is 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",
            "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",
            "google_oauth_client_secret",
        ),
        (
            "stripe listen gave whsec_8f3kQ2mZ9pL1xV7bN4cR6tY0wE5uI2oA",
            "whsec_8f3kQ2mZ9pL1xV7bN4cR6tY0wE5uI2oA",
            "stripe_webhook_secret",
        ),
    ],
)
def test_tokens_of_known_services_are_secrets_wherever_they_stand(
    text: str, value: str, subtype: str
) -> None:
    findings = [f for f in scan(text) if f.type == "SECRET"]
    assert [(text[f.start : f.end], f.subtype) for f in findings] == [(value, subtype)]


@pytest.mark.parametrize(
    "text",
    [
        "SG.Nq3k9Xz2 is a release tag",
        "glpat-xxxxxxxxxxxxxxxxxxxx",
        "the hf_hub_download function",
        "npm_config_cache=/tmp/npm",
        "whsec_...",
    ],
)
def test_a_service_prefix_without_its_token_is_no_secret(text: str) -> None:
    assert [v for t, v in found(text) if t == "SECRET"] == []


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("Tel. +81.3.1234.5678", "+81.3.1234.5678"),
        ("Mobile: 090.1234.5678", "090.1234.5678"),
        ("Phone: 03.1234.5678 (office)", "03.1234.5678"),
        ("version 090.1234.5678 released", None),  # no phone word: dots are a version's
        ("Tel: 192.168.10.20", None),  # an address, not a phone
    ],
)
def test_a_phone_number_written_with_dots_is_one_after_its_phone_word(
    text: str, phone: str | None
) -> None:
    # Signatures written for foreign partners separate the groups with dots.
    assert [v for t, v in found(text) if t == "PHONE_JP"] == ([phone] if phone else [])


SAS_SIG = "AbCdEf0123456789AbCdEf0123456789AbCdEf01234%3D"
AMZ_SIG = "9f2c1e8b7a6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (
            "https://acme.blob.core.windows.net/c/f.pdf?sv=2022-11-02&ss=b&srt=o&sp=r"
            f"&se=2026-01-01T00:00:00Z&spr=https&sig={SAS_SIG}",
            SAS_SIG,
        ),
        (
            "https://b.s3.ap-northeast-1.amazonaws.com/k.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={AMZ_SIG}",
            AMZ_SIG,
        ),
        (
            f"https://storage.googleapis.com/b/o?X-Goog-Expires=900&X-Goog-Signature={AMZ_SIG}",
            AMZ_SIG,
        ),
    ],
)
def test_the_signature_of_a_signed_url_is_a_secret(text: str, value: str) -> None:
    # A pre-signed URL (Azure SAS, S3, GCS) grants access to whoever holds it until it expires.
    assert [(t, v) for t, v in found(text) if t == "SECRET"] == [("SECRET", value)]


def test_a_sig_word_without_a_signature_is_no_secret() -> None:
    assert [
        v
        for t, v in found("config: sig=true&debug=1, X-Amz-Signature=<signature>")
        if t == "SECRET"
    ] == []


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("YUKI MATSUMOTO\nSoftware Engineer", "YUKI MATSUMOTO"),
        ("Guest: YAMADA TARO MR", "YAMADA TARO"),
        ("Traveler YAMADA TARO, seat 32A", "YAMADA TARO"),
        ("Booking for SUZUKI KENTA", "SUZUKI KENTA"),
        ("Best regards,\nTARO YAMADA", "TARO YAMADA"),
    ],
)
def test_a_romanised_japanese_name_in_capitals_is_found(text: str, name: str) -> None:
    # Bookings, CV headings and signatures write romanised names in capitals.
    assert [v for t, v in found(text) if t == "PERSON"] == [name]


@pytest.mark.parametrize(
    "text",
    ["ITO EN green tea", "TOKYO SATO BUILDING", "KATO SANGYO CO., LTD.", "YAMADA SUZUKI", "ITOCHU"],
)
def test_capitals_beside_a_known_surname_that_are_no_given_name_are_no_name(text: str) -> None:
    assert [v for t, v in found(text) if t == "PERSON" and " " in v] == []


@pytest.mark.parametrize(
    ("text", "year"),
    [
        ("She was born in 1985 in Osaka.", "1985"),
        ("Born: 1985", "1985"),
        ("He was born in 1972.", "1972"),
        ("born in the 1980s", None),
        ("employees born in 1990 or later", None),
        ("people born in 1990s", None),
        ("born in 1990-1995", None),
        ("born in 3024", None),
        ("The idea was born in 2015 at a hackathon.", None),  # a thing is born too
        ("Our company was born in 2010 in Kyoto.", None),
    ],
)
def test_an_english_year_of_birth_is_a_birth_date_as_in_japanese(
    text: str, year: str | None
) -> None:
    # 1985年生まれ gives 1985年; born in 1985 gives 1985. A cohort is no one's birth date.
    assert [v for t, v in found(text) if t == "DATE_OF_BIRTH"] == ([year] if year else [])
