"""Whole business documents as Japanese and English offices write them (履歴書,
カルテ, 顧客対応メモ, 稟議書, 請求書, 社員名簿, 本人確認書類, an HR e-mail, a support
ticket), each with every finding it must give and no other: the misses and false positives
of an audit of the detectors on such texts (a Kyoto address cut at 二条, a birth year before
生まれ, a department read as a name, a heading row read as names, invoice numbers read as My
Numbers) stay fixed."""

from __future__ import annotations

import pytest

from sekisho.classify import scan

DOCUMENTS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "rirekisho": (
        """履　歴　書
ふりがな　やまだ　はなこ
氏名　山田 花子
生年月日　昭和６０年４月３日生（満４１歳）
現住所　〒６０４－８１５１
京都府京都市中京区烏丸通二条下ル二条殿町５５２番地　烏丸マンション３０２号室
電話　０７５ー２１２ー３４５６
携帯　０９０ー１２３４ー５６７８
E-mail　hanako.yamada@example.co.jp
平成15年3月　京都市立二条中学校　卒業
平成18年4月　株式会社京都製作所　入社
""",
        [
            ("PERSON", "やまだ\u3000はなこ"),
            ("PERSON", "山田 花子"),
            ("DATE_OF_BIRTH", "昭和６０年４月３日"),
            ("POSTAL_CODE_JP", "６０４－８１５１"),
            (
                "ADDRESS_JP",
                "京都府京都市中京区烏丸通二条下ル二条殿町５５２番地\u3000烏丸マンション３０２号室",
            ),
            ("PHONE_JP", "０７５ー２１２ー３４５６"),
            ("PHONE_JP", "０９０ー１２３４ー５６７８"),
            ("EMAIL", "hanako.yamada@example.co.jp"),
        ],
    ),
    "karte": (
        """診療記録
患者氏名：佐藤 一郎（サトウ イチロウ）
生年月日：S55.7.21
保険者番号：06130012
住所：東京都世田谷区三軒茶屋2丁目11番22号 サンハイツ三茶405号室
主訴：2026年11月20日より頭痛。血圧142/88。処方：ロキソプロフェン60mg 3錠 分3 7日分
次回予約：令和8年12月4日 10:30
""",
        [
            ("PERSON", "佐藤 一郎"),
            ("PERSON", "サトウ イチロウ"),
            ("DATE_OF_BIRTH", "S55.7.21"),
            ("HEALTH_INSURANCE_JP", "06130012"),
            ("ADDRESS_JP", "東京都世田谷区三軒茶屋2丁目11番22号 サンハイツ三茶405号室"),
        ],
    ),
    "memo": (
        """顧客対応メモ（2026/11/25 14:05）
お客様：鈴木様（会員番号 1234567890）より電話。注文番号 202611250001 の商品が届かないとのこと。
折り返し先：03-5555-1234（平日9:00-18:00）
配送伝票番号：4912-3456-7890
対応者：営業部 高橋
""",
        [
            ("PERSON", "鈴木"),
            ("PHONE_JP", "03-5555-1234"),
            ("PERSON", "高橋"),
        ],
    ),
    "ringi": (
        """稟議書
件名：サーバー更新（見積番号 Q-2026-0412）
金額：1,234,567円（税込）
支払先：株式会社テクノ・ソリューション　登録番号：T7700001205000
振込先：三菱UFJ銀行　丸の内支店（店番001）　普通　口座番号1234567
起案者：総務部 伊藤 健太
起案日：令和8年11月28日
""",
        [
            ("CORPORATE_NUMBER", "7700001205000"),
            ("BANK_ACCOUNT_JP", "1234567"),
            ("PERSON", "伊藤 健太"),
        ],
    ),
    "invoice": (
        """請求書
請求書番号：INV-2026-11-0042
発行日：2026年11月28日　お支払期限：2026年12月31日
ご請求金額　￥330,000-
品番 AB-1234-5678　数量 10　単価 ￥30,000
〒530-0001 大阪府大阪市北区梅田1丁目2番3号 梅田センタービル12階
TEL 06-1234-5678 FAX 06-1234-5679
振込先：みずほ銀行 渋谷支店 普通 7654321
ゆうちょ銀行　記号 10120 番号 12345671
""",
        [
            ("POSTAL_CODE_JP", "530-0001"),
            ("ADDRESS_JP", "大阪府大阪市北区梅田1丁目2番3号 梅田センタービル12階"),
            ("PHONE_JP", "06-1234-5678"),
            ("PHONE_JP", "06-1234-5679"),
            ("BANK_ACCOUNT_JP", "7654321"),
            ("BANK_ACCOUNT_JP", "12345671"),
        ],
    ),
    "roster": (
        """社員名簿
No.  氏名        所属      内線   携帯
001  渡辺 健一   営業一課  2101   090-1111-2222
002  小林 由美   経理課    2202   080-3333-4444
""",
        [
            ("PERSON", "渡辺 健一"),
            ("PHONE_JP", "090-1111-2222"),
            ("PERSON", "小林 由美"),
            ("PHONE_JP", "080-3333-4444"),
        ],
    ),
    "roster_csv": (
        """社員番号,氏名,フリガナ,生年月日,入社日,内線,携帯,メール
1001,田中 太郎,タナカ タロウ,1988/05/14,2012/04/01,1234,080-1111-2222,taro.tanaka@corp.example.jp
1002,雨宮 凛,アメミヤ リン,平成4年11月30日,2015/04/01,2345,070-3333-4444,rin.amemiya@corp.example.jp
""",
        [
            ("PERSON", "田中 太郎"),
            ("PERSON", "タナカ タロウ"),
            ("DATE_OF_BIRTH", "1988/05/14"),
            ("PHONE_JP", "080-1111-2222"),
            ("EMAIL", "taro.tanaka@corp.example.jp"),
            ("PERSON", "雨宮 凛"),
            ("PERSON", "アメミヤ リン"),
            ("DATE_OF_BIRTH", "平成4年11月30日"),
            ("PHONE_JP", "070-3333-4444"),
            ("EMAIL", "rin.amemiya@corp.example.jp"),
        ],
    ),
    "ids": (
        """本人確認書類
マイナンバー：1234 5678 9018
個人番号　９８７６－５４３２－１０９３
旅券番号：TK1234567　有効期限：2031年5月10日
運転免許証番号：第123456789012号
在留カード番号：AB12345678CD
健康保険証　記号：12345678　番号：9876
""",
        [
            ("MY_NUMBER", "1234 5678 9018"),
            ("MY_NUMBER", "９８７６－５４３２－１０９３"),
            ("PASSPORT_JP", "TK1234567"),
            ("DRIVER_LICENSE_JP", "123456789012"),
            ("RESIDENCE_CARD_JP", "AB12345678CD"),
            ("HEALTH_INSURANCE_JP", "12345678"),
        ],
    ),
    "hr_email": (
        """Subject: Payroll change for employee #20417
Hi Emily,
Please update the bank details for Hiroshi Yamamoto: Mizuho Bank, Shinjuku branch
(branch code 220), ordinary account No. 1234567. His My Number: 2718 2818 2840.
His date of birth is July 4, 1987. New address: 4-5-6 Jingumae, Shibuya-ku, Tokyo 150-0001.
Regards,
Yuki Tanaka
""",
        [
            ("PERSON", "Emily"),
            ("PERSON", "Hiroshi Yamamoto"),
            ("BANK_ACCOUNT_JP", "1234567"),
            ("MY_NUMBER", "2718 2818 2840"),
            ("DATE_OF_BIRTH", "July 4, 1987"),
            ("ADDRESS_JP", "4-5-6 Jingumae, Shibuya-ku, Tokyo"),
            ("POSTAL_CODE_JP", "150-0001"),
            ("PERSON", "Yuki Tanaka"),
        ],
    ),
    "ticket": (
        """Ticket SUP-88412 | Priority P2 | Opened 2026-11-28 09:41 JST
Customer: Ms. Akiko Suzuki (akiko.suzuki@example.ne.jp)
Issue: Unable to log in since firmware 3.2.1. Error 0x80070005. Order ID 112233445566.
Phone: 06-6123-4567 ext. 201
Transaction ID: 1234 5678 9018 (charged ¥12,800 at 14:05)
request id 7f3c9a2e-1b4d-4c8e-9f00-123456789abc
""",
        [
            ("PERSON", "Akiko Suzuki"),
            ("EMAIL", "akiko.suzuki@example.ne.jp"),
            ("PHONE_JP", "06-6123-4567"),
        ],
    ),
    "negatives": (
        """会議は１０：３０～１２：００、会議室は本社ビル５階です。価格は１２，８００円（税抜）。
注文番号 123456789018 の件、請求書No.2026112800123 を送付済み。
商品コード 4901234567894、ロット番号 0312-3456-78、部品番号 100-0001。
バージョン 10.0.19045.3693、ビルド 20261126。
誕生日会は2026年12月5日、2024年生まれの新製品を紹介します。
""",
        [],
    ),
}


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_a_business_document_gives_exactly_its_personal_data(name: str) -> None:
    text, expected = DOCUMENTS[name]
    assert [(f.type, text[f.start : f.end]) for f in scan(text)] == expected
