"""Prometheus metrics, labelled by endpoint and jurisdiction so that an operator can see, per
border, how much went where."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.samples import Sample

# Set (by ``serve --workers N``) before the workers start: every worker then keeps its values in
# files there, and whichever worker answers /metrics sums them all (prometheus_client's
# multiprocess mode), so a scrape sees the whole gateway, not one worker of it.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db")


def multiprocess_dir() -> Path | None:
    found = os.environ.get(MULTIPROC_ENV)
    return Path(found) if found else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, run by another user
    return True


# With several workers, what only the supervisor sees (workers that died, the reloads it
# judged), as JSON in the shared metrics directory: it is one process that never serves a
# scrape, so it writes this file and the worker that answers adds it in (``_WithSupervisor``).
SUPERVISOR_COUNTS = "supervisor.json"


def write_supervisor_counts(shared_dir: Path, deaths: int, reloads: dict[str, int]) -> None:
    """Replace the supervisor's counts (atomically: a scrape never reads half a file)."""
    path = shared_dir / SUPERVISOR_COUNTS
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"worker_deaths": deaths, "reloads": reloads}), encoding="utf-8")
    tmp.replace(path)


def _read_supervisor_counts(path: Path) -> tuple[int, dict[str, int]]:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
        reloads = {str(k): int(v) for k, v in found["reloads"].items()}
        return int(found["worker_deaths"]), reloads
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0, {}  # not written yet (no worker died, nothing reloaded)


class _WithSupervisor:
    """The workers' metrics (prometheus_client's multiprocess collector), with the supervisor's
    counts: ``sekisho_worker_deaths_total``, and its reloads added to ``sekisho_reloads_total``
    (a reload a worker refused before asking the supervisor is in the workers' files)."""

    def __init__(self, workers: Any, counts: Path) -> None:
        self.workers = workers
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        deaths, reloads = _read_supervisor_counts(self.counts)
        for family in self.workers.collect():
            if family.name == "sekisho_reloads":
                family.samples = _added(family.samples, "sekisho_reloads_total", reloads)
                reloads = {}
            yield family
        if reloads:
            family = CounterMetricFamily(
                "sekisho_reloads", "Configuration reloads, by result", labels=["result"]
            )
            for result, n in sorted(reloads.items()):
                family.add_metric([result], n)
            yield family
        yield CounterMetricFamily(
            "sekisho_worker_deaths",
            "Workers of serve --workers N that died (crashed, killed: the OOM killer) and were "
            "replaced; requests they had in flight were cut",
            value=deaths,
        )


def _added(samples: list[Sample], name: str, extra: dict[str, int]) -> list[Sample]:
    out = []
    for sample in samples:
        more = extra.pop(sample.labels.get("result", ""), 0) if sample.name == name else 0
        out.append(sample._replace(value=sample.value + more) if more else sample)
    out.extend(Sample(name, {"result": result}, float(n)) for result, n in sorted(extra.items()))
    return out


