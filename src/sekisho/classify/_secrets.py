"""Credentials in text: cloud keys, private key blocks, API tokens, JWTs, passwords.

Every pattern starts with a literal prefix (``AKIA``, ``-----BEGIN``, ``eyJ``, ``://``), so the
regex engine skips clean text quickly. The span is the credential value only. Placeholders
(``AKIAIOSFODNN7EXAMPLE``, ``sk-xxxx``, ``<your-token>``, ``${PASSWORD}``) are not secrets.
"""

from __future__ import annotations

import base64
import binascii

from sekisho.classify._lazy import lazy_compile
from sekisho.classify.findings import SECRET, Finding

_B64URL = r"[A-Za-z0-9_\-]"

# (subtype, literals of which one must occur for the pattern to be tried, pattern). The value
# is group "v" when the pattern has one, else the whole match. The literal gate is a plain
# substring test, far cheaper than running a regex over text that cannot match.
_PATTERNS: list[tuple[str, tuple[str, ...], str]] = [
    (
        "aws_access_key_id",
        ("AKIA", "ASIA", "ABIA", "ACCA", "A3T"),
        r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z2-7]{16}(?![A-Za-z0-9])",
    ),
    (
        "aws_secret_access_key",
        ("_access_key", "_ACCESS_KEY", "SecretAccessKey"),
        r"(?i:aws_?secret_?access_?key|secret_?access_?key|SecretAccessKey)[\"']?\s*[:=]\s*[\"']?"
        r"(?P<v>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])",
    ),
    ("gcp_api_key", ("AIza",), r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_\-]{35}(?![A-Za-z0-9_\-])"),
    ("azure_storage_key", ("AccountKey=",), r"AccountKey=(?P<v>[A-Za-z0-9+/]{86}==)"),
    (
        "azure_client_secret",
        ("Q~",),
        r"(?<![A-Za-z0-9_~.\-])[A-Za-z0-9_~.\-]{3}\dQ~[A-Za-z0-9_~.\-]{31,34}(?![A-Za-z0-9_~.\-])",
    ),
    (
        "github_token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})(?![A-Za-z0-9_])",
    ),
    (
        "slack_token",
        ("xox",),
        r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9]{8,}(?:-[A-Za-z0-9]{4,}){1,4}",
    ),
    (
        "slack_webhook",
        ("/services/",),
        r"https://hooks\.slack\.com/services/T[A-Z0-9]{6,12}/B[A-Z0-9]{6,12}/[A-Za-z0-9]{20,32}",
    ),
    (
        "stripe_secret_key",
        ("_live_", "_test_"),
        r"(?<![A-Za-z0-9])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,99}(?![A-Za-z0-9])",
    ),
    (
        "anthropic_api_key",
        ("k-",),
        r"(?<![A-Za-z0-9])sk-ant-[A-Za-z0-9_\-]{20,200}(?![A-Za-z0-9_\-])",
    ),
    (
        "openai_api_key",
        ("k-",),
        r"(?<![A-Za-z0-9_\-])sk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,200}"
        r"(?![A-Za-z0-9_\-])",
    ),
    (
        "jwt",
        (".eyJ",),
        rf"(?<![A-Za-z0-9_\-])eyJ{_B64URL}{{8,2000}}+\.eyJ{_B64URL}{{8,4000}}+\.{_B64URL}{{16,1000}}+",
    ),
    (
        "connection_string_password",
        ("://",),
        r"[A-Za-z][A-Za-z0-9+.\-]{1,20}://[^\s:/@]{1,64}:(?P<v>[^\s@/]{1,128})@[A-Za-z0-9.\-\[]",
    ),
    (
        "password",
        ("pass", "Pass", "PASS", "pwd", "Pwd", "PWD", "パスワード"),
        r"(?<![A-Za-z0-9])(?:[Pp]ass(?:word|wd)?|PASS(?:WORD|WD)?|[Pp]wd|PWD|パスワード)"
        r"[\"']?[ \t]*[:=：][ \t]*[\"']?"
        r"(?P<v>[^\s\"';,<>]{4,128})",
    ),
    (
        "bearer_token",
        ("Bearer",),
        r"\bBearer[ \t]+(?P<v>[A-Za-z0-9\-._~+/]{20,2000}+=*)(?![A-Za-z0-9\-._~+/=])",
    ),
]

