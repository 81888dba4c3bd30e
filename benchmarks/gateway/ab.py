#!/usr/bin/env python3
"""A/B: two or more builds of sekisho side by side on one mock, to decide a change by measuring.

    python3 benchmarks/gateway/ab.py SRC_A SRC_B [SRC ...] [--kind chat|stream] [--c 16]
        [--seconds 8] [--rounds 4] [--threads] [--profile NAME] [--patch NAME=FILE]

Each SRC is a copy of ``src/`` (e.g. ``cp -r src /tmp/ab/before`` before an edit, then
``cp -r src /tmp/ab/after``); every build runs as its own ``sekisho serve`` process with
``PYTHONPATH=SRC`` and the project's venv, on a fresh data directory with
``config_for_mock.sh``'s config, in front of one shared mock. wrk loads them in turn, order
alternating per round, after a 2 s warm-up each; CPU per request comes from the process's
threads in ``/proc`` (``--threads`` prints each thread's share: the event loop, the ledger's
writer, each store's writer). The last lines give each build's median req/s and CPU per
request and their ratios to the first build. On this shared, noisy machine only ratios
measured in one run mean anything; run 3–4 rounds and distrust differences under ~5%.

``--patch NAME=FILE`` merges a YAML file into build NAME's generated config (mappings key by
key, lists item by item), to A/B a setting with the same src twice.

``--profile NAME`` samples the build whose folder is named NAME with py-spy (``--gil
--threads``, 400 Hz) during its first round and writes collapsed stacks to
``/tmp/ab-profile-NAME.txt``; py-spy must be on PATH or in ``/tmp/prof-venv``.
Standard library only (plus wrk and the venvs ``run.py`` sets up).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True

import procs  # noqa: E402
from procs import HARNESS, REPO, Processes, completes, fail, free_port, say  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, tuple[float, float]]:
    """User and system CPU seconds of each thread of ``pid``, by ``name:tid``."""
    out: dict[str, tuple[float, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out[f"{name}:{tid}"] = (int(fields[11]) / TICKS, int(fields[12]) / TICKS)
    return out


def _path(value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        fail(f"--patch: no file {path}")
    return path


def total(cpu: dict[str, tuple[float, float]]) -> float:
    return sum(user + system for user, system in cpu.values())


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    candidate = Path("/tmp/prof-venv/bin/py-spy")
    return str(candidate) if candidate.exists() else None


class Build:
    def __init__(
        self, src: Path, procs_: Processes, mock_url: str, python: Path, patch: Path | None
    ) -> None:
        self.src = src
        self.name = src.name
        self.port = free_port()
        data = Path(tempfile.mkdtemp(prefix=f"sekisho-ab-{self.name}-"))
        procs_.on_exit(lambda: shutil.rmtree(data, ignore_errors=True))
        config = data / "sekisho.yaml"
        config.write_text(
            subprocess.run(
                ["bash", str(REPO / "benchmarks" / "config_for_mock.sh"), mock_url, str(self.port)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        if patch is not None:
            merged = subprocess.run(
                [str(python), "-c", _MERGE, str(config), str(patch)],
                capture_output=True,
                text=True,
            )
            if merged.returncode != 0:
                fail(f"--patch {patch}: {merged.stderr.strip()[-400:]}")
            config.write_text(merged.stdout)
        env = {**os.environ, "PYTHONPATH": str(src)}
        create = ["keys", "create", "--tenant", "demo", "--data-dir", str(data)]
        made = subprocess.run(
            [str(python), "-m", "sekisho", *create],
            env=env,
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            fail(f"{src}: `sekisho keys create` failed: {made.stderr.strip()[-400:]}")
        self.key = made.stdout.strip().splitlines()[-1]
        cmd = [str(python), "-m", "sekisho", "serve", "--config", str(config)]
        self.proc = procs_.start(f"sekisho-{self.name}", [*cmd, "--data-dir", str(data)], env)
        self.base = f"http://127.0.0.1:{self.port}"
        body = procs.chat_body()
        procs_.wait_until(
            self.proc,
            lambda: completes(f"{self.base}/v1/chat/completions", body, self.key),
            f"sekisho ({src})",
            60,
        )


# Merge a YAML patch into the generated config (the project venv has PyYAML): mappings key by
# key, lists item by item (``endpoints: [{max_concurrency: 64}]`` patches the one endpoint).
_MERGE = """
import sys, yaml
def merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: merge(base.get(k), v) for k, v in patch.items()}}
    if isinstance(base, list) and isinstance(patch, list):
        return [merge(b, p) for b, p in zip(base, patch)] + base[len(patch):]
    return patch
