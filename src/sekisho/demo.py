"""``sekisho demo``: the five-minute tour. Starts three simulated endpoints and the gateway on
loopback, sends a scripted set of requests with the official ``openai`` client, and prints what
happened to each: where it went, under which jurisdiction and operator, and why."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

# The documented example config, shipped inside the package so that `sekisho demo` works from
# any install; tests keep it identical to examples/sekisho.yaml.
EXAMPLE = Path(__file__).resolve().parent / "data" / "example.yaml"


@dataclass
class Step:
    title: str
    model: str
    text: str
    stream: bool = False
    embeddings: bool = False
    classification: str | None = None
    fault: str | None = None  # endpoint id to take down first
    image: bool = False  # attach an image: content sekisho cannot read
    tool_default: str | None = None  # offer a tool whose parameter defaults to this value
    responses: bool = False  # through the Responses API (POST /v1/responses), streamed


# A 1x1 PNG: what matters is that sekisho cannot read it, whatever it shows.
_IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


SCRIPT = (
    Step("plain question", "gpt-4o", "What is a sekisho?"),
    Step("streamed answer", "gpt-4o", "Stream a haiku about borders.", stream=True),
    Step("embeddings", "text-embedding-3-small", "関所 checkpoint", embeddings=True),
    Step(
        "personal data (APPI)",
        "gpt-4o",
        "山田太郎様 (taro.yamada@example.co.jp, 090-1234-5678) の契約更新メールを書いて",
    ),
    Step("My Number (番号法)", "gpt-4o", "マイナンバーは 1234 5678 9018 です。手続きを教えて"),
    Step("image attached (unreadable)", "gpt-4o", "この請求書を要約して", image=True),
    Step(
        "Responses API, personal data",
        "gpt-4o",
        "佐藤花子様 (hanako.sato@example.co.jp) への返信を書いて",
        responses=True,
    ),
    Step(
        "My Number in a tool's schema",
        "gpt-4o",
        "Look the customer up.",
        tool_default="123456789018",  # not in the messages: in a tool definition
    ),
    Step("My Number, US-only model", "gpt-4.1", "マイナンバー 123456789018 の確認をお願いします"),
    Step("declared 機密性3", "gpt-4o", "Summarise the board minutes.", classification="機密性3"),
    Step("domestic down, internal", "gpt-4o", "Failover, please.", fault="sim-domestic-tokyo"),
    Step(
        "domestic down, 機密性3",
        "gpt-4o",
        "Board minutes, again.",
        classification="機密性3",
        fault="sim-domestic-tokyo",
    ),
)

# Which request's receipt the tour verifies offline at the end (the My Number one).
VERIFY_STEP = 5


def _config_text() -> str:
    return EXAMPLE.read_text(encoding="utf-8")


async def run_demo(*, port: int = 0, keep_running: bool = False) -> int:
    import logging

    import openai
    import uvicorn

    from sekisho.api.protocol import HttpProtocol
    from sekisho.app import Gateway
    from sekisho.config import parse_config
    from sekisho.harness_port import free_port
    from sekisho.identity import KeyStore
    from sekisho.simulator import Faults, start_demo_simulators

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    sims = await start_demo_simulators(base_port=0)
    by_name = {s.spec.name: s for s in sims}
    raw: dict[str, Any] = yaml.safe_load(_config_text())
    for ep in raw["endpoints"]:
        ep["base_url"] = by_name[ep["id"]].base_url
    tmp = tempfile.TemporaryDirectory(prefix="sekisho-demo-")
    if keep_running:
        # Stopped by Ctrl-C or SIGTERM (a service manager, `timeout`, `kill`), uvicorn shuts
        # down, then raises the signal again for the handler it found: SIGTERM's default
        # action would end the process before the temporary data directory (keys, ledger) is
        # removed, SIGINT's would print a traceback. Found a handler that lets it return.
        with contextlib.suppress(ValueError):  # not the main thread
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda signum, frame: None)
    port = port or free_port()
    raw["server"].update({"data_dir": tmp.name, "port": port, "host": "127.0.0.1"})
    raw["routing"]["health"]["probe_interval_seconds"] = 0
    config = parse_config(yaml.safe_dump(raw, allow_unicode=True), str(EXAMPLE))
    gateway = Gateway(config)
    server = uvicorn.Server(
        uvicorn.Config(
            gateway,
            host="127.0.0.1",
            port=port,
            http=HttpProtocol,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
    )
    serve = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    key, _ = KeyStore(Path(tmp.name) / "identity.db").create("demo", name="demo")
    base = f"http://127.0.0.1:{port}/v1"
    print(f"sekisho demo — gateway on {base}, three SIMULATED endpoints (not real models):")
    for s in sims:
        ep = config.catalogue.by_id[s.spec.name]
        print(
            f"  {ep.id:<22} {ep.jurisdiction.country}/{ep.jurisdiction.region:<10} "
            f"operator {ep.operator.name} [{ep.operator.country}"
            f"{'/' + ep.operator.parent_country if ep.operator.parent_country else ''}]"
        )
    print(f"tenant 'demo' policy: extends {raw['tenants']['demo']['policy'].get('extends')}\n")

    client = openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0)
    rows: list[list[str]] = []
    request_ids: dict[int, str] = {}
    for i, step in enumerate(SCRIPT, 1):
        if step.fault:
            by_name[step.fault].faults = Faults(mode="status", status=503)
        row, rid = await _run_step(i, step, client, config)
        rows.append(row)
        if rid:
            request_ids[i] = rid
        if step.fault:
            by_name[step.fault].faults = Faults()
            gateway.health.success(step.fault)
    _print_table(rows)
    await client.close()
    await _explain_and_verify(base, key, tmp.name, request_ids.get(VERIFY_STEP), rows)
    if keep_running:
        print(f"\nThe gateway stays up on {base} — try it with this key (Ctrl-C to stop):\n{key}")
        sys.stdout.flush()
        with contextlib.suppress(asyncio.CancelledError):
            await serve
    server.should_exit = True
    await serve
    for s in sims:
        await s.stop()
    tmp.cleanup()
    if keep_running:
        print("\nsekisho demo stopped; its temporary data directory is removed.")
    return 0


async def _explain_and_verify(
    base: str, key: str, data_dir: str, rid: str | None, rows: list[list[str]]
) -> None:
    """Fetch one receipt as a client would and verify it offline, as an auditor would."""
    import json
    import urllib.request

    from sekisho.ledger import Verifier, load_signer, verify_receipt

    print("\nWhat happened: every request was classified (finding types only, never values;")
    print("tool definitions included; an image it cannot read counts as confidential),")
    print("decided by the tenant's policy, written to the transparency ledger before any byte")
    print("went upstream, and answered with x-sekisho-* headers and a receipt. A refusal names")
    print("the rule and fact that excluded each endpoint; a failure never falls back outside")
    print("the eligible set.")
    if rid is None:
        return
    root = base.removesuffix("/v1")
    req = urllib.request.Request(
        f"{root}/ledger/receipts/{rid}", headers={"authorization": f"Bearer {key}"}
    )
    receipt = await asyncio.to_thread(lambda: json.load(urllib.request.urlopen(req, timeout=10)))
    path = Path(data_dir) / "receipt.json"
    path.write_text(json.dumps(receipt, indent=2))
    verifier_key = load_signer(Path(data_dir) / "keys" / "ledger.key").verifier().key_string()
    report = verify_receipt(receipt, [Verifier.from_key_string(verifier_key)])
    print(f"\nReceipt of request #{VERIFY_STEP} ({rid}), verified offline:")
    for check in report.checks:
        print(f"  ok  {check}")
    print("  The same check from a shell, with nothing but the receipt and the public key:")
    print(f"    sekisho verify {path} --key '{verifier_key}'")
    print("  (the receipt file lives as long as the demo: use --keep-running to try it)")


async def _run_step(i: int, step: Step, client: Any, config: Any) -> tuple[list[str], str | None]:
    import openai

    headers = {}
    if step.classification:  # header values are ASCII: 機密性3 travels percent-encoded
        headers["x-sekisho-classification"] = quote(step.classification)
    t0 = time.perf_counter()
    try:
        if step.embeddings:
            raw = await client.embeddings.with_raw_response.create(
                model=step.model, input=step.text, extra_headers=headers
            )
            res = raw.parse()
            tokens = str(res.usage.total_tokens)
        elif step.responses:
            raw = await client.responses.with_raw_response.create(
                model=step.model, input=step.text, stream=True, extra_headers=headers
            )
            tokens = "-"
            async for event in raw.parse():
                if event.type == "response.completed" and event.response.usage:
                    tokens = str(event.response.usage.total_tokens)
        elif step.stream:
            raw = await client.chat.completions.with_raw_response.create(
                model=step.model,
                messages=[{"role": "user", "content": step.text}],
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=headers,
            )
            tokens = "-"
            async for chunk in raw.parse():
                if chunk.usage:
                    tokens = str(chunk.usage.total_tokens)
        else:
            content: Any = step.text
            if step.image:
                content = [
                    {"type": "text", "text": step.text},
                    {"type": "image_url", "image_url": {"url": _IMAGE}},
                ]
            extra: dict[str, Any] = {}
            if step.tool_default is not None:
                param = {"type": "string", "default": step.tool_default}
                extra["tools"] = [
                    {
                        "type": "function",
                        "function": {
                            "name": "lookup_customer",
                            "parameters": {"type": "object", "properties": {"id": param}},
                        },
                    }
                ]
            raw = await client.chat.completions.with_raw_response.create(
                model=step.model,
                messages=[{"role": "user", "content": content}],
                extra_headers=headers,
                **extra,
            )
            res = raw.parse()
            tokens = str(res.usage.total_tokens) if res.usage else "-"
        ms = (time.perf_counter() - t0) * 1000
        h = raw.headers
        ep = config.catalogue.by_id[h["x-sekisho-endpoint"]]
        outcome = h.get("x-sekisho-classification", "")
        if h.get("x-sekisho-action"):
            outcome += f", {h['x-sekisho-action']}"
        receipt = h.get("x-sekisho-receipt", "-").split(" ")[0]
        return [
            str(i),
            step.title,
            ep.id,
            h["x-sekisho-jurisdiction"],
            _operator(ep),
            f"{ms:.1f}",
            tokens,
            receipt,
            outcome,
        ], h.get("x-sekisho-request-id")
    except openai.APIStatusError as exc:
        ms = (time.perf_counter() - t0) * 1000
        # The SDK's exc.message is "Error code: 502 - {...}": the gateway's own words are the
        # error object's message.
        body = exc.body if isinstance(exc.body, dict) else {}
        message = str(body.get("message") or exc.message)
        h = exc.response.headers
        tried = _tried(message)
        where = ["-", "-"]
        if len(tried) == 1 and tried[0] in config.catalogue.by_id:
            ep = config.catalogue.by_id[tried[0]]
            where = [ep.jurisdiction.label, _operator(ep)]
        return [
            str(i),
            step.title,
            f"failed: {', '.join(tried)}" if tried else "(not sent)",
            *where,
            f"{ms:.1f}",
            "-",
            h.get("x-sekisho-receipt", "-").split(" ")[0],
            f"HTTP {exc.status_code} {exc.code}: {_short_reason(message)}",
        ], h.get("x-sekisho-request-id")


def _operator(ep: Any) -> str:
    """The operator's country, and its parent company's where that is elsewhere."""
    parent = ep.operator.parent_country
    return f"{ep.operator.country}" + (f"/{parent}" if parent else "")


def _tried(message: str) -> list[str]:
    """The endpoints a failure says were tried (sent to, and failed), from its message."""
    found = re.search(r"\(tried: ([^;)]*)", message)
    if not found:
        return []
    return [t.split(" (")[0].strip() for t in found.group(1).split(", ") if t.strip()]


def _short_reason(message: str) -> str:
    """The rules named in a refusal (or the first sentence), short enough for a table cell."""
    rules = sorted(set(re.findall(r"\b([a-z0-9][a-z0-9.-]*/[a-z0-9][a-z0-9._-]*) \(", message)))
    if rules:
        return "excluded by " + ", ".join(rules)
    text = re.split(r"(?<=[.!?])\s", message, maxsplit=1)[0]
    return text if len(text) <= 70 else text[:67] + "..."


def _width(text: str) -> int:
    """Display width: East Asian wide characters take two columns."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def _print_table(rows: list[list[str]]) -> None:
    head = [
        "#",
        "request",
        "endpoint",
        "jurisdiction",
        "operator",
        "ms",
        "tokens",
        "receipt",
        "outcome",
    ]
    widths = [max(_width(r[c]) for r in [head, *rows]) for c in range(len(head))]
    print("  ".join(_pad(h, w) for h, w in zip(head, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(_pad(c, w) for c, w in zip(r, widths, strict=True)).rstrip())
    sys.stdout.flush()
