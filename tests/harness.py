"""A real gateway on a real loopback port, with simulated upstreams on real sockets.

The gateway and its simulators run in a background thread with their own event loop, so tests
can use the official ``openai`` client (sync and async) exactly as users do.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from sekisho.config import load_config, parse_config
from sekisho.identity import KeyStore
from sekisho.simulator import SimulatedEndpoint, SimulatorServer

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sekisho.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Harness:
    """Simulators + gateway in one background loop."""

    def __init__(
        self,
        config_yaml: dict[str, Any],
        data_dir: Path,
        sim_specs: dict[str, SimulatedEndpoint],
        config_path: Path | None = None,
        sim_tls: dict[str, ssl.SSLContext] | None = None,
    ) -> None:
        self.raw = config_yaml
        self.sim_tls = sim_tls or {}  # endpoint id -> server context: that simulator is https
        self.config_path = config_path  # when set, the config is written there and loaded from it
        self.data_dir = data_dir
        self.sim_specs = sim_specs
        self.sims: dict[str, SimulatorServer] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: uvicorn.Server | None = None
        self.gateway: Any = None
        self.port = free_port()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> Harness:
        self.thread.start()
        for eid, spec in self.sim_specs.items():
            sim = SimulatorServer(spec)
            self.call(sim.start(tls=self.sim_tls.get(eid)))
            self.sims[eid] = sim
        for ep in self.raw["endpoints"]:
            if ep["id"] in self.sims:
                url = self.sims[ep["id"]].base_url
                # Azure OpenAI's base URL is the resource root, not an /v1 API root
                ep["base_url"] = (
                    url.removesuffix("/v1") if ep.get("family") == "azure_openai" else url
                )
        self.raw["server"] = {
            **self.raw.get("server", {}),
            "data_dir": str(self.data_dir),
            "port": self.port,
            "host": "127.0.0.1",
        }
        from sekisho.api.protocol import HttpProtocol
        from sekisho.app import Gateway

        text = yaml.safe_dump(self.raw, allow_unicode=True)
        if self.config_path is not None:  # a real file, so that policy reloads can re-read it
            self.config_path.write_text(text, encoding="utf-8")
            config = load_config(self.config_path)
        else:
            config = parse_config(text, "test-config.yaml")
        self.gateway = Gateway(config)
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.gateway,
                host="127.0.0.1",
                port=self.port,
                loop="asyncio",
                http=HttpProtocol,
                lifespan="on",
                access_log=False,
                log_config=None,
                timeout_graceful_shutdown=5,
            )
        )
        server = self.server
        # Bind here and hand uvicorn the socket: no window in which another process can take
        # the port between choosing it and listening on it.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]

        async def serve() -> None:
            await server.serve(sockets=[sock])

        self._serving = asyncio.run_coroutine_threadsafe(serve(), self.loop)
        deadline = time.time() + 10
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            # a failed shutdown must not hide the test's own result
            with contextlib.suppress(Exception):
                self._serving.result(15)
        for sim in self.sims.values():
            self.call(sim.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def key(self, tenant: str = "demo", **kw: Any) -> str:
        store = KeyStore(self.data_dir / "identity.db")
        key, _ = store.create(tenant, **kw)
        return key

    def fault(self, endpoint_id: str, **kw: Any) -> None:
        from sekisho.simulator import Faults

        self.sims[endpoint_id].faults = Faults(**kw)

    def bytes_received(self) -> dict[str, int]:
        return {k: s.stats.bytes_received for k, s in self.sims.items()}

    def reset_stats(self) -> None:
        from sekisho.simulator import SimStats

        for s in self.sims.values():
            s.stats = SimStats()


def example_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    return data


def demo_sim_specs(keep_bodies: bool = True, **kw: Any) -> dict[str, SimulatedEndpoint]:
    from sekisho.simulator import DEMO_ENDPOINTS

    out = {}
    for spec, _ in DEMO_ENDPOINTS:
        out[spec.name] = SimulatedEndpoint(
            spec.name, spec.label, spec.models, keep_bodies=keep_bodies, **kw
        )
    return out


def start_example(
    tmp: Path,
    mutate: Callable[[dict[str, Any]], None] | None = None,
    *,
    config_path: Path | None = None,
    sim_tls: dict[str, ssl.SSLContext] | None = None,
    **sim_kw: Any,
) -> Harness:
    """The example config's gateway; with ``config_path`` its config is a real file there;
    ``sim_tls`` makes the named simulators serve https with the given server contexts."""
    raw = example_config()
    raw["routing"]["health"]["probe_interval_seconds"] = 0
    if mutate is not None:
        mutate(raw)
    specs = demo_sim_specs(**sim_kw)
    return Harness(raw, tmp, specs, config_path=config_path, sim_tls=sim_tls).start()


class Resp:
    """A plain HTTP response for tests that need to send what no SDK would."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.content = body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        import json

        return json.loads(self.content)


