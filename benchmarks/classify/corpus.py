"""Deterministic benchmark text: clean mixed Japanese/English business prose, and PII-dense
text (the labelled evaluation set). Shared by bench.py and the Presidio runner."""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EVAL = ROOT / "tests" / "classify" / "data" / "eval.jsonl"
PROMPT_BYTES = 4096

JA = [
    "本日の会議では、来期の事業計画について議論しました。",
    "担当部署から提案された内容を確認し、次回までに資料を修正することになりました。",
    "売上は前年比で増加していますが、原価率の改善が引き続き課題です。",
    "新しい勤怠管理システムは来月から全社で利用を開始します。",
    "ご不明な点がございましたら、お気軽にお問い合わせください。",
    "お世話になっております。先日の打ち合わせの件でご連絡いたしました。",
    "添付の資料をご確認のうえ、修正点があればご指摘ください。",
    "品質保証部門によるレビューは今週中に完了する見込みです。",
    "クラウド移行に伴い、既存のバッチ処理を段階的に停止します。",
    "研修の参加者は各部署から二名ずつ選出してください。",
    "この件については、関係部署と調整のうえ改めてご報告します。",
    "障害の原因はネットワーク機器の設定誤りであることが判明しました。",
    "顧客満足度調査の結果、サポート対応の評価が向上しました。",
    "来週の出張に向けて、移動手段と宿泊先を手配しています。",
]
EN = [
    "The quarterly review covered revenue growth, hiring plans and the platform migration.",
    "Please send your comments on the draft proposal by the end of the week.",
    "We agreed to postpone the rollout until the security review is complete.",
    "The support team resolved most tickets within the agreed service level.",
    "Could you summarise the main risks of the proposed architecture in a short memo?",
    "Translate the following paragraph into Japanese, keeping the tone formal.",
    "The vendor confirmed that the new firmware fixes the reported memory leak.",
    "Our cost model assumes a three-year depreciation of the hardware.",
    "Write a polite reply declining the meeting and proposing two alternative dates.",
    "The training data was cleaned, deduplicated and split into three sets.",
]


def clean_corpus(total_bytes: int = 1_000_000, seed: int = 4) -> str:
    """Mixed prose, about half Japanese and half English by sentence, with no personal data."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < total_bytes:
        sentence = rng.choice(JA) if rng.random() < 0.5 else rng.choice(EN) + " "
        if rng.random() < 0.08:
            sentence += "\n"
        parts.append(sentence)
        size += len(sentence.encode())
    return "".join(parts)


def dense_corpus(total_bytes: int = 1_000_000) -> str:
    """The evaluation set's texts, repeated: personal data and secrets in almost every line."""
    texts = [json.loads(line)["text"] for line in EVAL.open(encoding="utf-8")]
    parts: list[str] = []
    size = 0
    while size < total_bytes:
        for text in texts:
            parts.append(text + "\n")
            size += len(text.encode()) + 1
            if size >= total_bytes:
                break
    return "".join(parts)


def prompts(corpus: str, size: int = PROMPT_BYTES) -> list[str]:
    """Cut a corpus into prompts of about ``size`` UTF-8 bytes at character boundaries."""
    out: list[str] = []
    current: list[str] = []
    used = 0
    for ch in corpus:
        n = len(ch.encode())
        if used + n > size:
            out.append("".join(current))
            current, used = [], 0
        current.append(ch)
        used += n
    if current:
        out.append("".join(current))
    return out


def shared_bench_messages(prompt_bytes: int = 1000) -> tuple[str, str]:
    """The system and user texts of the gateway benchmark's chat request
    (``shared/bench/bench.py``, ``make_bodies``, default ``--prompt-bytes 1000``), built the same
    way. The gateway scans each message text on its own, so these are two scans per request."""
    system = (
        "You are a careful assistant for a compliance team. "
        "Answer briefly and cite the policy you apply."
    )
    unit = (
        "Our branch in Osaka received a request from customer Tanaka Taro about account "
        "1234-5678; he asks whether the loan terms can change before the fiscal year ends. "
    )
    user = "Summarise this note for the compliance officer. "
    while len(system) + len(user) + len(unit) <= prompt_bytes:
        user += unit
    user += unit[: max(0, prompt_bytes - len(system) - len(user))]
    return system, user


