"""Gateways in other processes: `python -m sekisho serve` as users start it, beside simulators
and an identity provider that run on a background loop of the test process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import yaml

from harness import demo_sim_specs, example_config, free_port, request
from sekisho.identity import KeyStore
from sekisho.simulator import Faults, SimulatedEndpoint, SimulatorServer


class LoopThread:
    """An event loop in a daemon thread, for servers a test runs beside the gateway."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Simulators:
    """The three demo simulators on ephemeral ports, for gateways running in other processes."""

    def __init__(self, specs: dict[str, SimulatedEndpoint] | None = None) -> None:
        self.specs = specs if specs is not None else demo_sim_specs()
        self.sims: dict[str, SimulatorServer] = {}
        self.loop = LoopThread()

    def start(self) -> Simulators:
        for eid, spec in self.specs.items():
            sim = SimulatorServer(spec)
            self.loop.call(sim.start())
            self.sims[eid] = sim
        return self

    def stop(self) -> None:
        for sim in self.sims.values():
            self.loop.call(sim.stop())
        self.loop.stop()

    def fault(self, endpoint_id: str, **kw: Any) -> None:
        self.sims[endpoint_id].faults = Faults(**kw)

    def config(self, mutate: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """The example config, serving through these simulators, active probes off."""
        raw = example_config()
        raw["routing"]["health"]["probe_interval_seconds"] = 0
        for ep in raw["endpoints"]:
            if ep["id"] in self.sims:
                ep["base_url"] = self.sims[ep["id"]].base_url
        if mutate is not None:
            mutate(raw)
        return raw


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


class ServeProcess:
    """`python -m sekisho serve --config FILE --port P --data-dir D [--workers N]`, its stderr
    (the JSON log) kept in a file so that tests can read every line."""

    def __init__(
        self,
        config_file: Path,
        data_dir: Path,
        *,
        port: int | None = None,
        workers: int | None = None,
        extra_env: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.tls = tls  # a client context: the gateway serves https (server.tls in its config)
        self.config_file = config_file
        self.data_dir = data_dir
        self.fixed_port = port is not None
        self.port = port or free_port()
        self.workers = workers
        self.stderr_path = data_dir.parent / f"serve-{self.port}.stderr"
        self.env = {**os.environ, **(extra_env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def args(self) -> list[str]:
        args = [sys.executable, "-m", "sekisho", "serve", "--config", str(self.config_file),
                "--port", str(self.port), "--data-dir", str(self.data_dir)]  # fmt: skip
        if self.workers is not None:
            args += ["--workers", str(self.workers)]
        return args

    def start(self, timeout: float = 30) -> ServeProcess:
        # The port was free when chosen, but any socket (an outgoing connection's ephemeral
        # port, say) may take it before the server binds: then choose another and start again.
        for _ in range(5):
            try:
                return self._start(timeout)
            except RuntimeError as exc:
                if "address already in use" not in str(exc).lower() or self.fixed_port:
                    raise
                self.port = free_port()
                self.stderr_path = self.data_dir.parent / f"serve-{self.port}.stderr"
        return self._start(timeout)

    def _start(self, timeout: float) -> ServeProcess:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.args, stdout=subprocess.DEVNULL, stderr=err, env=self.env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sekisho serve exited with {self.proc.returncode}:\n{self.stderr()}"
                )
            try:
                if (
                    request("GET", f"{self.root}/readyz", timeout=2, tls=self.tls).status_code
                    == 200
                ):
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sekisho serve was not ready within {timeout} s:\n{self.stderr()}")

    @property
    def root(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def key(self, tenant: str = "demo", **kw: Any) -> str:
        key, _ = KeyStore(self.data_dir / "identity.db").create(tenant, **kw)
        return key

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log(self) -> list[dict[str, Any]]:
        """Every stderr line, parsed as JSON (a line that is not JSON fails the parse loudly)."""
        out = []
        for line in self.stderr().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise AssertionError(f"stderr line is not JSON: {line!r}") from exc
        return out

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
