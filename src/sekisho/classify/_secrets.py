"""Credentials in text: cloud keys, private key blocks, API tokens, JWTs, passwords.

Every pattern starts with a literal prefix (``AKIA``, ``-----BEGIN``, ``eyJ``, ``://``), so the
regex engine skips clean text quickly; what must not stand before the prefix is checked by a
look-behind placed after it (a pattern that opened with the look-behind would be tried at every
position of the text: ten times the cost on a 4 KB prompt). The span is the credential value
only. Placeholders (``AKIAIOSFODNN7EXAMPLE``, ``sk-xxxx``, ``<your-token>``, ``${PASSWORD}``)
are not secrets.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator

from sekisho.classify._lazy import LazyPattern, lazy_compile
from sekisho.classify.findings import SECRET, Finding

_B64URL = r"[A-Za-z0-9_\-]"
# A password value: a quoted one is the whole quoted string (a passphrase has spaces, a
# password may hold the other quote); an unquoted one (group "v") is printable ASCII up to
# whitespace, the end of the line or a quote, trimmed by ``_unquoted_end`` (Japanese after it
# is prose: "パスワード：hunter2です").
_PASSWORD_VALUE = (
    r"[\"']?[ \t]*[:=：][ \t]*"
    r"(?:\"(?P<vd>(?:[^\"\\\r\n]|\\.){4,128}+)\"|'(?P<vs>[^'\r\n]{4,128}+)'"
    r"|(?P<v>[!#-&(-~][!#-~]{3,127}+))"
)

# (subtype, literals of which one must occur for the pattern to be tried, pattern). The value
# is group "v" when the pattern has one, else the whole match. The literal gate is a plain
# substring test, far cheaper than running a regex over text that cannot match.
_PATTERNS: list[tuple[str, tuple[str, ...], str]] = [
    (
        "aws_access_key_id",
        ("AKIA", "ASIA", "ABIA", "ACCA", "A3T"),
        r"A(?<![A-Za-z0-9]A)(?:KIA|SIA|BIA|CCA|3T[A-Z0-9])[A-Z2-7]{16}(?![A-Za-z0-9])",
    ),
    (
        "aws_secret_access_key",
        ("_access_key", "_ACCESS_KEY", "SecretAccessKey"),
        # "aws_" before the key name changes nothing of the value, so it is not matched.
        r"[Ss](?i:ecret_?access_?key)[\"']?\s*[:=]\s*[\"']?"
        r"(?P<v>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])",
    ),
    ("gcp_api_key", ("AIza",), r"AIza(?<![A-Za-z0-9]AIza)[0-9A-Za-z_\-]{35}(?![A-Za-z0-9_\-])"),
    (
        "azure_storage_key",
        ("countKey",),
        # AccountKey=… in a connection string, AccountKey = …, "accountKey": "…" in JSON.
        r"countKey(?<=[Aa]ccountKey)[\"']?[ \t]*[:=][ \t]*[\"']?(?P<v>[A-Za-z0-9+/]{86}==)"
        r"(?![A-Za-z0-9+/=])",
    ),
    (
        "azure_client_secret",
        ("Q~",),
        # Led by its "Q~" (the value starts _VALUE_BEFORE["azure_client_secret"] = 4 before it).
        r"Q~(?<=(?<![A-Za-z0-9_~.\-])[A-Za-z0-9_~.\-]{3}\dQ~)[A-Za-z0-9_~.\-]{31,34}"
        r"(?![A-Za-z0-9_~.\-])",
    ),
    (
        "github_token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        # Classic tokens (ghp_ + 36) and fine-grained ones (github_pat_ + 22, "_", 59) share
        # only their "g".
        r"g(?<![A-Za-z0-9_]g)(?:h[pousr]_[A-Za-z0-9]{36}|ithub_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})"
        r"(?![A-Za-z0-9_])",
    ),
    (
        "slack_token",
        ("xox",),
        r"xox(?<![A-Za-z0-9]xox)[abposr]-[A-Za-z0-9]{8,}(?:-[A-Za-z0-9]{4,}){1,4}",
    ),
    (
        "slack_token",  # app-level tokens
        ("xapp-",),
        r"xapp-(?<![A-Za-z0-9]xapp-)[0-9]-[A-Za-z0-9]{8,}(?:-[A-Za-z0-9]{4,}){1,4}",
    ),
    (
        "slack_webhook",
        ("/services/",),
        r"https://hooks\.slack\.com/services/T[A-Z0-9]{6,12}/B[A-Z0-9]{6,12}/[A-Za-z0-9]{20,32}",
    ),
    (
        "stripe_secret_key",
        ("_live_", "_test_"),
        r"sk_(?<![A-Za-z0-9]sk_)(?:live|test)_[A-Za-z0-9]{16,99}(?![A-Za-z0-9])",
    ),
    (
        "stripe_secret_key",  # restricted keys
        ("_live_", "_test_"),
        r"rk_(?<![A-Za-z0-9]rk_)(?:live|test)_[A-Za-z0-9]{16,99}(?![A-Za-z0-9])",
    ),
    (
        "sendgrid_api_key",
        ("SG.",),
        r"SG\.(?<![A-Za-z0-9_\-.]SG\.)[A-Za-z0-9_\-]{16,32}\.[A-Za-z0-9_\-]{32,64}"
        r"(?![A-Za-z0-9_\-])",
    ),
    (
        "stripe_webhook_secret",
        ("whsec_",),
        r"whsec_(?<![A-Za-z0-9]whsec_)[A-Za-z0-9+/]{24,64}(?![A-Za-z0-9+/])",
    ),
    (
        "gitlab_token",
        ("glpat-",),
        r"glpat-(?<![A-Za-z0-9]glpat-)[A-Za-z0-9_\-]{20,64}(?![A-Za-z0-9_\-])",
    ),
    ("npm_token", ("npm_",), r"npm_(?<![A-Za-z0-9]npm_)[A-Za-z0-9]{36}(?![A-Za-z0-9])"),
    ("huggingface_token", ("hf_",), r"hf_(?<![A-Za-z0-9]hf_)[A-Za-z0-9]{30,40}(?![A-Za-z0-9])"),
    (
        "google_oauth_client_secret",
        ("GOCSPX-",),
        r"GOCSPX-(?<![A-Za-z0-9]GOCSPX-)[A-Za-z0-9_\-]{24,40}(?![A-Za-z0-9_\-])",
    ),
    (
        "anthropic_api_key",
        ("k-",),
        r"sk-ant-(?<![A-Za-z0-9]sk-ant-)[A-Za-z0-9_\-]{20,200}(?![A-Za-z0-9_\-])",
    ),
    (
        "openai_api_key",
        ("k-",),
        r"sk-(?<![A-Za-z0-9_\-]sk-)(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,200}"
        r"(?![A-Za-z0-9_\-])",
    ),
    (
        "signed_url_signature",  # an Azure SAS token's signature: ?…&sig=…
        ("sig=",),
        r"sig=(?<=[?&;]sig=)(?P<v>[A-Za-z0-9%+/=]{32,128})(?![A-Za-z0-9%+/=])",
    ),
    (
        "signed_url_signature",  # S3 and GCS pre-signed URLs (SigV4 and V4 signing)
        ("-Signature=",),
        r"X-(?:Amz|Goog)-Signature=(?P<v>[0-9a-f]{64,512})(?![0-9A-Za-z])",
    ),
    (
        "jwt",
        (".eyJ",),
        rf"eyJ(?<![A-Za-z0-9_\-]eyJ){_B64URL}{{8,2000}}+\.eyJ{_B64URL}{{8,4000}}+"
        rf"\.{_B64URL}{{16,1000}}+",
    ),
    (
        "connection_string_password",
        ("://",),
        # The scheme (a letter, then 1-20 of [A-Za-z0-9+.-]) is checked behind "://", one
        # fixed-width look-behind per length, so the search is led by the literal.
        "://(?:"
        + "|".join(rf"(?<=[A-Za-z][A-Za-z0-9+.\-]{{{k}}}://)" for k in range(1, 21))
        # The user may be empty (redis://:PASSWORD@host); the password runs to the last "@"
        # before the host (p@ssw0rd is written unescaped).
        + r")[^\s:/@]{0,64}:(?P<v>[^\s/?#]{1,128})@[A-Za-z0-9.\-\[]",
    ),
    # Passwords: one pattern per leading letter (lower, upper, katakana), so each is led by a
    # literal; each pattern's matches contain its own gate words.
    (
        "password",
        ("pass", "pwd"),
        # password and passwd may end a longer key (db_password, dbPassword, PGPASSWORD);
        # pass and pwd only stand alone (bypass, compass).
        rf"p(?:ass(?:word|wd)|(?<![A-Za-z0-9]p)(?:ass|wd)){_PASSWORD_VALUE}",
    ),
    (
        "password",
        ("Pass", "PASS", "Pwd", "PWD"),
        rf"P(?:ass(?:word|wd)|ASS(?:WORD|WD)|(?<![A-Za-z0-9]P)(?:ass|ASS|wd|WD))"
        rf"{_PASSWORD_VALUE}",
    ),
    ("password", ("パスワード",), rf"パスワード(?<![A-Za-z0-9]パスワード){_PASSWORD_VALUE}"),
    # A credential under a name that says so, whatever its own shape: JWT_SECRET=…,
    # client_secret: …, SLACK_BOT_TOKEN=…, "apiKey": "…", X-API-Key: …, an Azure Service Bus or
    # IoT Hub SharedAccessKey=…. One pattern per casing of the name's last word, each led by
    # it; the words before it (the look-behinds) say which keys hold credentials.
    ("generic_secret", ("SECRET",), rf"SECRET(?:_?KEY(?:_BASE)?)?{_PASSWORD_VALUE}"),
    ("generic_secret", ("Secret",), rf"Secret(?:_?Key)?{_PASSWORD_VALUE}"),
    ("generic_secret", ("secret",), rf"secret(?:_?[Kk]ey(?:_base)?)?{_PASSWORD_VALUE}"),
    ("generic_secret", ("TOKEN",), rf"TOKEN{_PASSWORD_VALUE}"),
    ("generic_secret", ("Token",), rf"Token{_PASSWORD_VALUE}"),
    ("generic_secret", ("token",), rf"token{_PASSWORD_VALUE}"),
    (
        "generic_secret",
        ("KEY", "_ACCESS_KEY"),
        r"KEY(?:(?<=API_KEY)|(?<=APIKEY)|(?<=API-KEY)|(?<=ACCESS_KEY)|(?<=MASTER_KEY)"
        rf"|(?<=SIGNING_KEY)|(?<=ENCRYPTION_KEY)){_PASSWORD_VALUE}",
    ),
    (
        "generic_secret",
        ("Key",),
        r"Key(?:(?<=[Aa]piKey)|(?<=AP[Ii]-Key)|(?<=[Aa]pi-Key)|(?<=[Aa]ccessKey)"
        rf"|(?<=Subscription-Key)|(?<=[Mm]asterKey)){_PASSWORD_VALUE}",
    ),
    (
        "generic_secret",
        ("key", "_access_key"),
        r"key(?:(?<=api_key)|(?<=apikey)|(?<=api-key)|(?<=access_key)|(?<=master_key)"
        rf"|(?<=signing_key)|(?<=encryption_key)){_PASSWORD_VALUE}",
    ),
    # The scheme is case-insensitive (RFC 6750): "authorization: bearer …" is as common.
    (
        "bearer_token",
        ("Bearer", "BEARER"),
        r"B(?<!\wB)(?:earer|EARER)[ \t]+(?P<v>[A-Za-z0-9\-._~+/]{20,2000}+=*)"
        r"(?![A-Za-z0-9\-._~+/=])",
    ),
    (
        "bearer_token",
        ("bearer",),
        r"bearer(?<!\wbearer)[ \t]+(?P<v>[A-Za-z0-9\-._~+/]{20,2000}+=*)(?![A-Za-z0-9\-._~+/=])",
    ),
]

# Characters of the value before the match's start, for a pattern led by a literal that stands
# inside the value.
_VALUE_BEFORE = {"azure_client_secret": 4}

# Patterns of one subtype act as one alternation (their leading characters differ, so at most
# one can match at a position): grouped here, matched by ``_alternation``.
_COMPILED: list[tuple[str, list[tuple[tuple[str, ...], LazyPattern]]]] = []
for _name, _gate, _source in _PATTERNS:
    if not _COMPILED or _COMPILED[-1][0] != _name:
        _COMPILED.append((_name, []))
    _COMPILED[-1][1].append((_gate, lazy_compile(_source)))
SECRET_GATES: frozenset[str] = frozenset(
    w for _, gate, _ in _PATTERNS for w in gate if w.isascii()
) | {"-----"}
SECRET_GATES_JP: frozenset[str] = frozenset(
    w for _, gate, _ in _PATTERNS for w in gate if not w.isascii()
)

_PASSWORDS = frozenset({"password", "connection_string_password", "generic_secret"})
# A value under a credential's name is one when it is long enough and holds a letter and a
# digit: TOKEN_TYPE=Bearer, API_KEY=none, SECRET=true are settings.
_GENERIC_MIN = 12
# Values that are documentation or templates, not credentials (passwords: see below).
_PLACEHOLDER = lazy_compile(
    r"(?i)example|x{4,}|\*{3,}|\.{3}|<|>|\$\{|\{\{|%s|your|placeholder|redacted|dummy|sample|"
    r"^(?:password|passwd|secret|token|none|null|string|changeit)$|(.)\1{7,}"
)

# A password that is a template or a stand-in, judged on the whole value: <your-password>,
# ${DB_PASSWORD}, $DB_PASSWORD, %(password)s, %PASSWORD%, {password}, {{ .Password }},
# ********, xxxx, YOUR_PASSWORD, example, [REDACTED]. A value that merely contains such a
# word (Yourname2024!, Sample#Pass77) or starts with $, % or { ($ecretPa55) is a password.
_PASSWORD_PLACEHOLDER = lazy_compile(
    r"<[^<>]*>|\[[^\[\]]*\]|\{\{?[^{}]*\}\}?"
    r"|\$\{[^{}]*\}|\$\([^()]*\)|\$[A-Z_][A-Z0-9_]*|\$[a-z_][a-z0-9_]*"
    r"|%\([A-Za-z_]\w*\)[sdr]|%[sd]|%[A-Za-z_]\w*%"
    r"|[*xX•●.…_#\-]+|(.)\1{3,}"
    r"|(?i:(?:your|sample|example|dummy|placeholder|changeme|change_me|replace|enter|insert"
    r"|fake)[a-z_\-. ]*"
    r"|password|passwd|pass|pwd|secret|token|none|null|nil|string|changeit|redacted|hidden"
    r"|masked|omitted|required|optional|empty|undefined|todo|tbd)"
    # Code that fetches it: os.environ["DB_PASSWORD"], os.getenv('PW'), get_secret(), a
    # name followed by the call or subscript the value was cut at. An unquoted argument
    # (Pa55(w0rd), s3cr3t[1]) may be a password's own brackets: still a password.
    r"|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
    r"(?:\[|\(\)?|\((['\"])[\w.\-]*\2\)|\[(['\"])[\w.\-]*\3\])"
)
# In an unquoted value, a separator followed by the next field's key ends it
# (?user=a&password=S3cret&x=1, Password=S3cret;Server=db); prose marks after it are not part
# of it (password=hunter22. / (password=hunter22)).
_NEXT_FIELD = lazy_compile(r"[;,&](?=[ \t]*[A-Za-z_][A-Za-z0-9_.\-]{0,40}[ \t]*[=:])")
_OPENER = {")": "(", "]": "[", "}": "{"}


# A key that holds no credential though its name ends in Token: a page or a continuation of a
# listing (nextPageToken, continuation_token).
_NOT_CREDENTIAL_KEY = ("page", "continuation", "cursor")
# Code that reads the value from elsewhere: settings.OPENAI_API_KEY_V2, config.auth.bot_token2
# (lower-case names, then a name in one case; a token's own dots, ya29.a0AfH6…, mix cases).
_REFERENCE = lazy_compile(
    r"[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*\.(?:[a-z_][a-z0-9_]*|[A-Z_][A-Z0-9_]*)"
)


def _generic_value_ok(text: str, key_end: int, value: str) -> bool:
    """Whether ``value``, under a credential's name ending at ``key_end``, is a credential."""
    if not (
        len(value) >= _GENERIC_MIN
        and any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
    ):
        return False
    if _PLACEHOLDER.search(value) or _REFERENCE.fullmatch(value):
        return False
    start = key_end
    while start > max(0, key_end - 40) and (text[start - 1].isalnum() or text[start - 1] in "_-."):
        start -= 1
    key = text[start:key_end].lower()  # the key's own words before its last one
    return not any(word in key for word in _NOT_CREDENTIAL_KEY)


