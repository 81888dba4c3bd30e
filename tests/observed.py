"""Everything of a running gateway that is not its encrypted home-region store, as text: what a
security review greps for a prompt's values. The log records (formatted as `sekisho serve`
writes them, tracebacks included), /metrics, /healthz, /readyz, the admin API's endpoint
health, every ledger entry (decoded) and every file under the data directory, WAL files
included, read as bytes."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest

from harness import Harness, request
from sekisho.logs import JsonFormatter

# Values the detectors find, each written as it appears in the prompts of these tests.
VALUES = {
    "my_number": "123456789018",
    "card": "4539 1488 0343 6467",
    "email": "taro.yamada@example.co.jp",
    "phone": "090-3141-5926",
    "address": "丸の内2丁目7番3号",
    "aws_key": "AKIAZ7QXEMPLKRT2W4VB",
    "openai_key": "sk-proj-Q8vN3kLm2PzR7tYw9XcB4jHd6FgS1aEu0iOq5VbM",
    "password": "Hunter2Secret!xyz",
}
PROMPT = (
    f"マイナンバーは{VALUES['my_number']}です。カードは{VALUES['card']}、メールは"
    f"{VALUES['email']}、電話は{VALUES['phone']}、住所は東京都千代田区{VALUES['address']}。"
    f"AWS key {VALUES['aws_key']} and OpenAI key {VALUES['openai_key']} and password: "
    f"{VALUES['password']}"
)


def everything(h: Harness, caplog: pytest.LogCaptureFixture, skip: tuple[str, ...] = ()) -> str:
    """All of it, one text; but the data directory's files named in ``skip`` (and their WAL)."""
    formatter = JsonFormatter()
    # uvicorn's access log is off in `sekisho serve` (logs.configure); only tests have it.
    parts = [formatter.format(r) for r in caplog.records if r.name != "uvicorn.access"]
    admin = h.key(role="admin")
    auditor = h.key(role="auditor")
    for path, key in (
        ("/metrics", None),
        ("/healthz", None),
        ("/readyz", None),
        ("/admin/v1/endpoints", admin),
    ):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        parts.append(request("GET", h.root + path, headers=headers).text)
    index = 0
    while True:
        r = request(
            "GET",
            f"{h.root}/ledger/entries/{index}",
            headers={"authorization": f"Bearer {auditor}"},
        )
        if r.status_code != 200:
            break
        parts.append(base64.b64decode(r.json()["entry"]).decode())
        index += 1
    for path in sorted(Path(h.data_dir).rglob("*")):
        if path.is_file() and not path.name.startswith(skip or ("\0",)):
            parts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(parts)


def leaked(
    h: Harness, caplog: pytest.LogCaptureFixture, *extra: str, skip: tuple[str, ...] = ()
) -> dict[str, str]:
    """Each value (of VALUES, and ``extra``) found outside the store, with what surrounds it
    (``skip``: as ``everything``)."""
    text = everything(h, caplog, skip)
    found = {}
    for name, value in [*VALUES.items(), *((e, e) for e in extra)]:
        at = text.find(value)
        if at >= 0:
            found[name] = text[max(0, at - 200) : at + len(value) + 50]
    return found


def capture_everything(caplog: pytest.LogCaptureFixture) -> None:
    """Capture log records at every level, debug included."""
    caplog.set_level(logging.DEBUG)
