"""Build the ASGI application from a validated config: wiring only."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import hmac
import logging
import os
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson
from prometheus_client import CONTENT_TYPE_LATEST

from sekisho import _in_force as in_force
from sekisho import _reload, release
from sekisho import _serving as serving
from sekisho import _supervisor as supervisor
from sekisho import tls as tls_files
from sekisho._deadlines import WriterHealth
from sekisho._open_files import DescriptorWatch, descriptor_watch
from sekisho.api import http
from sekisho.api import openai as routes
from sekisho.api.admin import AdminAPI
from sekisho.api.ledger import LedgerAPI
from sekisho.call import Outcome, Reply, StreamReply
from sekisho.config import Config, load_config, scanner_for
from sekisho.errors import (
    AuthenticationFailed,
    ConfigError,
    ConfigProblem,
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    SekishoError,
    ServiceUnavailable,
)
from sekisho.identity import Authenticator, KeyStore, Principal, require
from sekisho.identity.in_flight import TenantsInFlight
from sekisho.identity.limits import REDIS_TIMEOUT, Limiter, build_limiter, redis_client
from sekisho.identity.roles import MODEL_ROUTES
from sekisho.ledger import LEDGER_REFUSALS, Ledger
from sekisho.logs import dropped_lines, mask_values
from sekisho.metrics import Metrics
from sekisho.pipeline import Pipeline, client_stalled, sent_to
from sekisho.providers import Transport, UpstreamError, transport_for
from sekisho.providers.h1 import H1Client
from sekisho.recorder import LedgerRecorder, open_ledger, tenant_hash_key
from sekisho.routing import Health, Selector
from sekisho.routing.catalogue import Endpoint, Route
from sekisho.routing.slots import SharedSlots
from sekisho.store import Stores

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("sekisho.app")

# Who the request being answered turned out to be, once a route has authenticated it: the log
# line of a route outside the pipeline names them as a model call's does.
_caller: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "sekisho_caller", default=None
)


class _Remembering(Authenticator):
    async def authenticate_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> Principal:
        principal = await super().authenticate_headers(headers)
        _caller.set(principal)
        return principal


# Seconds a model request runs before a task starts watching for its client going away.
_WATCH_AFTER = 0.1
# A stream relayed this many events without waiting lets the event loop serve everyone else
# before it goes on. The upstream client hands over up to 256 KiB at once (about a thousand
# events), and sending waits only when the client's connection is full: one fast stream held
# the loop long enough to raise other requests' median latency from 5 ms to 250 ms.
YIELD_EVERY = 32
_ROUTE_LABELS = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/completions": "completions",
}
# How often the count of open files is read (a warning near the limit: _open_files.py).
_CHECK_DESCRIPTORS_EVERY = 5.0
# With several workers, how often each publishes its view of endpoint health to /metrics.
_PUBLISH_HEALTH_EVERY = 5.0
# The cyclic GC's generation thresholds while serving (CPython's default: 700, 10, 10).
_GC_THRESHOLDS = (50_000, 20, 20)
# A Redis that stops answering fails a slot's request after this many seconds (fail closed).
_READYZ_REDIS_TIMEOUT = 0.5  # /readyz answers a balancer's probe even when Redis hangs
# Keep-alive connections to one upstream host at most; callers beyond wait for one.
_UPSTREAM_CONNECTIONS_PER_HOST = 1024

Handler = Callable[[http.Scope, http.Receive, http.Send, str], Awaitable[None]]
ModelHandler = Callable[..., Awaitable[Reply | StreamReply]]


class Gateway:
    """The ASGI application."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        # The ledger counts its refusals in one counter per process, whichever gateway in it
        # owns the ledger: served here beside the gateway's own.
        self.metrics.registry.register(LEDGER_REFUSALS)
        # Read when /metrics is scraped, not updated (under a lock) twice per request; with
        # several workers each one counts into the shared files instead.
        self._shared_metrics = self.metrics.shared_dir is not None
        if not self._shared_metrics:
            self.metrics.in_flight.set_function(lambda: self.in_flight)
        self.health = Health(
            failure_threshold=config.routing.health.failure_threshold,
            backoff_initial=config.routing.health.backoff_initial_seconds,
            backoff_max=config.routing.health.backoff_max_seconds,
            workers=config.server.workers,  # each holds its share of max_concurrency
        )
        # Each tenant's requests in flight, against its max_concurrent_requests.
        self.tenants_in_flight = TenantsInFlight(
            {n: t.max_concurrent_requests for n, t in config.tenants.items()},
            workers=config.server.workers,
        )
        self.keys = KeyStore(config.data_dir / "identity.db")
        self.recorder: LedgerRecorder | None = None
        self.ledger: Ledger | None = None
        self.ledger_api: LedgerAPI | None = None
        self._hash_keys: dict[str, bytes] = {}
        self.transports: dict[str, Transport] = {}
        self.authenticator = _Remembering(self.keys, config.model.auth, tenants=config.tenants)
        self.limiter: Limiter | None = None
        self.stores: Stores | None = None
        self.admin: AdminAPI | None = None
        self._reload_lock = asyncio.Lock()
        self.pipeline: Pipeline | None = None
        self.ready = False
        self.in_flight = 0
        # The model calls in flight: the shutdown's grace period ends each that is still
        # running (``_cut``), with an answer, before uvicorn would drop its connection.
        self._calls: set[asyncio.Task[Any]] = set()
        self._cut_timer: asyncio.TimerHandle | None = None
        self._pid = os.getpid()
        self._serving_fd: int | None = None
        self._dropped_lines_seen = 0  # of logs.dropped_lines(), already in the counter
        self._descriptors: DescriptorWatch | None = None
        # Set when this process is one of `serve --workers N`: reloads then restart every
        # worker, through the supervisor and its run directory.
        self.supervisor_pid: int | None = None
        self.run_dir: Path | None = None
        self._session: aiohttp.ClientSession | None = None
        self._upstream: H1Client | None = None
        self._endpoint_tls: dict[str, ssl.SSLContext] = {}  # endpoint id -> its context
        self._tasks: list[asyncio.Task[None]] = []
        self._client_address = http.ClientAddress(config.server.trusted_proxies)
        self._model_routes: dict[str, ModelHandler] = {
            "/v1/chat/completions": routes.chat_completions,
            "/v1/embeddings": routes.embeddings,
            "/v1/responses": routes.responses,
            "/v1/completions": routes.completions,
        }
        self._ops: dict[str, Handler] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics,
        }

    # -- lifespan --------------------------------------------------------------------------

    async def startup(self) -> None:
        self._pid = os.getpid()
        # The detectors that mask a logged path and a traceback are built now (50 ms), not on
        # the event loop by the first request that needs them.
        mask_values("")
        if self._shared_metrics:
            self.metrics.forget_dead_workers()
            self._tasks.append(asyncio.create_task(self._publish_health()))
        await self._open_ledger()
        assert self.recorder is not None
        cfg = self.config
        if self._serving_fd is None:  # `tenant delete` refuses while this is held
            # (and while `tenant delete` runs, this waits for it: ``hold_when_free``)
            self._serving_fd = await serving.hold_when_free(cfg.data_dir)
        self.stores = await Stores.open(
            cfg.regions, cfg.data_dir, audit=self.recorder, tenants=cfg.tenants
        )
        self.stores.on_erasure_incomplete = self._count_erasure_incomplete
        for region in self.stores.regions.values():
            region.on_refused = self._count_store_refusals
            region.on_commit = self._commit_observer("store", region.region)
        self._tasks.append(self.stores.start_sweeper())
        self.recorder.use_store_keys(self.stores, cfg.tenants)
        self.limiter = build_limiter(
            tenants={n: t.limits for n, t in cfg.tenants.items()},
            defaults=cfg.model.limits,
            redis_url=cfg.model.redis,
            data_dir=cfg.data_dir,
        )
        self.limiter.on_refused = self._count_limit_refusal
        if cfg.model.redis:
            # Every process and instance on this Redis shares each endpoint's max_concurrency,
            # and counts each tenant's requests in flight.
            shared = SharedSlots(
                redis_client(cfg.model.redis, socket_timeout=REDIS_TIMEOUT),
                cfg.model.limits.namespace,
                lease_seconds=cfg.model.routing.shared_slot_lease_seconds,
            )
            self.health.share_slots(shared)
            self.tenants_in_flight.share(shared)
            self.metrics.watch_redis()
        await self.authenticator.start()
        self.admin = AdminAPI(
            keys=self.keys,
            authenticator=self.authenticator,
            limiter=self.limiter,
            usage=None,
            tenants=cfg.tenants,
            reload_policy=self.reload_policy,
            audit=self.recorder,
            read_timeout=cfg.server.read_timeout_seconds,
            endpoints=cfg.catalogue.endpoints,
            health=self.health,
        )
        # Upstream calls: sekisho's lean HTTP/1.1 client (providers/h1.py). aiohttp serves the
        # active health probes, and is imported only when they are on (about 10 MB).
        self._upstream = H1Client(limit_per_host=_UPSTREAM_CONNECTIONS_PER_HOST)
        # Endpoints with a `tls` block (private CA, client certificate) get their own context;
        # config validation already loaded each file once, so this cannot fail on a good config.
        tls = self._endpoint_tls = tls_files.contexts_for(self.config.catalogue.endpoints)
        for family in {ep.family for ep in self.config.catalogue.endpoints}:
            self.transports[family] = transport_for(family, self._upstream, tls)
            self.transports[family].use_key_files(
                [ep for ep in self.config.catalogue.endpoints if ep.family == family]
            )
        self._publish_certificates(self.config)
        for ep in self.config.catalogue.endpoints:
            if ep.auth is not None:
                # The first token now, not on the first request: that request is not slowed by
                # it, and a credential that does not work is in the log (a warning) at start.
                self._tasks.append(asyncio.create_task(self._first_token(ep)))
        self.pipeline = Pipeline(
            catalogue=self.config.catalogue,
            tenants=self.config.tenants,
            policies=self.config.policies,
            scanners={name: scanner_for(t) for name, t in self.config.tenants.items()},
            transports=self.transports,
            health=self.health,
            selector=Selector(self.health),
            metrics=self.metrics,
            recorder=self.recorder,
            limiter=self.limiter,
            stores=self.stores,
            max_attempts=self.config.routing.max_attempts,
            stream_keepalive=self.config.server.stream_keepalive_seconds,
            max_stream_text=self.config.server.max_stream_text_chars,
        )
        self.pipeline.lineage = self.keys.lineage
        gate = supervisor.gate_path() if self.supervisor_pid is not None else None
        if gate is not None:
            # A reload of `serve --workers N`: everything is open; serve only once every new
            # worker has got this far (else the supervisor stops them all, the old ones stay).
            await supervisor.wait_at_gate(gate, self.supervisor_pid)
        # A policy that changed while the gateway was stopped, or that the --workers supervisor
        # reloaded (its new workers), is in the ledger as a reload through the admin API is.
        ledger = self.ledger
        await in_force.reconcile(
            cfg.data_dir,
            {n: p.digest for n, p in cfg.policies.items()},
            self._policy_entry("policy.reload" if gate is not None else "policy.start"),
            history=lambda: (
                in_force.shown_by_ledger(ledger.storage, cfg.policies) if ledger is not None else {}
            ),
        )
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
        if self.supervisor_pid is not None:
            self._tasks.append(asyncio.create_task(self._watch_supervisor(self.supervisor_pid)))
        self._watch_for_shutdown()
        self._descriptors = descriptor_watch()
        if self._descriptors is not None:
            self._check_descriptors()
            self._tasks.append(asyncio.create_task(self._watch_descriptors()))
        interval = self.config.routing.health.probe_interval_seconds
        if interval > 0:
            import aiohttp

            self._session = aiohttp.ClientSession(auto_decompress=False)
            self._tasks.append(asyncio.create_task(self._probe(interval)))
        # Everything built so far (config, policies, classifier tables, catalogue) lives as
        # long as the process: freeze it out of the cyclic GC's sight, and collect the young
        # generation less often. Measured: p99 at c=64 fell from 92-132 ms to 50-70 ms, with
        # the same RSS (benchmarks/RESULTS.md).
        gc.collect()
        gc.freeze()
        gc.set_threshold(*_GC_THRESHOLDS)
        self.ready = True
        log.info(
            "sekisho ready",
            extra={
                "endpoints": [ep.id for ep in self.config.catalogue.endpoints],
                "tenants": sorted(self.config.tenants),
                "pid": os.getpid(),
                "release": release(),
            },
        )

    async def _watch_descriptors(self) -> None:
        """Warn in the log while the process nears its limit of open files (_open_files.py)."""
        while True:
            await asyncio.sleep(_CHECK_DESCRIPTORS_EVERY)
            self._check_descriptors()

    def _check_descriptors(self) -> None:
        """Count the open files (a warning near the limit) and publish them on /metrics."""
        watch = self._descriptors
        if watch is None:
            return
        watch.check()
        if watch.used is not None:
            self.metrics.open_files.set(watch.used)
        self.metrics.open_files_limit.set(watch.limit)

    async def _first_token(self, ep: Endpoint) -> None:
        with contextlib.suppress(UpstreamError):  # logged by the token source; retried later
            await self.transports[ep.family].with_token(ep, {})

    async def prepare(self) -> None:
        """Create what a first start creates (signing key, ledger, stores and their schemas,
        usage database), then close it again. ``serve --workers N`` runs this once before
        starting the workers, which would otherwise race to create the same files and tables
        (and a worker that loses the race fails start-up, which stops every worker)."""
        await self._open_ledger()
        assert self.recorder is not None and self.ledger is not None
        cfg = self.config
        # Held as a worker holds it: the stores opened here make tenants' data keys, which a
        # `tenant delete` running now would be destroying.
        held = await serving.hold_when_free(cfg.data_dir)
        try:
            stores = await Stores.open(
                cfg.regions, cfg.data_dir, audit=self.recorder, tenants=cfg.tenants
            )
            await stores.close()
            limiter = build_limiter(
                tenants={n: t.limits for n, t in cfg.tenants.items()},
                defaults=cfg.model.limits,
                redis_url=cfg.model.redis,
                data_dir=cfg.data_dir,
            )
            await limiter.close()
        finally:
            os.close(held)
            await self.ledger.close()
            self.ledger = self.recorder = None

    async def _open_ledger(self) -> None:
        """Open the transparency ledger; create its signing key on first start."""
        self.ledger = await open_ledger(self.config)
        self.ledger.on_commit = self._commit_observer("ledger", "")
        self.recorder = LedgerRecorder(self.ledger, self._tenant_hash_key)
        self.ledger_api = LedgerAPI(self.ledger, self.authenticator)

    def _tenant_hash_key(self, tenant: str) -> bytes:
        key = self._hash_keys.get(tenant)
        if key is None:
            key = self._hash_keys[tenant] = tenant_hash_key(self.config.data_dir, tenant)
        return key

    def _watch_for_shutdown(self) -> None:
        """Know when the server begins to shut down (SIGTERM, SIGINT), so that a stream it cuts
        at the end of the grace period is recorded as cut by the gateway, not as left by its
        client. uvicorn installs its handlers before the application starts: each is wrapped,
        and still called."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue

            def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                if self.pipeline is not None:
                    self.pipeline.draining = True
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    loop.call_soon_threadsafe(self.begin_draining)
                previous(signum, frame)

            with contextlib.suppress(ValueError):  # not the main thread (an embedding host)
                signal.signal(sig, handler)

    def begin_draining(self) -> None:
        """The server has begun to shut down: requests in flight have
        ``server.shutdown_grace_seconds`` to finish; then each still running is ended by the
        gateway (``_cut``): a stream with an error event (``gateway_shutdown``) and a properly
        ended body, a request not yet answered with a 503 and Retry-After. uvicorn's own
        deadline (later: cli.py) would drop their connections mid-response."""
        if self.pipeline is not None:
            self.pipeline.draining = True
        if self._cut_timer is None:
            grace = self.config.server.shutdown_grace_seconds
            self._cut_timer = asyncio.get_running_loop().call_later(grace, self._cut)

    def _cut(self) -> None:
        if self._calls:
            log.warning(
                "shutdown grace period over: ending the requests still in flight",
                extra={"requests": len(self._calls)},
            )
        for task in list(self._calls):
            task.cancel()

    async def shutdown(self) -> None:
        self.ready = False
        if self._cut_timer is not None:
            self._cut_timer.cancel()
        if self._serving_fd is not None:
            os.close(self._serving_fd)
            self._serving_fd = None
        gc.unfreeze()  # a gateway built again in this process (tests, reloads) starts clean
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._session is not None:
            await self._session.close()
        if self._upstream is not None:
            await self._upstream.close()
        await self.authenticator.close()
        if self.limiter is not None:
            await self.limiter.close()
        if self.health.shared is not None:
            await self.health.shared.close()
        if self.stores is not None:
            await self.stores.close()
        if self.ledger is not None:
            await self.ledger.close()

    # -- policy reload ---------------------------------------------------------------------

    def _policy_entry(self, action: str) -> in_force.Record:
        async def record(tenant: str, was: str | None, now: str | None) -> None:
            if self.recorder is not None:
                details = {"from": was, "to": now}
                await self.recorder.admin("sekisho", action, f"tenant/{tenant}", details)

        return record

    async def _watch_supervisor(self, pid: int, every: float = 0.5) -> None:
        """A worker of `serve --workers N` whose supervisor is gone (killed with SIGKILL) would
        serve on, unsupervised and unreloadable, holding the port: drain and exit instead."""
        while os.getppid() == pid:
            await asyncio.sleep(every)
        log.error(
            "the --workers supervisor has exited; this worker stops accepting requests, lets "
            "those in flight finish and exits",
            extra={"supervisor": pid, "pid": os.getpid()},
        )
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown, as systemd's stop

    def _on_sighup(self) -> None:
        if self.supervisor_pid is not None:
            # The supervisor reloads every worker; a SIGHUP to the whole process group reaches
            # it too, and one worker's own reload would leave the others on the old policy.
            log.warning(
                "SIGHUP to a worker is ignored: send it to the supervisor, which reloads every "
                "worker",
                extra={"supervisor": self.supervisor_pid, "pid": os.getpid()},
            )
            return

        async def reload() -> None:
            try:
                result = await self.reload_policy()
                log.info("policy reloaded (SIGHUP)", extra=result)
            except ConfigError as exc:
                log.error(
                    "policy reload refused; the old policy keeps serving",
                    extra={"problems": [str(p) for p in exc.problems]},
                )
            except Exception:  # never silent: the operator sent the signal and waits
                log.exception("policy reload failed; the old policy keeps serving")

        self._tasks.append(asyncio.create_task(reload()))

    async def reload_policy(self) -> dict[str, Any]:
        """Re-read the config file and swap in its tenants' policies, only if all of it
        validates; otherwise raise ConfigError and keep serving the old policies."""
        async with self._reload_lock:
            if self.supervisor_pid is not None:
                return await self._reload_every_worker(self.supervisor_pid)
            try:
                result = await self._reload_here()
            except ConfigError:
                self.metrics.child(self.metrics.reloads, "refused").inc()
                raise
            except Exception:
                self.metrics.child(self.metrics.reloads, "failed").inc()
                raise
            self.metrics.child(self.metrics.reloads, "ok").inc()
            return result

    async def _reload_here(self) -> dict[str, Any]:
        new = await asyncio.to_thread(load_config, self.config.source_file)
        old = self.config
        problems = _reload.refusals(old, new)
        if problems:
            raise ConfigError(problems)
        certificates = self._reload_tls(new)  # raises, changing nothing, before the swap
        rotated = sorted(  # the config's validation just read every key file: they work
            ep for t in self.transports.values() for ep in t.reload_key_files()
        )
        assert self.pipeline is not None
        before = {n: p.digest for n, p in old.policies.items()}
        scanners = {name: scanner_for(t) for name, t in new.tenants.items()}
        self.pipeline.policies = new.policies
        self.pipeline.tenants = new.tenants
        self.pipeline.scanners = scanners
        old.policies = new.policies
        old.tenants = new.tenants
        if self.admin is not None:
            self.admin.tenants = new.tenants  # GET /admin/v1/tenants shows what is in force
        if self.stores is not None:
            for name, tenant in new.tenants.items():
                self.stores.set_retention(name, tenant.retention)
        if self.limiter is not None:  # counters carry on; only the limits change
            self.limiter.tenants = {n: t.limits for n, t in new.tenants.items()}
        self.tenants_in_flight.set_caps(
            {n: t.max_concurrent_requests for n, t in new.tenants.items()}
        )
        after = {n: p.digest for n, p in new.policies.items()}
        changed = await in_force.reconcile(
            self.config.data_dir, after, self._policy_entry("policy.reload"), before
        )
        if self.recorder is not None:
            for ep_id in rotated:  # a credential change is an auditable act too
                await self.recorder.admin("sekisho", "endpoint.key.reload", f"endpoint/{ep_id}", {})
        result: dict[str, Any] = {
            "policies": after,
            "changed": changed,
            "certificates": certificates,
            "rotated_keys": rotated,  # endpoints whose api_key_file held a new key
        }
        # Say what this reload did not apply, instead of letting an operator believe a new
        # port, log level or ledger setting is in force.
        pending = _reload.pending_sections(old, new)
        if pending:
            result["restart_needed"] = pending
            log.warning(
                "configuration changes that take a restart were not applied",
                extra={"sections": pending},
            )
        return result

    async def _reload_every_worker(self, supervisor_pid: int) -> dict[str, Any]:
        """A reload under `serve --workers N`: nothing is swapped in this worker. The file is
        judged here as a single process judges it, then the supervisor replaces every worker
        with one serving the new file, or none (a new worker that cannot start: an unreachable
        ledger, Redis or secret store); the answer says which, once it is done."""
        gone = ServiceUnavailable(
            f"The configuration was not reloaded: the --workers supervisor (pid {supervisor_pid})"
            " has exited, and this worker is shutting down. Start the gateway again (sekisho "
            "serve) to serve the configuration on disk.",
            code="supervisor_gone",
        )
        if os.getppid() != supervisor_pid or self.run_dir is None:
            raise gone
        try:
            new = await asyncio.to_thread(load_config, self.config.source_file)
            problems = _reload.refusals(self.config, new)
            if problems:
                raise ConfigError(problems)
        except ConfigError:
            # Refused here, the supervisor is never asked: counted in this worker's metrics
            # (the supervisor counts the reloads it judges itself).
            self.metrics.child(self.metrics.reloads, "refused").inc()
            raise
        rotated = sorted(  # read, not used here: the new workers use them
            ep for t in self.transports.values() for ep in t.reload_key_files(apply=False)
        )
        wait = supervisor.START_SECONDS + supervisor.SERVE_SECONDS + 30
        try:
            outcome = await supervisor.request_reload(self.run_dir, supervisor_pid, wait)
        except ProcessLookupError:
            raise gone from None
        kind = outcome.get("kind")
        if kind == "invalid":  # the file changed again since it was read here
            raise ConfigError([ConfigProblem(*p) for p in outcome["problems"]])
        if kind == "gone":
            raise gone
        if kind == "timeout":
            raise ServiceUnavailable(
                f"The supervisor did not finish the reload within {wait:g} s; the gateway's log "
                "says whether every worker was replaced. Reload again once it has.",
                code="reload_timeout",
            )
        if not outcome.get("ok"):
            raise ServiceUnavailable(
                f"The configuration was not reloaded: {outcome.get('message')}. Every worker "
                "keeps serving the configuration in force; the gateway's log says why, fix the "
                "cause and reload again.",
                code="reload_failed",
            )
        if self.recorder is not None:
            for ep_id in rotated:  # a credential change is an auditable act too
                await self.recorder.admin("sekisho", "endpoint.key.reload", f"endpoint/{ep_id}", {})
        result: dict[str, Any] = {
            "policies": outcome["policies"],
            "changed": outcome["changed"],
            "certificates": self._certificates(new),
            "rotated_keys": rotated,
            "workers": "every worker was replaced by one serving the new configuration; the "
            "old ones finish what they have in flight",
        }
        if outcome.get("restart_needed"):
            result["restart_needed"] = outcome["restart_needed"]
        return result

    def _reload_tls(self, new: Config) -> dict[str, str]:
        """Read every TLS file again (a renewed certificate, a new CA bundle, at the paths
        already configured): the listener's and each endpoint's. New connections use them;
        open ones keep what they were made with. Raise ConfigError, changing nothing, if a
        file cannot be used or the change needs a restart. Returns each presented
        certificate's expiry."""
        file = new.source_file
        problems: list[ConfigProblem] = []
        after = new.server.tls  # added or removed: refused before (_reload.refusals)
        contexts: dict[str, ssl.SSLContext] = {}
        for i, ep in enumerate(new.catalogue.endpoints):
            if ep.tls is None:
                continue
            try:
                contexts[ep.id] = tls_files.client_context(ep.tls)
            except tls_files.TLSSettingError as exc:
                where = f"endpoints[{i}]({ep.id}).tls.{exc.field}"
                problems.append(ConfigProblem(file, where, exc.reason))
        listener = tls_files.active_listener()
        if not problems and listener is not None and after is not None:
            try:
                listener.reload(after)  # the last step that can fail
            except tls_files.TLSSettingError as exc:
                problems.append(ConfigProblem(file, f"server.tls.{exc.field}", exc.reason))
        if problems:
            raise ConfigError(problems)
        retired, self._endpoint_tls = self._endpoint_tls, contexts
        for transport in self.transports.values():
            transport.use_tls(contexts)
        if self._upstream is not None:
            for ctx in retired.values():
                self._upstream.retire(ctx)
        return self._publish_certificates(new)

    def _publish_certificates(self, config: Config) -> dict[str, str]:
        """Set the expiry gauge of each certificate the gateway presents (its listener's, and
        its client certificate per endpoint); return them as ISO 8601 times."""
        return self._certificates(config, publish=True)

    def _certificates(self, config: Config, *, publish: bool = False) -> dict[str, str]:
        presented: dict[str, str | None] = {}
        if config.server.tls is not None:
            presented["listener"] = config.server.tls.cert_file
        for ep in config.catalogue.endpoints:
            if ep.tls is not None and ep.tls.client_cert is not None:
                presented[f"endpoint/{ep.id}"] = ep.tls.client_cert
        expiries: dict[str, str] = {}
        for name, path in presented.items():
            assert path is not None
            expiry = tls_files.certificate_expiry(path)
            if expiry is None:
                continue
            use, _, endpoint = name.partition("/")
            if publish:
                self.metrics.child(self.metrics.certificate_expiry, use, endpoint).set(
                    expiry.timestamp()
                )
            expiries[name] = expiry.isoformat()
        return expiries

    async def _probe(self, interval: float) -> None:
        """Active health: GET the model list of every endpoint that is down or failing, the way
        requests reach it (its egress proxy, its TLS settings, its credentials). Any answer
        below 500 (a 401 or 404 too) shows the endpoint is there again."""
        import aiohttp

        assert self._session is not None
        while True:
            await asyncio.sleep(interval)
            for ep in self.config.catalogue.endpoints:
                if self.health.is_up(ep.id) and self.health.state(ep.id).failures == 0:
                    continue
                transport = self.transports[ep.family]
                try:
                    # (An unusable api_key_file raises here: the endpoint stays down.)
                    url, headers, tls = transport.probe_request(ep)
                    headers = await transport.with_token(ep, headers)
                    async with self._session.get(
                        url,
                        headers=headers,
                        proxy=ep.proxy,
                        ssl=tls if tls is not None else True,
                        allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(total=ep.timeouts.connect + 2),
                    ) as resp:
                        if resp.status < 500:
                            self.health.probed(ep.id)  # a Retry-After still stands
                except (aiohttp.ClientError, TimeoutError, ValueError, UpstreamError) as exc:
                    log.debug("probe of %s failed: %s", ep.id, exc)

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: http.Scope, receive: http.Receive, send: http.Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)

    def _count_erasure_incomplete(self, region: str, store: str) -> None:
        self.metrics.child(self.metrics.erasure_incomplete, region, store).inc()

    def _commit_observer(self, writer: str, region: str) -> Callable[[float, int], None]:
        """What a durable writer's thread calls once per batch commit (never per request),
        with its series looked up once, here: about 1 µs per batch."""
        m = self.metrics
        commit = m.child(m.writer_commit, writer, region).observe
        batch = m.child(m.writer_batch, writer, region).observe

        def observe(seconds: float, entries: int) -> None:
            commit(seconds)
            batch(entries)

        return observe

    def _count_store_refusals(self, region: str, reason: str, records: int) -> None:
        self.metrics.child(self.metrics.store_refusals, region, reason).inc(records)

    def _count_limit_refusal(self, tenant: str, scope: str, limit: str) -> None:
        self.metrics.child(self.metrics.limit_refusals, tenant, scope, limit).inc()

    def _count_refused_head(self, reason: str) -> None:
        self.metrics.child(self.metrics.heads_refused, reason).inc()

    async def _lifespan(self, scope: http.Scope, receive: http.Receive, send: http.Send) -> None:
        state = scope.get("state")
        if state is not None:  # shared with every connection (api/protocol.py reads it)
            state[http.READ_TIMEOUT_STATE] = self.config.server.read_timeout_seconds
            state[http.WRITE_TIMEOUT_STATE] = self.config.server.write_timeout_seconds
            state[http.MAX_HEADER_STATE] = self.config.server.max_header_bytes
            state[http.HEAD_REFUSED_STATE] = self._count_refused_head
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
                from sekisho import logs

                # uvicorn ends the process by re-raising the signal, so exit handlers never
                # run: what the last requests logged is written now, and uvicorn's last lines
                # as they come.
                logs.write_directly()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: http.Scope, receive: http.Receive, send: http.Send) -> None:
        path: str = scope["path"]
        rid = http.request_id(scope)
        if path.startswith("/openai/"):
            path = _azure_path(scope, path)
        preflight = _is_cors_preflight(scope)  # refused by _other, and logged
        model_handler = None if preflight else self._model_routes.get(path)
        if model_handler is not None:
            await self._model_call(model_handler, path, scope, receive, send, rid)
            return
        op = None if preflight else self._ops.get(path)
        if op is not None:  # probes and scrapes: answered, not logged
            try:
                if scope["method"] not in ("GET", "HEAD"):
                    raise MethodNotAllowed(
                        f"{path} accepts GET and HEAD, not {scope['method']}.",
                        allow=("GET",),
                    )
                await op(scope, receive, send, rid)
            except SekishoError as exc:
                await http.send_error(send, exc, rid)
            except http.ClientGone:
                pass  # a prober or scraper that left (or stopped reading): nothing to answer
            except Exception:
                await self._unexpected(send, rid, path)
            return
        # Every other route is logged as model calls are (who, what, how it ended): a key
        # guessed against /admin or /ledger, a stored record that no longer reads, is
        # something a SIEM must see.
        started = time.perf_counter()
        answered = [0]
        _caller.set(None)
        http.answered_error.set(None)

        async def sending(msg: http.Message) -> None:
            if msg["type"] == "http.response.start":
                answered[0] = msg["status"]
            await send(msg)

        error: str | None = None
        try:
            await self._other(scope, receive, sending, rid, path)
        except SekishoError as exc:
            await http.send_error(sending, exc, rid)
        except http.ClientGone as exc:
            answered[0], error = 499, _gone_code(exc)
        except Exception:
            error = "internal_error"
            await self._unexpected(sending, rid, path)
        status = answered[0] or 500
        error = error or http.answered_error.get()
        self._log(scope, rid, _caller.get(), path, status, "-", started, error)

    async def _unexpected(self, send: http.Send, rid: str, path: str) -> None:
        """Still an answer in OpenAI's shape (not the server's bare text), and the gateway
        keeps serving every other request."""
        log.exception("unexpected error", extra={"request_id": rid, "path": path})
        err = SekishoError(
            f"sekisho hit an unexpected error (request {rid}); the operator's logs have the "
            "details."
        )
        with contextlib.suppress(Exception):
            await http.send_error(send, err, rid)

    async def _other(
        self, scope: http.Scope, receive: http.Receive, send: http.Send, rid: str, path: str
    ) -> None:
        """The routes that are neither model calls nor probes: models, kept responses, admin,
        ledger."""
        if _is_cors_preflight(scope):
            raise PermissionDenied(
                "sekisho does not answer browsers' cross-origin requests (CORS): a key in a web "
                "page can be read by anyone who loads it. Call sekisho from your application's "
                "server, which holds the key, and let the page call that server.",
                code="cors_not_supported",
            )
        if scope["method"] == "HEAD":
            # HEAD is GET without the body (RFC 9110 §9.3.2): the same key, status and headers,
            # Content-Length included. The server (uvicorn) leaves out the body it is sent.
            scope = {**scope, "method": "GET"}
        if path == "/v1/models" or path.startswith("/v1/models/"):
            await self._models(scope, send, rid, path)
            return
        if path.startswith("/v1/responses/"):
            await self._kept_response(scope, send, rid, path)
            return
        if path.startswith("/v1/chat/completions/"):
            # The SDK's chat.completions.retrieve, update, delete and messages.list.
            raise NotFound(f"Unknown path {path[:120]!r}.{_STORED_CHAT}", code="unknown_url")
        if path.startswith("/admin/v1"):
            assert self.admin is not None
            await self.admin(scope, receive, send, rid)
            return
        if path.startswith("/ledger/"):
            assert self.ledger_api is not None
            await self.ledger_api(scope, send, rid, path)
            return
        raise NotFound(
            f"Unknown path {path!r}. sekisho serves /v1/chat/completions, /v1/responses, "
            "/v1/completions, /v1/embeddings and /v1/models.",
            code="unknown_url",
        )

    async def _model_call(
        self,
        handler: ModelHandler,
        path: str,
        scope: http.Scope,
        receive: http.Receive,
        send: http.Send,
        rid: str,
    ) -> None:
        started = time.perf_counter()
        status = 500
        endpoint = "-"
        jurisdiction = "-"
        # The ledger's request id is always the gateway's own, so that a client reusing an
        # x-request-id can never mix its receipts with another request's; the client's id is
        # still echoed in x-request-id.
        call_id = rid if http.header(scope, b"x-request-id") != rid else http.new_request_id()
        watchers: list[asyncio.Task[None]] = []
        watch_timer: asyncio.TimerHandle | None = None
        principal: Principal | None = None
        counted: str | None = None  # the tenant whose requests in flight count this one
        answered: Outcome | None = None  # the reply's outcome, once there is a reply
        upstream_id: str | None = None
        finished = False
        began = False  # the response's status line has gone out
        stream: StreamReply | None = None
        task = asyncio.current_task()
        if task is not None:
            self._calls.add(task)
        sent_to.set(None)
        self.in_flight += 1
        if self._shared_metrics:
            self.metrics.in_flight.inc()
        try:
            if scope["method"] != "POST":
                why = _STORED_CHAT if path == "/v1/chat/completions" else ""
                raise MethodNotAllowed(
                    f"{path} accepts POST, not {scope['method']}.{why}", allow=("POST",)
                )
            assert self.pipeline is not None
            principal = await self.authenticator.authenticate_headers(scope["headers"])
            require(principal, MODEL_ROUTES[path])
            if principal.tenant in self.tenants_in_flight.caps:
                await self.tenants_in_flight.enter(principal.tenant)  # or 429, nothing read
                counted = principal.tenant
            server = self.config.server
            raw = await http.read_body(
                scope, receive, server.max_body_bytes, server.read_timeout_seconds
            )
            deployment = scope.get(_DEPLOYMENT)
            if deployment is not None:
                raw = _with_model(raw, deployment)

            async def watch() -> None:
                # A client that goes away cancels its request, and the upstream request with it.
                while True:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        if not finished and task is not None:
                            task.cancel()
                        return

            def start_watching() -> None:
                if not finished:
                    watchers.append(asyncio.get_running_loop().create_task(watch()))

            # The watcher starts only once the request has run for a moment: most answers
            # complete sooner, and a task per request (created, then cancelled) is a measurable
            # share of the CPU the gateway spends per request. A disconnect in that first
            # moment is seen when the watcher starts (uvicorn reports it at once).
            watch_timer = asyncio.get_running_loop().call_later(_WATCH_AFTER, start_watching)
            reply = await handler(self.pipeline, principal, call_id, raw, scope)
            answered = reply.outcome
            reply.headers.append(("x-sekisho-request-id", call_id))
            hdrs = dict(reply.headers)
            endpoint = hdrs.get("x-sekisho-endpoint", "-")
            jurisdiction = hdrs.get("x-sekisho-jurisdiction", "-")
            upstream_id = hdrs.get("x-sekisho-upstream-request-id")
            if isinstance(reply, StreamReply):
                stream = reply
                began = True
                await http.start_stream(send, rid, reply.headers)
                first = True
                unyielded = 0  # events sent since the loop last served anyone else
                try:
                    async for chunk in reply.chunks:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        if first and not chunk.startswith(b":"):  # not a keep-alive comment
                            first = False
                            labels = _first_event_from(reply.outcome, endpoint, jurisdiction)
                            if labels is not None:
                                m = self.metrics
                                m.child(m.time_to_first_token, *labels).observe(
                                    time.perf_counter() - started
                                )
                        unyielded += 1
                        if unyielded >= YIELD_EVERY:
                            unyielded = 0
                            await asyncio.sleep(0)
                except http.ClientStalled:
                    # The client stopped reading (server.write_timeout_seconds): its connection
                    # is ended. The stream's outcome (499 client_stalled, what was delivered)
                    # is recorded and the endpoint's slot freed now, not whenever the client
                    # would have gone. The watcher must not cancel that record half-way.
                    finished = True
                    client_stalled.set(True)
                    closing = getattr(reply.chunks, "aclose", None)
                    if closing is not None:
                        await closing()
                    raise
                finished = True
                await send({"type": "http.response.body", "body": b""})
                done = reply.outcome
                # The wire said 200 when the stream began; how it ended is the outcome's
                # status (502 for a stream the endpoint broke), as the ledger records it.
                status = done.status if done is not None and done.status else 200
                if done is not None and done.route is not None and endpoint == "-":
                    # A stream started before its route was known (stream_keepalive_seconds).
                    ep = done.route.endpoint
                    endpoint = ep.id
                    jurisdiction = ep.jurisdiction.label
            else:
                finished = began = True
                await http.send_bytes(send, reply.status, reply.body, rid, reply.headers)
                status = reply.status
            self._log(scope, call_id, principal, path, status, endpoint, started, None, rid,
                      upstream_id, reply.outcome)  # fmt: skip
        except SekishoError as exc:
            finished = True
            status = exc.status
            # An endpoint's own 4xx names it: labels and the log say where the prompt went.
            endpoint = exc.headers.get("x-sekisho-endpoint", endpoint)
            jurisdiction = exc.headers.get("x-sekisho-jurisdiction", jurisdiction)
            exc.headers.setdefault("x-sekisho-request-id", call_id)
            await http.send_error(send, exc, rid)
            # A refusal names who asked (tenant, key) when they were identified: what a SOC
            # looks for first.
            self._log(scope, call_id, principal, path, status, endpoint, started, exc.code, rid)
        except http.ClientGone as exc:
            status = 499
            endpoint, jurisdiction = _reached(endpoint, jurisdiction)
            self._log(scope, call_id, principal, path, status, endpoint, started,
                      _gone_code(exc), rid, upstream_id, answered)  # fmt: skip
        except asyncio.CancelledError:
            endpoint, jurisdiction = _reached(endpoint, jurisdiction)
            if task is not None and task.cancelling() and watchers and watchers[0].done():
                task.uncancel()
                status = 499
                # Who, which endpoint, what it cost so far: chargeback from the log alone.
                self._log(scope, call_id, principal, path, status, endpoint, started,
                          "client_disconnected", rid, upstream_id, answered)  # fmt: skip
            elif self.pipeline is not None and self.pipeline.draining and task is not None:
                # The grace period ended before the answer did: the request's log line says
                # so (who, which endpoint, what it cost so far), and the cut is the end of
                # this request, not an error of the server's (no traceback).
                task.uncancel()
                status = 503
                with contextlib.suppress(Exception):  # the connection may be gone already
                    await self._end_cut(send, rid, call_id, began, finished, stream)
                self._log(scope, call_id, principal, path, status, endpoint, started,
                          "gateway_shutdown", rid, upstream_id, answered)  # fmt: skip
            else:
                raise
        except Exception:
            finished = True
            log.exception("unexpected error", extra={"request_id": call_id})
            status = 500
            # (After the decision entry the pipeline writes its outcome and raises a
            # SekishoError instead: Pipeline.unexpected.) The request id, as every answer has.
            err = SekishoError(
                f"sekisho hit an unexpected error (request {call_id}); the operator's logs "
                "have the details.",
                headers={"x-sekisho-request-id": call_id},
            )
            with contextlib.suppress(Exception):
                await http.send_error(send, err, rid)
            # Before its decision (after it, Pipeline.unexpected makes it a SekishoError): the
            # request's line still says who asked and that it failed, as every request's does.
            self._log(scope, call_id, principal, path, status, endpoint, started,
                      "internal_error", rid, upstream_id, answered)  # fmt: skip
        finally:
            finished = True
            if task is not None:
                self._calls.discard(task)
            if watch_timer is not None:
                watch_timer.cancel()
            for watcher in watchers:
                if not watcher.done():
                    watcher.cancel()
            self.in_flight -= 1
            if self._shared_metrics:
                self.metrics.in_flight.dec()
            if counted is not None:
                self.tenants_in_flight.leave(counted)
            route_label = _ROUTE_LABELS.get(path, "embeddings")
            m = self.metrics
            m.child(m.requests, route_label, str(status), endpoint, jurisdiction).inc()
            m.child(m.latency, route_label, endpoint, jurisdiction).observe(
                time.perf_counter() - started
            )

    async def _end_cut(
        self,
        send: http.Send,
        rid: str,
        call_id: str,
        began: bool,
        finished: bool,
        stream: StreamReply | None,
    ) -> None:
        """The answer to a request the shutdown's grace period cut (its outcome, 503
        ``gateway_shutdown``, is recorded by the pipeline): a stream that had begun ends with
        an error event in its API's shape and the chunked body's end, as other failures after
        the first byte do (never a connection dropped mid-body); a request with no answer yet
        gets a 503 with Retry-After, as a refusal while draining would."""
        exc = ServiceUnavailable(
            "The gateway is shutting down and its grace period for requests in flight "
            f"(server.shutdown_grace_seconds) ended before this answer did (request {call_id}). "
            "Retry: another instance, or this one once restarted, will take it.",
            code="gateway_shutdown",
            headers={"retry-after": "1", "x-sekisho-request-id": call_id},
        )
        if not began:
            await http.send_error(send, exc, rid)
        elif stream is not None and not finished:
            if stream.end_with is not None:
                body = stream.end_with(exc)
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    def _log(
        self,
        scope: http.Scope,
        rid: str,
        principal: Principal | None,
        path: str,
        status: int,
        endpoint: str,
        started: float,
        error: str | None = None,
        client_request_id: str | None = None,
        upstream_request_id: str | None = None,
        outcome: Outcome | None = None,
    ) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        extra: dict[str, Any] = {
            "request_id": rid,
            "path": path if path in self._model_routes or path == "/v1/models" else _path(path),
            "status": status,
            "endpoint": endpoint,
            "ms": round((time.perf_counter() - started) * 1000, 3),
            "pid": self._pid,  # which worker answered, with --workers N
            "client": self._client_address.of(scope),
        }
        if principal is not None:
            extra["tenant"] = principal.tenant
            extra["key_id"] = principal.key_id
        if error:
            extra["error"] = error
        if client_request_id is not None and client_request_id != rid:
            extra["client_request_id"] = client_request_id  # the client's x-request-id
        if upstream_request_id is not None:
            extra["upstream_request_id"] = upstream_request_id  # the provider's id of it
        retry = http.header(scope, b"x-stainless-retry-count")
        if retry and retry.isascii() and retry.isdigit() and len(retry) <= 4 and int(retry):
            # The OpenAI SDKs' count of tries before this one: the same call again after a
            # 408, 409, 429, 5xx or a lost connection (each try is a request of its own).
            extra["client_retry"] = int(retry)
        if outcome is not None and outcome.route is not None:
            # What it cost, per key: chargeback and anomaly alerts from the log alone.
            extra["model"] = outcome.route.model.id
            extra["prompt_tokens"] = outcome.prompt_tokens
            extra["completion_tokens"] = outcome.completion_tokens
            if outcome.usage_estimated:
                extra["usage_estimated"] = True
            if outcome.error_code:
                extra["error"] = outcome.error_code  # e.g. output_masked, upstream_stream_broken
        log.info("request", extra=extra)

    async def _models(self, scope: http.Scope, send: http.Send, rid: str, path: str) -> None:
        if scope["method"] != "GET":
            raise MethodNotAllowed(f"{path} accepts GET, not {scope['method']}.", allow=("GET",))
        principal = await self.authenticator.authenticate_headers(scope["headers"])
        require(principal, MODEL_ROUTES["/v1/models"])
        if principal.tenant not in self.config.tenants:  # it may use nothing, so lists nothing
            raise PermissionDenied(
                f"The key's tenant {principal.tenant!r} is not in the configuration."
            )
        policy = self.config.policies.get(principal.tenant)
        allowed = policy.models if policy is not None else None
        usable = None
        pipeline = self.pipeline
        if policy is not None and pipeline is not None:
            plain = policy.classify({}, None)  # a request with nothing in it: the floor

            def usable(name: str, candidates: tuple[Route, ...]) -> bool:
                # A model whose every endpoint the policy refuses even a plain request (a
                # rule keeping all traffic in Japan, say) is one the caller can never use.
                return pipeline.reaches(principal, name, candidates, plain, {})

        listing = routes.list_models(self.config.catalogue, principal, allowed, usable)
        if path == "/v1/models":
            await http.send_json(send, 200, listing, rid)
        else:
            await http.send_json(
                send, 200, routes.get_model(listing, path[len("/v1/models/") :]), rid
            )

    async def _kept_response(self, scope: http.Scope, send: http.Send, rid: str, path: str) -> None:
        """A response sekisho keeps in the tenant's home region, read back (api/openai.py)."""
        principal = await self.authenticator.authenticate_headers(scope["headers"])
        require(principal, MODEL_ROUTES["/v1/responses"])
        tenant = self.config.tenants.get(principal.tenant)
        if tenant is None or self.recorder is None:
            raise PermissionDenied(
                f"The key's tenant {principal.tenant!r} is not in the configuration."
            )
        body = await routes.kept_response(
            self.stores, tenant, principal, self.recorder, scope["method"], path,
            http.query(scope), rid, self.pipeline.owned(principal) if self.pipeline else None,
        )  # fmt: skip
        await http.send_json(send, 200, body, rid)

    async def _healthz(
        self, scope: http.Scope, receive: http.Receive, send: http.Send, rid: str
    ) -> None:
        await http.send_json(send, 200, {"status": "ok"}, rid)

    async def _readyz(
        self, scope: http.Scope, receive: http.Receive, send: http.Send, rid: str
    ) -> None:
        # Not ready while this process can only refuse: its ledger or a regional store fails
        # to make writes durable (fail closed means every request would get a 503). Endpoint
        # health is reported but does not count: a failover or another process cannot help it.
        writers: dict[str, Any] = {}
        states: list[dict[str, Any]] = []
        if self.ledger is not None:
            writers["ledger"] = _writer_state(self.ledger.health)
            states.append(writers["ledger"])
        if self.stores is not None:
            regions = {n: _writer_state(r.health) for n, r in self.stores.regions.items()}
            writers["stores"] = regions
            states.extend(regions.values())
        ready = self.ready and all(state["ok"] for state in states)
        if not self._may_see_metrics(scope):
            # With server.metrics_token, why (writers' errors, endpoints' last errors, which
            # name internal hosts and paths) is for the holder of the token; a balancer's
            # probe needs only the status.
            await http.send_json(send, 200 if ready else 503, {"ready": ready}, rid)
            return
        body = {
            "ready": ready,
            "in_flight": self.in_flight,
            **writers,
            "endpoints": self.health.snapshot(),
        }
        if self.health.shared is not None:
            # Reported, not counted: every instance shares the one Redis, so taking this one
            # out of the balancer would not help (its capped endpoints and limits refuse).
            body["redis"] = await self.health.shared.reachable(_READYZ_REDIS_TIMEOUT)
        await http.send_json(send, 200 if ready else 503, body, rid)

    async def _metrics(
        self, scope: http.Scope, receive: http.Receive, send: http.Send, rid: str
    ) -> None:
        if not self._may_see_metrics(scope):
            raise AuthenticationFailed(
                "/metrics needs 'Authorization: Bearer <server.metrics_token>'.",
                code="metrics_token_required",
            )
        self._endpoint_up()
        self._writers_up()
        self._count_dropped_lines()
        self._check_descriptors()
        await self._redis_up()
        body = self.metrics.exposition()
        await http.send_bytes(send, 200, body, rid, ctype=CONTENT_TYPE_LATEST.encode())

    def _may_see_metrics(self, scope: http.Scope) -> bool:
        """True without ``server.metrics_token``, or with ``Authorization: Bearer <it>``."""
        token = self.config.server.metrics_token
        if not token:
            return True
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, value = given.strip().partition(b" ")
        # the scheme in any case (RFC 9110 §11.1), the token exactly
        return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), token.encode())

    def _endpoint_up(self) -> None:
        m = self.metrics
        catalogue = self.config.catalogue
        for ep in catalogue.endpoints:
            labels = (ep.id, ep.jurisdiction.label)
            m.endpoint_up.labels(*labels).set(1 if self.health.is_up(ep.id) else 0)
            snapshot = self.health.state(ep.id)
            m.endpoint_in_flight.labels(*labels).set(snapshot.in_flight)
            m.endpoint_waiting.labels(*labels).set(snapshot.waiting)
            if ep.max_concurrency is not None:
                m.endpoint_max_concurrency.labels(*labels).set(ep.max_concurrency)
        for model in catalogue.model_names:
            serving = {route.endpoint.id for route in catalogue.routes(model)}
            up = sum(1 for endpoint in serving if self.health.is_up(endpoint))
            m.child(m.model_endpoints_up, model).set(up)

    def _writers_up(self) -> None:
        m = self.metrics
        if self.ledger is not None:
            m.child(m.writer_up, "ledger", "").set(1 if self.ledger.health.state()[0] else 0)
            m.child(m.writer_queue, "ledger", "").set(self.ledger.waiting())
        if self.stores is not None:
            for name, region in self.stores.regions.items():
                m.child(m.writer_up, "store", name).set(1 if region.health.state()[0] else 0)
                m.child(m.writer_queue, "store", name).set(region.waiting())

    async def _redis_up(self) -> None:
        """Ask Redis at the scrape (one PING, at most 0.5 s), as /readyz does: with several
        workers, the one answering the scrape asks, and its answer is the latest."""
        gauge = self.metrics.redis_up
        if gauge is not None and self.health.shared is not None:
            answer = await self.health.shared.reachable(_READYZ_REDIS_TIMEOUT)
            gauge.set(1 if answer["ok"] else 0)

    def _count_dropped_lines(self) -> None:
        dropped = dropped_lines()
        if dropped > self._dropped_lines_seen:
            self.metrics.log_lines_dropped.inc(dropped - self._dropped_lines_seen)
            self._dropped_lines_seen = dropped

    async def _publish_health(self) -> None:
        """With several workers, only one answers a scrape: the others publish their view of
        the endpoints' and the durable writers' health every few seconds."""
        while True:
            self._endpoint_up()
            self._writers_up()
            self._count_dropped_lines()
            await asyncio.sleep(_PUBLISH_HEALTH_EVERY)