def _unquoted_end(text: str, start: int, end: int) -> int:
    """Where an unquoted password value that the pattern read as ``text[start:end]`` ends."""
    cut = _NEXT_FIELD.search(text, start, end)
    if cut is not None:
        end = cut.start()
    while end > start:
        last = text[end - 1]
        if last in _OPENER:  # a bracket of the prose around it, unless the value opened it
            if text.count(_OPENER[last], start, end) >= text.count(last, start, end):
                break
        elif last not in ".,;":
            break
        end -= 1
    return end


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
    "sendgrid_api_key": 0.95,
    "stripe_webhook_secret": 0.95,
    "gitlab_token": 0.95,
    "npm_token": 0.95,
    "huggingface_token": 0.95,
    "google_oauth_client_secret": 0.95,
    "signed_url_signature": 0.9,
    "generic_secret": 0.85,
}


_QUOTED_PASSWORD = 0.95


def _jwt_header_ok(token: str) -> bool:
    header = token.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
    except (binascii.Error, ValueError):
        return False
    return b'"alg"' in decoded or b'"typ"' in decoded


PEM_BEGIN = lazy_compile(r"-----BEGIN (?:[A-Z0-9]{1,12} ){0,2}PRIVATE KEY(?: BLOCK)?-----")
PEM_END = lazy_compile(r"-----END (?:[A-Z0-9]{1,12} ){0,2}PRIVATE KEY(?: BLOCK)?-----")
_PEM_MAX = 16384
# The key material after a BEGIN line: whole lines of base64 and the headers of an encrypted
# PEM (blank lines between them), then at most one short line (a key's last); line breaks
# written as "\n" (a key pasted from JSON or YAML) count too. A line of prose ends it. A
# one-word line right after the key ("Thanks") is taken with it: masking a word is better than
# leaking a key's last line.
_PEM_EOL = r"(?=[ \t]*+(?:\r?\n|\\[nr]|$))"
_PEM_LINE = r"[ \t]*+(?:\r?\n|\\n)[ \t]*+"
_PEM_BODY = lazy_compile(
    rf"(?:(?:{_PEM_LINE})++(?:[A-Za-z0-9+/]{{16,76}}+=*+|(?:Proc-Type|DEK-Info):[^\r\n\\]{{1,100}}+)"
    rf"{_PEM_EOL}){{0,400}}+(?:{_PEM_LINE}[A-Za-z0-9+/]{{1,15}}+=*+{_PEM_EOL})?"
)
_PEM_PARTIAL_MIN = 16  # characters of key material that make a pasted part of a key a secret


