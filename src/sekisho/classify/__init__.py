"""Classification: personal data, secrets and confidentiality labels in prompts and outputs.

    from sekisho.classify import Scanner, CustomRule, scan, summarise, redact, Pseudonymiser

    findings = scan("マイナンバーは１２３４５６７８９０１８です")
    summarise(findings)            # {"MY_NUMBER": 1}  (types and counts only: ledger-safe)
    redact(text, findings)         # "マイナンバーは[MY_NUMBER]です"

Spans index the original text (``text[f.start:f.end]``), follow shared/PII_LABELS.md and are
documented with every type in docs/classification.md.
"""

from sekisho.classify.custom import CustomRule, rules_from_config
from sekisho.classify.findings import STRUCTURED_TYPES, TYPES, Finding
from sekisho.classify.redact import Pseudonymiser, redact, summarise
from sekisho.classify.scanner import Scanner, default_scanner, scan
from sekisho.classify.stream import StreamReidentifier, StreamScanner

__all__ = [
    "STRUCTURED_TYPES",
    "TYPES",
    "CustomRule",
    "Finding",
    "Pseudonymiser",
    "Scanner",
    "StreamReidentifier",
    "StreamScanner",
    "default_scanner",
    "redact",
    "rules_from_config",
    "scan",
    "summarise",
]