_COMPILED = [(name, gate, lazy_compile(pattern)) for name, gate, pattern in _PATTERNS]
SECRET_GATES: frozenset[str] = frozenset(
    w for _, gate, _ in _PATTERNS for w in gate if w.isascii()
) | {"-----"}
SECRET_GATES_JP: frozenset[str] = frozenset(
    w for _, gate, _ in _PATTERNS for w in gate if not w.isascii()
)

# Values that are documentation or templates, not credentials.
_PLACEHOLDER = lazy_compile(
    r"(?i)example|x{4,}|\*{3,}|\.{3}|<|>|\$\{|\{\{|%s|your|placeholder|redacted|dummy|sample|"
    r"^(?:password|passwd|secret|token|none|null|string|changeit)$|(.)\1{7,}"
)

_SCORES = {
    "aws_access_key_id": 0.95,
    "aws_secret_access_key": 0.9,
    "gcp_api_key": 0.95,
    "azure_storage_key": 0.95,
    "azure_client_secret": 0.8,
    "github_token": 0.98,
    "slack_token": 0.95,
    "slack_webhook": 0.95,
    "stripe_secret_key": 0.95,
    "anthropic_api_key": 0.95,
    "openai_api_key": 0.9,
    "jwt": 0.9,
    "connection_string_password": 0.9,
    "password": 0.8,
    "bearer_token": 0.85,
}


def _jwt_header_ok(token: str) -> bool:
    header = token.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
    except (binascii.Error, ValueError):
        return False
    return b'"alg"' in decoded or b'"typ"' in decoded


_PEM_BEGIN = lazy_compile(
    r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"
)
_PEM_END = lazy_compile(
    r"-----END (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"
)
_PEM_MAX = 16384


def detect_private_keys(text: str, out: list[Finding]) -> None:
    """Whole PEM private-key blocks, BEGIN and END lines included; linear in the text."""
    pos = 0
    while True:
        begin = _PEM_BEGIN.search(text, pos)
        if begin is None:
            return
        end_at = text.find("-----END", begin.end())
        if end_at < 0:
            return
        end = _PEM_END.match(text, end_at)
        if end is None or end_at - begin.end() > _PEM_MAX:
            pos = begin.end()
            continue
        if text.rfind("-----BEGIN", begin.end(), end_at) >= 0:
            pos = text.rfind("-----BEGIN", begin.end(), end_at)  # the later BEGIN starts it
            continue
        out.append(Finding(SECRET, begin.start(), end.end(), 0.99, "private_key"))
        pos = end.end()


def detect_secrets(text: str, out: list[Finding], present: frozenset[str] | None = None) -> None:
    """Add SECRET findings; ``present`` (when known) holds the gate literals the text contains."""
    if (present is None or "-----" in present) and "-----BEGIN" in text:
        detect_private_keys(text, out)
    for subtype, gate, pattern in _COMPILED:
        if present is None:
            if not any(literal in text for literal in gate):
                continue
        elif not any(literal in present for literal in gate):
            continue
        for match in pattern.finditer(text):
            span = match.span("v") if "v" in pattern.groupindex else match.span()
            start, end = span
            value = text[start:end]
            if _PLACEHOLDER.search(value):
                continue
            if subtype == "jwt" and not _jwt_header_ok(value):
                continue
            if subtype == "password" and value.startswith(("$", "%", "{")):
                continue
            if subtype == "openai_api_key" and sum(c.isdigit() for c in value) < 2:
                continue  # "sk-this-is-a-long-hyphenated-word" is prose, not a key
            out.append(Finding(SECRET, start, end, _SCORES[subtype], subtype))