def create_app(config: Config) -> Gateway:
    return Gateway(config)


# Azure OpenAI's URL layout, as its clients (openai.AzureOpenAI, Semantic Kernel, LangChain's
# AzureChatOpenAI) send it: /openai/deployments/{deployment}/chat/completions?api-version=…,
# and the newer /openai/v1/… . An application written for Azure OpenAI moves to sekisho by
# changing its endpoint URL; its key goes in the api-key header as before.
_DEPLOYMENT = "sekisho.azure_deployment"


# Why the stored chat completions API (the SDK's chat.completions.list, retrieve, update,
# delete, messages.list) is not served.
def _is_cors_preflight(scope: http.Scope) -> bool:
    """A browser asking whether a page from another origin may call this path (Fetch
    standard: OPTIONS with Origin and Access-Control-Request-Method)."""
    return (
        scope["method"] == "OPTIONS"
        and http.header(scope, b"origin") is not None
        and http.header(scope, b"access-control-request-method") is not None
    )


_STORED_CHAT = (
    " Stored chat completions ('store': true) are kept by a provider, and sekisho does not "
    "read them back. Responses that sekisho keeps, in the tenant's home region, are read with "
    "GET /v1/responses/{id} (the Responses API)."
)
_AZURE_OPERATIONS = ("chat/completions", "embeddings", "completions", "responses")


