"""What the benchmark scripts share: their venvs, wrk, and the processes they start and stop.

Standard library only, so the scripts run under any Python 3.11. Every process is started in
its own session and stopped through that session's process group, by the PID we got when we
started it: nothing else on the machine is touched. ``Processes`` stops everything it started
on normal exit, on an exception, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
HARNESS = HERE / "harness"
REPO = HERE.parent.parent

BENCH_VENV = Path("/tmp/bench-venv")
LITELLM_VENV = Path("/tmp/litellm-venv")
CHOICES_VENV = Path("/tmp/choices-venv")
LITELLM_VERSION = "1.106.2"


def say(msg: str) -> None:
    print(f"# {msg}", flush=True)


def fail(msg: str) -> None:
    raise SystemExit(f"benchmark: {msg}")


# -- environments ---------------------------------------------------------------------------


def _venv_has(venv: Path, check: str) -> bool:
    python = venv / "bin" / "python"
    if not python.exists():
        return False
    r = subprocess.run([str(python), "-c", check], capture_output=True, timeout=120)
    return r.returncode == 0


def ensure_venv(venv: Path, packages: list[str], check: str) -> Path:
    """A venv under /tmp with ``packages``, made once; ``check`` is Python that exits 0 if ready."""
    if _venv_has(venv, check):
        return venv / "bin" / "python"
    say(f"setting up {venv}: pip install {' '.join(packages)} (once per machine)")
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
    r = subprocess.run([*pip, *packages], capture_output=True, text=True)
    if r.returncode != 0 or not _venv_has(venv, check):
        fail(f"could not set up {venv}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return venv / "bin" / "python"


def ensure_bench_venv() -> Path:
    """The mock upstream's Python: uvloop + httptools, as in the shared baseline."""
    return ensure_venv(BENCH_VENV, ["uvloop", "httptools"], "import uvloop, httptools")


def ensure_litellm_venv() -> Path:
    """LiteLLM exactly as the baseline ran it; never in the project's own venv."""
    check = (
        "import importlib.metadata as m, sys; "
        f"sys.exit(m.version('litellm') != '{LITELLM_VERSION}'); import opentelemetry.sdk"
    )
    ensure_venv(LITELLM_VENV, [f"litellm[proxy]=={LITELLM_VERSION}", "opentelemetry-sdk"], check)
    return LITELLM_VENV / "bin" / "litellm"


def ensure_wrk() -> str:
    """wrk from the system; install it with apt-get if missing, else fall back to loadgen.py.

    The fallback is a directory holding a ``wrk`` shim (our Python load generator with wrk's
    command line and the same JSON summary), put first on PATH for bench.py.
    """
    if shutil.which("wrk"):
        return "wrk"
    say("wrk not found: trying apt-get install -y wrk")
    r = subprocess.run(
        "apt-get install -y wrk || (apt-get update && apt-get install -y wrk)",
        shell=True,
        capture_output=True,
        text=True,
    )
    if r.returncode == 0 and shutil.which("wrk"):
        return "wrk"
    say(
        "apt-get could not install wrk (" + (r.stderr.strip().splitlines() or ["?"])[-1] + "); "
        "FALLING BACK to benchmarks/gateway/loadgen.py, a Python asyncio load generator with the "
        "same method and statistics. It costs more CPU per request than wrk, so absolute req/s "
        "are lower; ratios within the run stay comparable."
    )
    shim = Path("/tmp/sekisho-bench-wrk-shim")
    shim.mkdir(exist_ok=True)
    exe = shim / "wrk"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "loadgen.py"}" "$@"\n')
    exe.chmod(0o755)
    os.environ["PATH"] = f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"
    return "loadgen"


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_json(
    url: str, body: bytes | None = None, key: str = "", timeout: float = 5.0
) -> tuple[int, object]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        data = resp.read()
        try:
            return resp.status, json.loads(data)
        except ValueError:
            return resp.status, data


def completes(url: str, body: bytes, key: str = "") -> bool:
    """True when ``url`` answers one chat completion correctly."""
    try:
        status, obj = http_json(url, body, key, timeout=5)
    except Exception:
        return False
    return status == 200 and isinstance(obj, dict) and obj.get("object") == "chat.completion"


class Processes:
    """Starts processes in their own sessions; stops all of them however the run ends."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._cleanups: list[Callable[[], None]] = []

    def start(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as f:
            f.write(f"\n--- {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
            f.flush()
            proc = subprocess.Popen(
                cmd,
                env=env if env is not None else dict(os.environ),
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the group our own child leads
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc in self._procs:
            self._procs.remove(proc)

    def on_exit(self, cleanup: Callable[[], None]) -> None:
        self._cleanups.append(cleanup)

    def report_dead(self) -> None:
        """Say which started processes ended on their own (a crash under load must show)."""
        for proc in self._procs:
            code = proc.poll()
            if code is not None:
                how = f"signal {-code}" if code < 0 else f"status {code}"
                name = (
                    " ".join(str(a) for a in proc.args[:3]) if isinstance(proc.args, list) else ""
                )
                say(f"process {proc.pid} ({name}) had exited with {how}; logs in {self.logs}")

    def stop_all(self) -> None:
        self.report_dead()
        for proc in reversed(list(self._procs)):
            self.stop(proc)
        for cleanup in reversed(self._cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        self._cleanups.clear()

    @contextlib.contextmanager
    def running(self) -> Iterator[Processes]:
        """Stop everything on exit; turn SIGTERM into the same clean exit as Ctrl-C."""

        def on_term(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, on_term)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
            try:
                self.stop_all()
            finally:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, previous)

    def wait_until(
        self, proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str, timeout: float
    ) -> float:
        """Seconds from now until ``ready()``; fails naming the log if the process dies first."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if proc.poll() is not None:
                fail(f"{what} exited with status {proc.returncode}; see {self.logs}")
            if ready():
                return time.monotonic() - t0
            time.sleep(0.02)
        fail(f"{what} was not ready within {timeout:.0f}s; see {self.logs}")
        raise AssertionError  # unreachable: fail() raises


def start_mock(procs: Processes, python: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [str(python), str(HARNESS / "mock_upstream.py"), "--port", str(port)]
    proc = procs.start("mock", cmd)

    def up() -> bool:
        try:
            return http_json(f"http://127.0.0.1:{port}/health", timeout=1)[0] == 200
        except Exception:
            return False

    procs.wait_until(proc, up, "the mock upstream", 20)
    return proc


def chat_body(model: str = "mock-gpt") -> bytes:
    sys.path.insert(0, str(HARNESS))
    sys.dont_write_bytecode = True
    import bench  # type: ignore[import-not-found]  # the harness's own request, so the cold start sends what the load sends

    body: bytes = bench.make_bodies(model, 1000)["chat"]
    return body