def detect_private_keys(text: str, out: list[Finding]) -> None:
    """Whole PEM private-key blocks, BEGIN and END lines included; linear in the text.

    A block without its own END line (a key pasted in part, or cut off by another block's END)
    is still a secret: it runs from BEGIN through the last line of its key material.
    """
    pos = 0
    end_at = -2  # where the next "-----END" stands (-1: nowhere; -2: not looked for yet)
    while True:
        begin = PEM_BEGIN.search(text, pos)
        if begin is None:
            return
        if end_at == -2 or 0 <= end_at < begin.end():
            end_at = text.find("-----END", begin.end())
        end = PEM_END.match(text, end_at) if end_at >= 0 else None
        if (
            end is not None
            and end_at - begin.end() <= _PEM_MAX
            and text.find("-----BEGIN", begin.end(), end_at) < 0
        ):
            out.append(Finding(SECRET, begin.start(), end.end(), 0.99, "private_key"))
            pos = end.end()
            continue
        body = _PEM_BODY.match(text, begin.end())
        stop = body.end() if body is not None else begin.end()
        if stop - begin.end() >= _PEM_PARTIAL_MIN:
            out.append(Finding(SECRET, begin.start(), stop, 0.95, "private_key"))
        pos = max(stop, begin.end())


def _alternation(patterns: list[LazyPattern], text: str) -> Iterator[re.Match[str]]:
    """The matches ``finditer`` of the patterns joined by ``|`` would give: from where the last
    match ended, the leftmost match of any of them."""
    if len(patterns) == 1:
        yield from patterns[0].finditer(text)
        return
    pending = [p.search(text) for p in patterns]
    pos = 0
    while True:
        best: re.Match[str] | None = None
        for i, match in enumerate(pending):
            if match is not None and match.start() < pos:
                match = pending[i] = patterns[i].search(text, pos)
            if match is not None and (best is None or match.start() < best.start()):
                best = match
        if best is None:
            return
        yield best
        pos = best.end()