def _azure_path(scope: http.Scope, path: str) -> str:
    """The /v1/ path an Azure-style path stands for; a deployment's name, which decides the
    model in Azure OpenAI, is kept in the scope to replace the body's ``model``."""
    if path.startswith("/openai/v1/"):
        return path[len("/openai") :]
    if path == "/openai/models":
        return "/v1/models"
    if path == "/openai/responses" or path.startswith("/openai/responses/"):
        # Azure serves the Responses API without a deployment (the model is the body's), and
        # the SDKs' AzureOpenAI sends it there: create, retrieve, input_items.
        return "/v1" + path[len("/openai") :]
    head, sep, rest = path[len("/openai/") :].partition("/")
    if head == "deployments" and sep:
        # The operation is the path's end: the deployment is all before it, slashes too (the
        # SDK sends a model named "Qwen/Qwen2.5-7B" as two segments).
        for operation in _AZURE_OPERATIONS:
            deployment = rest.removesuffix("/" + operation)
            if deployment != rest and deployment:
                scope[_DEPLOYMENT] = unquote(deployment)
                return f"/v1/{operation}"
    return path


def _with_model(raw: bytes, deployment: str) -> bytes:
    """The body with ``model`` set to the deployment named in the path (Azure OpenAI ignores
    the body's). A body that is not a JSON object is left for the parser to refuse."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    if not isinstance(body, dict):
        return raw
    body["model"] = deployment
    return orjson.dumps(body)


def app_from_env() -> Gateway:
    """Factory for ``uvicorn --factory`` with several workers: config path from SEKISHO_CONFIG.

    Each worker is a fresh interpreter, so it sets up the JSON logs itself (otherwise its log
    lines would be plain text, and its info lines lost)."""
    from sekisho import logs

    logs.configure()
    path = os.environ["SEKISHO_CONFIG"]
    try:
        # The configuration the supervisor validated and pinned (a worker respawned after a
        # crash serves it too, whatever the file on disk says now); the file without one.
        pinned = supervisor.load_snapshot(path)
        config = (pinned or load_config(path)).with_server(
            data_dir=os.environ.get("SEKISHO_DATA_DIR"),
            workers=int(os.environ.get("SEKISHO_WORKERS") or 0) or None,  # --workers, if given
        )
    except ConfigError as exc:
        # On a SIGHUP restart the supervisor keeps the running workers when this one fails.
        log.error(
            "configuration is not valid; this worker does not start",
            extra={"problems": [str(p) for p in exc.problems]},
        )
        raise SystemExit(1) from None
    logs.configure(config.server.log_level)
    gateway = create_app(config)
    pid = os.environ.get("SEKISHO_SUPERVISOR_PID", "")
    run_dir = os.environ.get(supervisor.ENV_RUN_DIR)
    if pid.isdigit():
        if int(pid) != os.getppid():
            log.error("the --workers supervisor has exited; this worker does not start")
            raise SystemExit(1)
        gateway.supervisor_pid = int(pid)
        gateway.run_dir = Path(run_dir) if run_dir else None
    return gateway


def _gone_code(exc: http.ClientGone) -> str:
    """The log's code for a client that went away before its answer was complete."""
    return "client_stalled" if isinstance(exc, http.ClientStalled) else "client_disconnected"