config = yaml.safe_load(open(sys.argv[1]))
print(yaml.safe_dump(merge(config, yaml.safe_load(open(sys.argv[2]))), sort_keys=False))
"""


def load(
    wrk: str, url: str, key: str, body_file: Path, conns: int, seconds: int
) -> dict[str, float]:
    """wrk POSTing ``body_file`` to ``url`` with ``key``; its JSON summary."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = {**os.environ, "BENCH_BODY": str(body_file), "BENCH_OUT": out.name}
        env["BENCH_API_KEY"] = key
        cmd = [wrk, "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "30s"]
        cmd += ["-s", str(HARNESS / "wrk_post.lua"), url]
        subprocess.run(cmd, env=env, capture_output=True, check=True)
        summary: dict[str, float] = json.loads(Path(out.name).read_text())
        return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("srcs", nargs="+", type=Path, help="copies of src/ to compare (2 or more)")
    ap.add_argument("--kind", choices=["chat", "stream"], default="chat")
    ap.add_argument("--c", type=int, default=16, help="connections (concurrency)")
    ap.add_argument("--seconds", type=int, default=8, help="measured seconds per run")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", action="store_true", help="print CPU per request per thread")
    ap.add_argument("--profile", metavar="NAME", help="py-spy the build in folder NAME")
    ap.add_argument(
        "--patch",
        metavar="NAME=FILE",
        action="append",
        default=[],
        help="merge a YAML file into build NAME's config (A/B a setting: same src twice)",
    )
    args = ap.parse_args()
    if len(args.srcs) < 2:
        fail("give at least two builds (copies of src/) to compare")
    for src in args.srcs:
        if not (src / "sekisho" / "__init__.py").exists():
            fail(f"{src} is not a copy of src/ (no sekisho/__init__.py in it)")
    if len({s.name for s in args.srcs}) != len(args.srcs):
        fail("the builds' folder names must differ (they name the rows)")
    python = REPO / ".venv" / "bin" / "python"
    if not python.exists():
        fail("no project venv: run `./run test` once first")
    wrk = procs.ensure_wrk()
    spy = py_spy() if args.profile else None
    if args.profile and spy is None:
        fail("--profile needs py-spy (pip install py-spy into /tmp/prof-venv)")

    sys.path.insert(0, str(HARNESS))
    import bench  # type: ignore[import-not-found]

    logs = Path(tempfile.mkdtemp(prefix="sekisho-ab-logs-"))
    with Processes(logs).running() as procs_:
        mock_port = free_port()
        procs.start_mock(procs_, procs.ensure_bench_venv(), mock_port)
        mock_url = f"http://127.0.0.1:{mock_port}/v1"
        body_file = logs / "body.json"
        body_file.write_bytes(bench.make_bodies("mock-gpt", 1000)[args.kind])
        patches = dict(p.split("=", 1) for p in args.patch if "=" in p)
        if len(patches) != len(args.patch) or not set(patches) <= {s.name for s in args.srcs}:
            fail("--patch takes NAME=FILE, NAME a build's folder name")
        builds = [
            Build(src.resolve(), procs_, mock_url, python, _path(patches.get(src.name)))
            for src in args.srcs
        ]
        say(f"{len(builds)} builds on {mock_url}; {args.kind} c{args.c}, {args.rounds} rounds")
        rows: dict[str, list[tuple[float, float]]] = {b.name: [] for b in builds}
        for r in range(args.rounds):
            for b in builds if r % 2 == 0 else builds[::-1]:
                url = f"{b.base}/v1/chat/completions"
                load(wrk, url, b.key, body_file, args.c, 2)  # warm-up, not recorded
                before = thread_cpu(b.proc.pid)
                spying = None
                if spy and r == 0 and b.name == args.profile:
                    out = f"/tmp/ab-profile-{b.name}.txt"
                    cmd = [spy, "record", "-p", str(b.proc.pid), "-d", str(args.seconds)]
                    cmd += ["-r", "400", "-f", "raw", "-o", out, "--nonblocking", "--threads"]
                    spying = subprocess.Popen([*cmd, "--gil"], stdout=subprocess.DEVNULL)
                w = load(wrk, url, b.key, body_file, args.c, args.seconds)
                if spying is not None:
                    spying.wait()
                after = thread_cpu(b.proc.pid)
                n = max(1, int(w["requests"]))
                rps = n / (w["duration_us"] / 1e6)
                cpu_ms = (total(after) - total(before)) * 1000 / n
                errors = sum(int(w[k]) for k in ("err_status", "err_read", "err_timeout"))
                rows[b.name].append((rps, cpu_ms))
                p50, p99 = w["p50"] / 1000, w["p99"] / 1000
                print(
                    f"r{r + 1} {b.name:24} {rps:9,.0f} req/s  {cpu_ms:6.3f} ms CPU/req  "
                    f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  errors {errors}",
                    flush=True,
                )
                if args.threads:
                    for t, (user, system) in sorted(after.items()):
                        user0, system0 = before.get(t, (0.0, 0.0))
                        u, k = (user - user0) * 1000 / n, (system - system0) * 1000 / n
                        if u + k >= 0.005:
                            split = f"(user {u:.3f}, system {k:.3f})"
                            print(f"      {t:30} {u + k:6.3f} ms/req  {split}")
        print("---")
        first = None
        for name, got in rows.items():
            rps = statistics.median(x for x, _ in got)
            cpu = statistics.median(y for _, y in got)
            first = first or (rps, cpu)
            print(
                f"{name:24} median {rps:9,.0f} req/s ({rps / first[0]:.3f}x)  "
                f"{cpu:6.3f} ms CPU/req ({cpu / first[1]:.3f}x)"
            )


if __name__ == "__main__":
    main()
