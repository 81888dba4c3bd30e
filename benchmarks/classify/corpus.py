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