def _writer_state(health: WriterHealth) -> dict[str, Any]:
    ok, why = health.state()
    return {"ok": ok} if ok else {"ok": False, "reason": why}


def _first_event_from(
    outcome: Outcome | None, endpoint: str, jurisdiction: str
) -> tuple[str, str] | None:
    """The labels of a stream's time to first token: its endpoint's. A stream started before
    its route was known (stream_keepalive_seconds) learns it when its relay begins; one that
    failed before any endpoint answered sends its error, not a first token, and is not timed."""
    if endpoint != "-":
        return endpoint, jurisdiction
    route = outcome.route if outcome is not None else None
    if route is None:
        return None
    return route.endpoint.id, route.endpoint.jurisdiction.label


def _reached(endpoint: str, jurisdiction: str) -> tuple[str, str]:
    """A request cut before its answer (its client left, shutdown's grace ran out) after its
    prompt reached an endpoint: the log line and the labels name where it went."""
    route = sent_to.get()
    if endpoint != "-" or route is None:
        return endpoint, jurisdiction
    return route.endpoint.id, route.endpoint.jurisdiction.label


# Longest client-chosen path the log keeps (masked); a longer one is scanned on the event loop
# for nothing useful (10 ms for 60 KB), and a cut one could keep part of a value.
_LOGGED_PATH = 2048


def _path(path: str) -> str:
    """A path that names something the client chose (an id, a model, a path sekisho does not
    serve) as the log may hold it: each value the detectors find masked ([EMAIL]); past
    ``_LOGGED_PATH`` characters, only its length."""
    if len(path) > _LOGGED_PATH:
        return f"(withheld: {len(path)} characters)"
    try:
        return mask_values(path)
    except Exception:
        return "(withheld: the path could not be inspected)"
