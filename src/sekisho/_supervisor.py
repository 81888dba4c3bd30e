"""``serve --workers N``: uvicorn's supervisor, with sekisho's rules for what its workers run.

- **One pinned configuration.** The supervisor keeps the bytes of the config file it validated
  in a snapshot (in its run directory, with their SHA-256 in the environment), and every worker
  it starts, a worker respawned after a crash included, serves that snapshot: a file edited on
  disk but not reloaded never goes live in one worker.
- **Reloads are all or nothing.** On SIGHUP (from systemd's ExecReload, or from a worker that
  took ``POST /admin/v1/policy/reload``) the supervisor reads the file again and judges it as
  a single process's reload does (``sekisho._reload.refusals``); a file refused keeps every
  worker. Otherwise it starts N new workers on a new snapshot; each opens everything (ledger,
  stores, Redis ...) and then waits at a gate, serving nothing. Only when all N are there does
  the supervisor open the gate and retire the old workers; if one fails to start, the new
  ones are stopped and the old ones keep serving the old configuration, every one of them.
- **Workers do not outlive it.** A worker whose supervisor is gone (killed with SIGKILL)
  drains and exits (``sekisho.app``), and a later supervisor removes the run directories of
  dead ones.

The run directory (``$TMPDIR/sekisho-run-PID-*``, owner-only) holds the snapshots, the shared
metrics (``metrics/``), the gates, and the admin route's reload requests and their outcomes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from socket import socket
from typing import Any

from uvicorn.config import Config as UvicornConfig
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from sekisho import _reload
from sekisho.config import Config, config_from_bytes, read_config_file
from sekisho.errors import ConfigError
from sekisho.metrics import write_supervisor_counts

log = logging.getLogger("sekisho.serve")

ENV_RUN_DIR = "SEKISHO_RUN_DIR"
ENV_SNAPSHOT = "SEKISHO_CONFIG_SNAPSHOT"
ENV_SNAPSHOT_SHA256 = "SEKISHO_CONFIG_SHA256"
ENV_GATE = "SEKISHO_RESTART_GATE"
RUN_PREFIX = "sekisho-run-"
REQUESTS = "reload-requests"
OUTCOMES = "reload-outcomes"
READY = "ready-"
GO = "go"

# How long new workers may take to open everything on a reload, and then to start serving.
START_SECONDS = float(os.environ.get("SEKISHO_WORKER_START_SECONDS") or 60)
SERVE_SECONDS = 30.0
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_STOPPING = {"ok": False, "kind": "aborted", "message": "the gateway is stopping"}


def sweep_stale_run_dirs(parent: Path | None = None) -> None:
    """Remove the run directories of supervisors that are gone (one killed with SIGKILL
    cannot remove its own); only this user's, only those whose process no longer exists."""
    root = Path(parent or tempfile.gettempdir())
    uid = os.getuid()
    for path in root.glob(f"{RUN_PREFIX}*"):
        pid = path.name.removeprefix(RUN_PREFIX).split("-", 1)[0]
        try:
            if not pid.isdigit() or path.lstat().st_uid != uid or not path.is_dir():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue  # alive (another user's process), or not ours to judge


