"""``sekisho demo``: the five-minute tour. Starts three simulated endpoints and the gateway on
loopback, sends a scripted set of requests with the official ``openai`` client, and prints what
happened to each: where it went, under which jurisdiction and operator, and why."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sekisho.yaml"


@dataclass
class Step:
    title: str
    model: str
    text: str
    stream: bool = False
    embeddings: bool = False
    classification: str | None = None
    fault: str | None = None  # endpoint id to take down first


SCRIPT = (
    Step("plain question", "gpt-4o", "What is a sekisho?"),
    Step("streamed answer", "gpt-4o", "Stream a haiku about borders.", stream=True),
    Step("embeddings", "text-embedding-3-small", "関所 checkpoint", embeddings=True),
    Step("personal data (APPI)", "gpt-4o",
         "山田太郎様 (taro.yamada@example.co.jp, 090-1234-5678) の契約更新メールを書いて"),
    Step("My Number (番号法)", "gpt-4o", "マイナンバーは 1234 5678 9018 です。手続きを教えて"),
    Step("declared 機密性3", "gpt-4o", "Summarise the board minutes.", classification="機密性3"),
    Step("domestic endpoint down", "gpt-4o", "Failover, please.", fault="sim-domestic-tokyo"),
)


def _config_text() -> str:
    return EXAMPLE.read_text(encoding="utf-8")


async def run_demo(*, port: int = 0, keep_running: bool = False) -> int:
    import openai
    import uvicorn

    from sekisho.app import Gateway
    from sekisho.config import parse_config
    from sekisho.harness_port import free_port
    from sekisho.identity import KeyStore
    from sekisho.simulator import Faults, start_demo_simulators

    sims = await start_demo_simulators(base_port=0)
    by_name = {s.spec.name: s for s in sims}
    raw: dict[str, Any] = yaml.safe_load(_config_text())
    for ep in raw["endpoints"]:
        ep["base_url"] = by_name[ep["id"]].base_url
    tmp = tempfile.TemporaryDirectory(prefix="sekisho-demo-")
    port = port or free_port()
    raw["server"].update({"data_dir": tmp.name, "port": port, "host": "127.0.0.1"})
    raw["routing"]["health"]["probe_interval_seconds"] = 0
    config = parse_config(yaml.safe_dump(raw, allow_unicode=True), str(EXAMPLE))
    gateway = Gateway(config)
    server = uvicorn.Server(uvicorn.Config(gateway, host="127.0.0.1", port=port,
                                           log_config=None, access_log=False, lifespan="on"))
    serve = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    key, _ = KeyStore(Path(tmp.name) / "identity.db").create("demo", name="demo")
    base = f"http://127.0.0.1:{port}/v1"
    print(f"sekisho demo — gateway on {base}, three SIMULATED endpoints (not real models):")
    for s in sims:
        ep = config.catalogue.by_id[s.spec.name]
        print(f"  {ep.id:<22} {ep.jurisdiction.country}/{ep.jurisdiction.region:<10} "
              f"operator {ep.operator.name} [{ep.operator.country}"
              f"{'/' + ep.operator.parent_country if ep.operator.parent_country else ''}]")
    print(f"tenant 'demo' policy: extends {raw['tenants']['demo']['policy'].get('extends')}\n")

    client = openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0)
    rows: list[list[str]] = []
    for i, step in enumerate(SCRIPT, 1):
        if step.fault:
            by_name[step.fault].faults = Faults(mode="status", status=503)
        rows.append(await _run_step(i, step, client, config))
        if step.fault:
            by_name[step.fault].faults = Faults()
    _print_table(rows)
    await client.close()
    if keep_running:
        print(f"\nThe gateway stays up on {base} — try it with this key (Ctrl-C to stop):\n{key}")
        with contextlib.suppress(asyncio.CancelledError):
            await serve
    server.should_exit = True
    await serve
    for s in sims:
        await s.stop()
    tmp.cleanup()
    return 0


async def _run_step(i: int, step: Step, client: Any, config: Any) -> list[str]:
    import openai

    headers = {"x-sekisho-classification": step.classification} if step.classification else {}
    t0 = time.perf_counter()
    try:
        if step.embeddings:
            raw = await client.embeddings.with_raw_response.create(
                model=step.model, input=step.text, extra_headers=headers)
            res = raw.parse()
            tokens = str(res.usage.total_tokens)
        elif step.stream:
            raw = await client.chat.completions.with_raw_response.create(
                model=step.model, messages=[{"role": "user", "content": step.text}], stream=True,
                stream_options={"include_usage": True}, extra_headers=headers)
            tokens = "-"
            async for chunk in raw.parse():
                if chunk.usage:
                    tokens = str(chunk.usage.total_tokens)
        else:
            raw = await client.chat.completions.with_raw_response.create(
                model=step.model, messages=[{"role": "user", "content": step.text}],
                extra_headers=headers)
            res = raw.parse()
            tokens = str(res.usage.total_tokens) if res.usage else "-"
        ms = (time.perf_counter() - t0) * 1000
        h = raw.headers
        ep = config.catalogue.by_id[h["x-sekisho-endpoint"]]
        outcome = h.get("x-sekisho-classification", "")
        if h.get("x-sekisho-action"):
            outcome += f", {h['x-sekisho-action']}"
        return [str(i), step.title, ep.id, h["x-sekisho-jurisdiction"],
                f"{ep.operator.country}" + (f"/{ep.operator.parent_country}"
                                            if ep.operator.parent_country else ""),
                f"{ms:.1f}", tokens, outcome]
    except openai.APIStatusError as exc:
        ms = (time.perf_counter() - t0) * 1000
        msg = exc.message if len(exc.message) < 70 else exc.message[:67] + "..."
        return [str(i), step.title, "— refused —", "-", "-", f"{ms:.1f}", "-",
                f"HTTP {exc.status_code} {exc.code}: {msg}"]


def _print_table(rows: list[list[str]]) -> None:
    head = ["#", "request", "endpoint", "jurisdiction", "operator", "ms", "tokens", "outcome"]
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    widths[-1] = min(widths[-1], 90)
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    sys.stdout.flush()