def detect_secrets(text: str, out: list[Finding], present: frozenset[str] | None = None) -> None:
    """Add SECRET findings; ``present`` (when known) holds the gate literals the text contains."""
    if (present is None or "-----" in present) and "-----BEGIN" in text:
        detect_private_keys(text, out)
    for subtype, members in _COMPILED:
        if present is None:
            active = [p for gate, p in members if any(literal in text for literal in gate)]
        else:
            active = [p for gate, p in members if any(literal in present for literal in gate)]
        for match in _alternation(active, text):
            group = match.lastgroup  # the value's group, when the pattern has one
            start, end = match.span(group) if group is not None else match.span()
            start -= _VALUE_BEFORE.get(subtype, 0)
            if subtype in _PASSWORDS:
                if group == "v" and subtype != "connection_string_password":
                    end = _unquoted_end(text, start, end)
                    last = text[end - 1 : end]
                    if (
                        subtype == "generic_secret"
                        and last in "'\""
                        and text.count(last, start, end) == 1
                    ):
                        end -= 1  # the closing quote of a header in a shell: -H 'X-API-Key: …'
                    if end - start < 4:
                        continue
                if _PASSWORD_PLACEHOLDER.fullmatch(text, start, end):
                    continue
                value = text[start:end]
                if subtype == "generic_secret" and not _generic_value_ok(
                    text, match.start(), value
                ):
                    continue
            else:
                value = text[start:end]
                if _PLACEHOLDER.search(value):
                    continue
            if subtype == "jwt" and not _jwt_header_ok(value):
                continue
            if subtype == "bearer_token" and not any(c.isdigit() for c in value):
                continue  # "the bearer of this-very-long-hyphenated-word" is prose
            if subtype == "openai_api_key" and sum(c.isdigit() for c in value) < 2:
                continue  # "sk-this-is-a-long-hyphenated-word" is prose, not a key
            # A quoted value after a password key is the password whatever it looks like
            # (password = "taro@example.jp" is a secret, not an e-mail address).
            quoted = group in ("vd", "vs") and subtype == "password"
            score = _QUOTED_PASSWORD if quoted else _SCORES[subtype]
            out.append(Finding(SECRET, start, end, score, subtype))