_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.shared_dir = multiprocess_dir()
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "sekisho_requests",
            "Requests answered, by route, status, endpoint and jurisdiction",
            ["route", "status", "endpoint", "jurisdiction"],
            registry=r,
        )
        self.latency = Histogram(
            "sekisho_request_duration_seconds",
            "Time from request received to response complete",
            ["route", "endpoint", "jurisdiction"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "sekisho_upstream_latency_seconds",
            "The endpoint's own latency as the gateway sees it: from sending the request to the "
            "whole answer (mode=answer) or, for a stream, its first event (mode=first_event)",
            ["endpoint", "jurisdiction", "mode"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "sekisho_time_to_first_token_seconds",
            "Streams: from the request's arrival to its first event sent to the client",
            ["endpoint", "jurisdiction"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "sekisho_tokens",
            "Tokens reported by upstreams",
            ["endpoint", "jurisdiction", "direction"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "sekisho_upstream_errors",
            "Upstream failures (connect, timeout, status, protocol)",
            ["endpoint", "jurisdiction", "reason"],
            registry=r,
        )
        self.endpoint_busy = Counter(
            "sekisho_endpoint_busy",
            "Requests that found no free slot of an endpoint at its max_concurrency in time",
            ["endpoint", "jurisdiction"],
            registry=r,
        )
        self.policy_refusals = Counter(
            "sekisho_policy_refusals",
            "Requests refused by the sovereignty policy",
            ["tenant", "level"],
            registry=r,
        )
        # Requests refused because a rate or budget of their key or tenant had no room left
        # (429 rate_limit_exceeded, insufficient_quota): which tenant, which limit.
        self.limit_refusals = Counter(
            "sekisho_limit_refusals",
            "Requests refused by a limit with no room left, by tenant, scope (key, tenant) "
            "and limit (requests_per_minute, tokens_per_minute, tokens_per_day, "
            "tokens_per_month)",
            ["tenant", "scope", "limit"],
            registry=r,
        )
        # What the classifier saw, for security dashboards and alerts: types and counts only,
        # never values (the ledger holds the per-request record).
        self.classified = Counter(
            "sekisho_classified_requests",
            "Requests classified, by tenant and level (refused ones included)",
            ["tenant", "level"],
            registry=r,
        )
        self.findings = Counter(
            "sekisho_findings",
            "Requests containing each finding type (UNINSPECTED_* included), by tenant",
            ["tenant", "type"],
            registry=r,
        )
        # One process: the gateway's own count, read at scrape time (``set_function``). Several:
        # each worker adds and subtracts, and a scrape sums the live workers.
        self.in_flight = Gauge(
            "sekisho_in_flight_requests",
            "Requests being served",
            registry=r,
            multiprocess_mode="livesum",
        )
        # Passive health is learned per process: with several workers, one series per worker
        # (a ``pid`` label), as it was when that worker last looked.
        self.endpoint_up = Gauge(
            "sekisho_endpoint_up",
            "1 when passive health considers the endpoint up",
            ["endpoint", "jurisdiction"],
            registry=r,
            multiprocess_mode="liveall",
        )
        # Per model name a client may ask for (an id or an alias): how many of the endpoints
        # serving it are up, so that "nothing can answer this model" is one series at 0.
        # Several workers: the most any live one sees up.
        self.model_endpoints_up = Gauge(
            "sekisho_model_endpoints_up",
            "Endpoints serving the model (by the name clients ask for: an id or an alias) that "
            "passive health considers up",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )

        # Each endpoint's concurrency, against its max_concurrency: in flight and waiting for a
        # slot, from this gateway (summed over its live workers), read at scrape time.
        self.endpoint_in_flight = Gauge(
            "sekisho_endpoint_in_flight",
            "Requests in flight to the endpoint from this gateway (a stream until its end)",
            ["endpoint", "jurisdiction"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.endpoint_waiting = Gauge(
            "sekisho_endpoint_waiting",
            "Requests waiting for a slot of the endpoint (max_concurrency reached)",
            ["endpoint", "jurisdiction"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.endpoint_max_concurrency = Gauge(
            "sekisho_endpoint_max_concurrency",
            "The endpoint's max_concurrency (absent: no cap)",
            ["endpoint", "jurisdiction"],
            registry=r,
            multiprocess_mode="livemax",
        )

        # Client connections ended before a request could be read (api/protocol.py): slow or
        # stalled clients, oversized heads. Model requests refused later are in sekisho_requests.
        self.heads_refused = Counter(
            "sekisho_client_heads_refused",
            "Client connections closed before a request head was read: header_timeout (408), "
            "header_too_large (431), no_request (connected, sent nothing)",
            ["reason"],
            registry=r,
        )
        # Deletions (retention sweep) whose bytes a reader, such as a running backup, kept in a
        # SQLite store's file: the ledger has a store.erasure_incomplete entry for each.
        self.erasure_incomplete = Counter(
            "sekisho_store_erasure_incomplete",
            "Erasures (retention deletions) committed but left recoverable in a SQLite store's "
            "file because a reader (a running backup) blocked the checkpoint",
            ["region", "store"],
            registry=r,
        )
        # Whether each durable writer keeps its promises, as /readyz judges it (any 0 makes it
        # answer 503): read when scraped. Several workers: the worst any live one sees.
        self.writer_up = Gauge(
            "sekisho_writer_up",
            "1 while the durable writer (writer=ledger, or writer=store of a region) makes "
            "writes durable in time; 0 while it fails or hangs (/readyz answers 503)",
            ["writer", "region"],
            registry=r,
            multiprocess_mode="livemin",
        )
        # Records a regional store could not make durable (each request's answer was withheld
        # with 503 store_unavailable), as sekisho_ledger_refusals_total counts the ledger's.
        self.store_refusals = Counter(
            "sekisho_store_refusals",
            "Records a regional store could not make durable, each once: deadline (slow or "
            "hanging storage) or storage_error (a failed commit)",
            ["region", "reason"],
            registry=r,
        )
        # How each durable writer keeps up, before it falls behind its deadline: what waits
        # for it (read when scraped), and how long each batch commit takes and how many it held
        # (observed by the writer thread once per batch, nothing per request).
        self.writer_queue = Gauge(
            "sekisho_writer_queue",
            "Entries (writer=ledger) or records (writer=store, of a region) handed to the "
            "durable writer and not yet durable nor refused",
            ["writer", "region"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.writer_commit = Histogram(
            "sekisho_writer_commit_seconds",
            "Time each batch commit of a durable writer took (failed ones included)",
            ["writer", "region"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.writer_batch = Histogram(
            "sekisho_writer_batch_entries",
            "Entries or records in each batch a durable writer committed (group commit)",
            ["writer", "region"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        # A classifier that failed on a request made it restricted (fail closed): counted so
        # that a detector's defect, or inputs built to defeat one, is seen outside the log.
        self.classifier_failures = Counter(
            "sekisho_classifier_failures",
            "Requests the classifier could not read completely, each treated as restricted: "
            "reason=error (the classifier raised) or too_many_names (a text too dense with "
            "names to read)",
            ["tenant", "reason"],
            registry=r,
        )
        # Reloads (SIGHUP, POST /admin/v1/policy/reload) by outcome. With several workers the
        # supervisor reloads, and counts what it judged in a file the scrape reads
        # (``SUPERVISOR_COUNTS``).
        self.reloads = Counter(
            "sekisho_reloads",
            "Configuration reloads: result=ok (applied), refused (the file was refused: "
            "invalid, or a change that takes a restart), failed (an error, or new workers "
            "that could not start: the old configuration keeps serving)",
            ["result"],
            registry=r,
        )
        # Only with ``redis:`` (``watch_redis``): a gauge at 0 would otherwise claim a Redis
        # that is not configured is down.
        self.redis_up: Gauge | None = None
        # Log lines the writer thread dropped (logs.py) because stderr was not read fast enough:
        # added when scraped (and every few seconds with several workers).
        self.log_lines_dropped = Counter(
            "sekisho_log_lines_dropped",
            "Log lines dropped because stderr was not read fast enough (100,000 were waiting)",
            registry=r,
        )
        # Open files (descriptors) against the soft limit (_open_files.py): past it, new
        # connections are reset unseen. Several workers: the most any live one has open (they
        # share one limit, inherited from the supervisor).
        self.open_files = Gauge(
            "sekisho_open_files",
            "Files (file descriptors) the gateway has open: client and upstream connections, "
            "the ledger, the stores",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.open_files_limit = Gauge(
            "sekisho_open_files_limit",
            "The most files the gateway may open (its soft limit): past it, new connections "
            "are reset without an answer",
            registry=r,
            multiprocess_mode="livemax",
        )
        # Certificates the gateway presents, for an alert well before one expires (renewed
        # files are read again on reload). Several workers: the earliest any live one holds.
        self.certificate_expiry = Gauge(
            "sekisho_tls_certificate_expiry_timestamp_seconds",
            "When a certificate the gateway presents expires (Unix time): the listener's "
            "(use=listener) and each endpoint's client certificate (use=endpoint)",
            ["use", "endpoint"],
            registry=r,
            multiprocess_mode="livemin",
        )

    def watch_redis(self) -> Gauge:
        """The ``sekisho_redis_up`` gauge, made when Redis is configured. Several workers: the
        value set most recently (by the worker that answered the latest scrape)."""
        if self.redis_up is None:
            self.redis_up = Gauge(
                "sekisho_redis_up",
                "1 when Redis (redis:) answered a PING within 0.5 s at this scrape, else 0; "
                "the limits and endpoint caps it holds refuse meanwhile (503)",
                registry=self.registry,
                multiprocess_mode="livemostrecent",
            )
        return self.redis_up

    def exposition(self) -> bytes:
        """The Prometheus text: this process's registry, or with several workers all of them."""
        if self.shared_dir is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        everyone = CollectorRegistry()
        workers = MultiProcessCollector(None, path=str(self.shared_dir))  # type: ignore[no-untyped-call]
        everyone.register(_WithSupervisor(workers, self.shared_dir / SUPERVISOR_COUNTS))
        return generate_latest(everyone)

    def forget_dead_workers(self) -> None:
        """Drop the live gauges of workers that are gone (restarted by a reload, or crashed):
        their counters and histograms keep counting in the totals, their gauges must not."""
        if self.shared_dir is None:
            return
        from prometheus_client.multiprocess import mark_process_dead

        for name in os.listdir(self.shared_dir):
            found = _LIVE_GAUGE_FILE.fullmatch(name)
            if found is None:
                continue
            pid = int(found.group(1))
            if not _alive(pid):
                mark_process_dead(pid, str(self.shared_dir))  # type: ignore[no-untyped-call]

    def child(self, metric: Counter | Histogram | Gauge, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: prometheus_client validates and looks the
        labels up again on every call, which the request path does several times. Label
        values are bounded by the configuration (routes, statuses, endpoints)."""
        key = (metric._name, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found