def request(
    method: str,
    url: str,
    *,
    content: Any = None,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
    tls: ssl.SSLContext | None = None,
) -> Resp:
    """One HTTP/1.1 request with the standard library (chunked when content is an iterator);
    an https URL is fetched with the client context ``tls``."""
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=tls)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    hdrs = dict(headers or {})
    body = content
    if json_body is not None:
        body = json.dumps(json_body).encode()
        hdrs.setdefault("content-type", "application/json")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    chunked = body is not None and not isinstance(body, bytes | str)
    if isinstance(body, str):
        body = body.encode()
    conn.request(method, path, body=body, headers=hdrs, encode_chunked=chunked)
    r = conn.getresponse()
    data = r.read()
    out = Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    conn.close()
    return out


def metric_sample(root: str, name: str, **labels: str) -> float | None:
    """The value of the series ``name{labels}`` (others may be set too) on the gateway's
    /metrics at ``root``, parsed as Prometheus parses it; None if there is none."""
    from prometheus_client.parser import text_string_to_metric_families

    text = request("GET", f"{root}/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


# -- helpers for the invariant, ledger and store specifications (additive) -----------------------


def refuse_connections(h: Harness, endpoint_id: str) -> None:
    """Stop an endpoint's simulator so that connecting to it is refused (nothing listens)."""
    h.call(h.sims[endpoint_id].stop())


def sim_specs_for(
    endpoint_ids: list[str], models: tuple[str, ...] = ("sim-chat",), **kw: Any
) -> dict[str, SimulatedEndpoint]:
    """One simulator per endpoint id, each serving ``models``."""
    return {eid: SimulatedEndpoint(eid, f"Simulated {eid}", models, **kw) for eid in endpoint_ids}


def start_config(tmp: Path, raw: dict[str, Any], **sim_kw: Any) -> Harness:
    """A gateway for ``raw`` (a whole config), with a simulator behind every endpoint."""
    raw.setdefault("routing", {}).setdefault("health", {})["probe_interval_seconds"] = 0
    ids = [ep["id"] for ep in raw["endpoints"]]
    models = tuple(sorted({m["id"] for ep in raw["endpoints"] for m in ep["models"]}))
    return Harness(raw, tmp, sim_specs_for(ids, models, **sim_kw)).start()


def receipt(h: Harness, request_id: str, key: str, **params: int) -> Resp:
    """GET /ledger/receipts/{request_id} with ``key``."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return request(
        "GET",
        f"{h.root}/ledger/receipts/{request_id}" + (f"?{query}" if query else ""),
        headers={"authorization": f"Bearer {key}"},
    )


def ledger_entries(receipt_json: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The decision entry and the outcome entry (or None) of a receipt, parsed."""
    import base64
    import json

    decision = json.loads(base64.b64decode(receipt_json["entry"]))
    outcome = receipt_json.get("outcome")
    return decision, json.loads(base64.b64decode(outcome["entry"])) if outcome else None


def ledger_incomplete(h: Harness) -> list[Any]:
    """Requests whose decision has no outcome, as `sekisho ledger audit` reports them."""
    import json

    done = subprocess.run(
        [sys.executable, "-m", "sekisho", "ledger", "audit", "--data-dir", str(h.data_dir),
         "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert report["ok"], report
    return list(report["incomplete"])


def endpoints_check(tmp: Path, raw: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    """`sekisho endpoints check --config FILE ARGS` on ``raw`` written to a file under ``tmp``."""
    config = tmp / "check.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "sekisho", "endpoints", "check", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