class RunDir:
    """The supervisor's run directory, as both the supervisor and its workers see it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.metrics = root / "metrics"
        self.requests = root / REQUESTS
        self.outcomes = root / OUTCOMES

    @classmethod
    def make(cls) -> RunDir:
        run = cls(Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-")))
        for d in (run.metrics, run.requests, run.outcomes):
            d.mkdir(mode=0o700)
        return run

    def snapshot(self, data: bytes, generation: int) -> tuple[Path, str]:
        path = self.root / f"config-{generation}.yaml"
        path.write_bytes(data)
        return path, hashlib.sha256(data).hexdigest()


def load_snapshot(source: str) -> Config | None:
    """The pinned configuration a worker of the supervisor serves (None outside one): the
    snapshot's bytes, checked against their hash, named as the operator's file."""
    path = os.environ.get(ENV_SNAPSHOT)
    if not path:
        return None
    data = read_config_file(path)
    if hashlib.sha256(data).hexdigest() != os.environ.get(ENV_SNAPSHOT_SHA256):
        from sekisho.errors import ConfigProblem

        raise ConfigError(
            [ConfigProblem(path, "", "the supervisor's snapshot of the configuration changed")]
        )
    return config_from_bytes(data, source)


class Supervisor(Multiprocess):
    """uvicorn's ``Multiprocess`` with an all-or-nothing reload on SIGHUP (see the module)."""

    def __init__(
        self,
        config: UvicornConfig,
        sockets: list[socket],
        *,
        pinned: Config,
        data: bytes,
        flags: dict[str, Any],
        run: RunDir,
        listener: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(config, sockets)
        self.pinned = pinned
        self.flags = flags  # command-line overrides, applied to every reloaded file too
        self.run_dir = run
        self.generation = 0
        self._listener = listener  # server.tls -> uvicorn's ssl_context_factory
        # What /metrics shows of the supervisor (sekisho.metrics.SUPERVISOR_COUNTS): it never
        # answers a scrape, so it writes these where the worker answering one reads them.
        self.worker_deaths = 0
        self.reloads: dict[str, int] = {}
        self._pin(data)

    def _publish_counts(self) -> None:
        with contextlib.suppress(OSError):  # a metric must not stop a respawn or a reload
            write_supervisor_counts(self.run_dir.metrics, self.worker_deaths, self.reloads)

    def _pin(self, data: bytes) -> None:
        self.generation += 1
        path, digest = self.run_dir.snapshot(data, self.generation)
        os.environ[ENV_SNAPSHOT] = str(path)
        os.environ[ENV_SNAPSHOT_SHA256] = digest

    # -- a worker that died ----------------------------------------------------------------

    def keep_subprocess_alive(self) -> None:
        """uvicorn's respawn, with a warning that says which worker died, how, and what that
        cut: uvicorn says only "Child process [N] died", at info level, for what is often the
        OOM killer."""
        before = list(self.processes)
        super().keep_subprocess_alive()
        for old, new in zip(before, self.processes, strict=False):
            if old is not new:
                self.worker_deaths += 1
                self._publish_counts()
                log.warning(
                    "a worker died and a new one serves in its place; requests it had in "
                    "flight were cut (their clients saw the connection close), and `sekisho "
                    "ledger audit` lists those already decided as incomplete",
                    extra={"worker": old.pid, "how": _how(old.process.exitcode), "new": new.pid},
                )

    # -- SIGHUP ----------------------------------------------------------------------------

    def terminate_all(self) -> None:
        self._answer(self._requests(), _STOPPING)  # before their workers wait for them
        super().terminate_all()

    def _requests(self) -> list[str]:
        with contextlib.suppress(OSError):
            return sorted(p.name for p in self.run_dir.requests.iterdir())
        return []

    def _answer(self, requests: list[str], outcome: dict[str, Any]) -> None:
        """The outcome for each worker that asked for this reload (the admin route)."""
        for name in requests:
            with contextlib.suppress(OSError):
                (self.run_dir.requests / name).unlink()
            out = self.run_dir.outcomes / f"{name}.json"
            tmp = out.with_suffix(".tmp")
            with contextlib.suppress(OSError):
                tmp.write_text(json.dumps(outcome), encoding="utf-8")
                tmp.replace(out)

    def handle_hup(self) -> None:
        requests = self._requests()
        if self.should_exit.is_set():
            self._answer(requests, _STOPPING)
            return
        log.info("SIGHUP: reloading the configuration", extra={"pid": os.getpid()})
        retire: list[Process] = []
        try:
            outcome, retire = self.reload()
        except Exception as exc:  # never silent: someone sent the signal and waits
            log.exception("reload failed; every worker keeps the configuration in force")
            outcome = {"ok": False, "kind": "failed", "message": f"reload failed: {exc!r}"}
        result = "ok" if outcome["ok"] else "refused" if outcome["kind"] == "invalid" else "failed"
        self.reloads[result] = self.reloads.get(result, 0) + 1
        self._publish_counts()
        # The old workers stop accepting first; the one that took the admin request answers
        # it while it drains, once the outcome is written.
        for process in retire:
            process.terminate()
        self._answer(requests, outcome)
        for process in retire:
            process.join()

    def reload(self) -> tuple[dict[str, Any], list[Process]]:
        """Judge the file, then replace every worker or none; the outcome for the admin route."""
        source = self.pinned.source_file
        try:
            data = read_config_file(source)
            new = config_from_bytes(data, source).with_server(**self.flags)
            problems = _reload.refusals(self.pinned, new)
            if problems:
                raise ConfigError(problems)
        except ConfigError as exc:
            log.error(
                "policy reload refused; every worker keeps the configuration in force",
                extra={"problems": [str(p) for p in exc.problems]},
            )
            return {
                "ok": False,
                "kind": "invalid",
                "problems": [[p.file, p.path, p.reason] for p in exc.problems],
            }, []
        old_env = {k: os.environ.get(k) for k in (ENV_SNAPSHOT, ENV_SNAPSHOT_SHA256)}
        old_uvicorn = (
            self.config.ssl_context_factory,
            self.config.timeout_graceful_shutdown,
            self.config.timeout_keep_alive,
        )
        self._pin(data)
        if self._listener is not None and new.server.tls is not None:
            self.config.ssl_context_factory = self._listener(new.server.tls)
        self.config.timeout_graceful_shutdown = int(new.server.shutdown_grace_seconds)
        self.config.timeout_keep_alive = new.server.keep_alive_seconds  # type: ignore[assignment]
        gate = self.run_dir.root / f"gate-{self.generation}"
        gate.mkdir(mode=0o700)
        try:
            started = self._start_behind_gate(gate)
        finally:
            os.environ.pop(ENV_GATE, None)  # a worker respawned later starts serving at once
        if isinstance(started, str):
            for k, v in old_env.items():
                if v is not None:
                    os.environ[k] = v
            (
                self.config.ssl_context_factory,
                self.config.timeout_graceful_shutdown,
                self.config.timeout_keep_alive,
            ) = old_uvicorn
            self.generation -= 1
            with contextlib.suppress(OSError):
                (self.run_dir.root / f"config-{self.generation + 1}.yaml").unlink()
            shutil.rmtree(gate, ignore_errors=True)
            log.error(
                f"reload aborted: {started}; every worker keeps the configuration in force",
                extra={"pids": [p.pid for p in self.processes]},
            )
            return {"ok": False, "kind": "aborted", "message": started}, []
        (gate / GO).touch()
        for process in started:
            if not process.wait_until_ready(SERVE_SECONDS):
                # Past the gate a worker has opened everything once: it is replaced as a crashed
                # one is, from the new snapshot.
                log.warning("a new worker did not start serving", extra={"worker": process.pid})
        shutil.rmtree(gate, ignore_errors=True)
        with contextlib.suppress(OSError):  # the old workers read it when they started
            (self.run_dir.root / f"config-{self.generation - 1}.yaml").unlink()
        old, self.processes = self.processes, started
        before = {n: p.digest for n, p in self.pinned.policies.items()}
        after = {n: p.digest for n, p in new.policies.items()}
        held = [  # a command-line flag overrides the file's value anyway
            k
            for k in _reload.supervisor_held(self.pinned, new)
            if self.flags.get(k.removeprefix("server.")) is None
        ]
        self.pinned = new
        outcome: dict[str, Any] = {
            "ok": True,
            "policies": after,
            "changed": sorted(t for t in set(before) | set(after) if before.get(t) != after.get(t)),
        }
        if held:
            outcome["restart_needed"] = held
            log.warning(
                "configuration changes that take a restart of the supervisor were not applied",
                extra={"settings": held},
            )
        log.info(
            "every worker replaced with the new configuration",
            extra={"workers": [p.pid for p in started], "policies": after},
        )
        return outcome, old

    def _start_behind_gate(self, gate: Path) -> list[Process] | str:
        """N new workers, each holding at the gate once it has opened everything; or why not
        (each started one is stopped)."""
        os.environ[ENV_GATE] = str(gate)
        new: list[Process] = []
        try:
            for _ in range(self.processes_num):
                process = Process(self.config, self.sockets)
                process.start()
                new.append(process)
            deadline = time.monotonic() + START_SECONDS
            waiting = list(new)
            while waiting:
                if self.should_exit.is_set() or _STOP_SIGNALS & set(self.signal_queue):
                    raise _Abort("the supervisor is stopping")
                for process in list(waiting):
                    if (gate / f"{READY}{process.pid}").exists():
                        waiting.remove(process)
                    elif not process.process.is_alive():
                        raise _Abort(
                            f"a new worker [{process.pid}] exited before it was ready (its "
                            "log lines above say why)"
                        )
                if waiting and time.monotonic() > deadline:
                    raise _Abort(f"new workers were not ready within {START_SECONDS:g} s")
                time.sleep(0.05)
        except _Abort as exc:
            for process in new:
                process.kill()
            for process in new:
                process.join()
            return str(exc)
        return new


def _how(exitcode: int | None) -> str:
    """A dead worker's exit status in words: a signal by name (SIGKILL is what the OOM killer
    sends, and what uvicorn sends a worker that stopped answering its health check)."""
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if -exitcode == signal.SIGKILL:
            return f"killed by {name}: the OOM killer, an operator, or no answer to health checks"
        return f"killed by {name}"
    return f"exit status {exitcode}"


class _Abort(Exception):
    pass


# -- in a worker ---------------------------------------------------------------------------


def gate_path() -> Path | None:
    found = os.environ.get(ENV_GATE)
    return Path(found) if found else None


async def wait_at_gate(gate: Path, supervisor_pid: int | None) -> None:
    """Say this worker has started, then wait until the supervisor opens the gate (every new
    worker started); exit if the supervisor goes away instead."""
    import asyncio

    (gate / f"{READY}{os.getpid()}").touch()
    while not (gate / GO).exists():
        if supervisor_pid is not None and os.getppid() != supervisor_pid:
            raise RuntimeError("the supervisor went away during a reload")
        await asyncio.sleep(0.05)


async def request_reload(run_dir: Path, supervisor_pid: int, timeout: float) -> dict[str, Any]:
    """Ask the supervisor to reload (a request file, then SIGHUP) and wait for its outcome;
    {"ok": False, "kind": "timeout"} if it does not come in time, "gone" if the supervisor
    exits first."""
    import asyncio

    name = uuid.uuid4().hex
    run = RunDir(run_dir)
    (run.requests / name).touch()
    os.kill(supervisor_pid, signal.SIGHUP)
    out = run.outcomes / f"{name}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists():
            outcome: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
            with contextlib.suppress(OSError):
                out.unlink()
            return outcome
        if os.getppid() != supervisor_pid:
            return {"ok": False, "kind": "gone"}
        await asyncio.sleep(0.05)
    with contextlib.suppress(OSError):
        (run.requests / name).unlink()
    return {"ok": False, "kind": "timeout"}