# Realistic ~1 KB prompts as users send them: business prose with a handful of numbers (dates,
# amounts, order and version numbers, times) and a few pieces of personal data.
BUSINESS_PROMPTS: dict[str, str] = {
    "ja email reply": (
        "以下のメールへの返信文を丁寧な敬語で作成してください。\n\n"
        "件名：2024年度下期 保守契約更新のご案内（契約番号 HC-2024-0815）\n"
        "株式会社みなと精機\n総務部 佐藤様\n\n"
        "いつも大変お世話になっております。\n"
        "現在ご契約いただいている保守サービスは2024年9月30日をもって期間満了となります。"
        "更新後の年間費用は1,980,000円（税抜）で、前年から5%の改定となります。"
        "なお、10月1日以降のお問い合わせ窓口は平日9:00〜17:30、サポート専用ダイヤル"
        "03-5555-0123 までお願いいたします。\n"
        "ご不明な点は担当の山本（yamamoto@minato-seiki.co.jp）までご連絡ください。\n"
        "お見積書（見積番号 Q-240915-03）を添付いたしますので、9月20日までにご確認の上、"
        "注文書をご返送いただけますと幸いです。\n\n"
        "返信では、更新に同意すること、請求書の宛先を経理部に変更してほしいこと、"
        "支払条件は従来どおり月末締め翌月末払いを希望することを伝えてください。"
    ),
    "en support ticket": (
        "Summarise the following customer ticket for the engineering lead and propose next "
        "steps.\n\nTicket #48213 opened 2024-06-11 08:42 UTC by Jennifer Walsh "
        "(jennifer.walsh@northwind-logistics.com), priority P2.\n"
        "After upgrading the routing service from v2.14.3 to v2.15.0 on 10 June, roughly 12% of "
        "shipment label requests fail with HTTP 502 between 02:00 and 04:30 JST. The customer "
        "runs 3 regions and about 45,000 labels per day; failures cost them about $1,200 per "
        "hour in manual work. They attached logs from hosts 10.20.4.17 and 10.20.4.18 and a "
        "trace id 7f3a9c2e. Rollback to 2.14.3 on one region (ap-northeast-1) cleared the "
        "errors within 20 minutes. Order 5512-8834 was delayed as a result and they ask for a "
        "credit under section 4.2 of the SLA (99.9% monthly uptime). Please draft a reply that "
        "acknowledges the impact, explains that we are investigating the connection pool limit "
        "changed in 2.15.0, and commits to an update by 17:00 on 12 June."
    ),
    "ja meeting notes": (
        "次の議事録を要約し、決定事項と宿題を箇条書きにしてください。\n\n"
        "第3回 新基幹システム移行プロジェクト定例（2024年7月4日 14:00〜15:30、本社8階会議室B）\n"
        "出席：情報システム部 鈴木部長、経理部 高橋課長、ベンダー側PM 2名\n"
        "1. 進捗：要件定義は95%完了。残課題は帳票12種類の出力形式と、旧システムからの"
        "データ移行件数（約320万件）の検証方法。\n"
        "2. スケジュール：結合テストを8月19日開始、本番切替は11月23日（土）予定。"
        "切替当日の停止時間は最大6時間を想定。\n"
        "3. 予算：追加開発費として480万円の増額申請を次回の経営会議（7月16日）に諮る。\n"
        "4. リスク：旧システムのバージョン3.2.1は保守期限が2025年3月31日のため、"
        "遅延の余地は少ない。\n"
        "宿題：高橋課長は7月11日までに帳票サンプルを共有。ベンダーは移行リハーサル計画を"
        "7月18日までに提出。次回は7月18日 10:00から。"
    ),
    "en contract clause": (
        "Review this clause for risks to us as the supplier and suggest a fairer wording.\n\n"
        "12.3 Liability. The Supplier's aggregate liability under this Agreement shall not "
        "exceed the fees paid in the twelve (12) months preceding the claim, except for breach "
        "of Section 9 (Confidentiality) and Section 10 (Data Protection), for which liability "
        "is uncapped. Service credits under Schedule 2 are calculated as 5% of the monthly fee "
        "for each 0.1% below 99.5% availability, up to 30% of the monthly fee. Invoices "
        "(e.g. INV-2024-00731) are payable within 45 days; late payment accrues interest at "
        "1.5% per month. The Customer may terminate on 90 days' notice after 1 April 2025. "
        "Notices go to legal@contoso-trading.com or by post to the registered office. The "
        "Agreement is governed by the laws of Japan and the Tokyo District Court has exclusive "
        "jurisdiction. Contact for this review: Ms. Emily Carter, tel. +81 3-6824-1190."
    ),
}
