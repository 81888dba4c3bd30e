"""Build the ASGI application from a validated config: wiring only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sekisho.api import http
from sekisho.api import openai as routes
from sekisho.classify import Scanner
from sekisho.config import Config, load_config
from sekisho.errors import MethodNotAllowed, NotFound, SekishoError
from sekisho.identity import KeyStore, Principal
from sekisho.metrics import Metrics
from sekisho.pipeline import Pipeline, Recorder, Reply, StreamReply
from sekisho.providers import Transport, transport_for
from sekisho.routing import Health, Selector

log = logging.getLogger("sekisho.app")

Handler = Callable[[http.Scope, http.Receive, http.Send, str], Awaitable[None]]
ModelHandler = Callable[..., Awaitable[Reply | StreamReply]]


class Gateway:
    """The ASGI application."""

    def __init__(self, config: Config, *, recorder: Recorder | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.health = Health(
            failure_threshold=config.routing.health.failure_threshold,
            backoff_initial=config.routing.health.backoff_initial_seconds,
            backoff_max=config.routing.health.backoff_max_seconds,
        )
        self.keys = KeyStore(config.data_dir / "identity.db")
        self.recorder = recorder
        self.transports: dict[str, Transport] = {}
        self.pipeline: Pipeline | None = None
        self.ready = False
        self.in_flight = 0
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._model_routes: dict[str, ModelHandler] = {
            "/v1/chat/completions": routes.chat_completions,
            "/v1/embeddings": routes.embeddings,
        }
        self._ops: dict[str, Handler] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics,
        }

    # -- lifespan --------------------------------------------------------------------------

    async def startup(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("accept-encoding",)
        )
        for family in {ep.family for ep in self.config.catalogue.endpoints}:
            self.transports[family] = transport_for(family, self._session)
        self.pipeline = Pipeline(
            catalogue=self.config.catalogue,
            tenants=self.config.tenants,
            policies=self.config.policies,
            scanners={name: Scanner() for name in self.config.tenants},
            transports=self.transports,
            health=self.health,
            selector=Selector(self.health),
            metrics=self.metrics,
            recorder=self.recorder,
            max_attempts=self.config.routing.max_attempts,
        )
        interval = self.config.routing.health.probe_interval_seconds
        if interval > 0:
            self._tasks.append(asyncio.create_task(self._probe(interval)))
        self.ready = True
        log.info(
            "sekisho ready",
            extra={
                "endpoints": [ep.id for ep in self.config.catalogue.endpoints],
                "tenants": sorted(self.config.tenants),
                "pid": os.getpid(),
            },
        )

    async def shutdown(self) -> None:
        self.ready = False
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._session is not None:
            await self._session.close()

    async def _probe(self, interval: float) -> None:
        """Active health: GET {base_url}/models on every endpoint that is down."""
        assert self._session is not None
        while True:
            await asyncio.sleep(interval)
            for ep in self.config.catalogue.endpoints:
                if self.health.is_up(ep.id) and self.health.state(ep.id).failures == 0:
                    continue
                url = ep.base_url.rstrip("/") + "/models"
                try:
                    async with self._session.get(
                        url, timeout=aiohttp.ClientTimeout(total=ep.timeouts.connect + 2)
                    ) as resp:
                        if resp.status < 500:
                            self.health.success(ep.id)
                except (aiohttp.ClientError, TimeoutError):
                    pass

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: http.Scope, receive: http.Receive, send: http.Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: http.Receive, send: http.Send) -> None:
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
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: http.Scope, receive: http.Receive, send: http.Send) -> None:
        path: str = scope["path"]
        rid = http.request_id(scope)
        model_handler = self._model_routes.get(path)
        if model_handler is not None:
            await self._model_call(model_handler, path, scope, receive, send, rid)
            return
        try:
            op = self._ops.get(path)
            if op is not None:
                await op(scope, receive, send, rid)
                return
            if path == "/v1/models" or path.startswith("/v1/models/"):
                await self._models(scope, send, rid, path)
                return
            raise NotFound(f"Unknown path {path!r}. sekisho serves /v1/chat/completions, "
                           "/v1/embeddings and /v1/models.", code="unknown_url")
        except SekishoError as exc:
            await http.send_error(send, exc, rid)

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
        watcher: asyncio.Task[None] | None = None
        finished = False
        task = asyncio.current_task()
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{path} accepts POST, not {scope['method']}.")
            assert self.pipeline is not None
            principal = routes.authenticate(scope, self.keys)
            raw = await http.read_body(scope, receive, self.config.server.max_body_bytes)

            async def watch() -> None:
                # A client that goes away cancels its request, and the upstream request with it.
                while True:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        if not finished and task is not None:
                            task.cancel()
                        return

            watcher = asyncio.create_task(watch())
            reply = await handler(self.pipeline, principal, rid, raw, scope)
            hdrs = dict(reply.headers)
            endpoint = hdrs.get("x-sekisho-endpoint", "-")
            jurisdiction = hdrs.get("x-sekisho-jurisdiction", "-")
            if isinstance(reply, StreamReply):
                await http.start_stream(send, rid, reply.headers)
                async for chunk in reply.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                finished = True
                await send({"type": "http.response.body", "body": b""})
                status = 200
            else:
                finished = True
                await http.send_bytes(send, reply.status, reply.body, rid, reply.headers)
                status = reply.status
            self._log(rid, principal, path, status, endpoint, started)
        except SekishoError as exc:
            finished = True
            status = exc.status
            await http.send_error(send, exc, rid)
            self._log(rid, None, path, status, endpoint, started, error=exc.code)
        except http.ClientGone:
            status = 499
        except asyncio.CancelledError:
            if task is not None and task.cancelling() and watcher is not None and watcher.done():
                task.uncancel()
                status = 499
                log.info("client disconnected", extra={"request_id": rid, "path": path})
            else:
                raise
        except Exception:
            finished = True
            log.exception("unexpected error", extra={"request_id": rid})
            status = 500
            err = SekishoError(
                f"sekisho hit an unexpected error (request {rid}); the operator's logs have "
                "the details.")
            with contextlib.suppress(Exception):
                await http.send_error(send, err, rid)
        finally:
            finished = True
            if watcher is not None and not watcher.done():
                watcher.cancel()
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            route_label = "chat" if path.endswith("completions") else "embeddings"
            self.metrics.requests.labels(route_label, str(status), endpoint, jurisdiction).inc()
            self.metrics.latency.labels(route_label, endpoint, jurisdiction).observe(
                time.perf_counter() - started
            )

    def _log(self, rid: str, principal: Principal | None, path: str, status: int,
             endpoint: str, started: float, error: str | None = None) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        extra: dict[str, Any] = {
            "request_id": rid,
            "path": path,
            "status": status,
            "endpoint": endpoint,
            "ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if principal is not None:
            extra["tenant"] = principal.tenant
            extra["key_id"] = principal.key_id
        if error:
            extra["error"] = error
        log.info("request", extra=extra)

    async def _models(self, scope: http.Scope, send: http.Send, rid: str, path: str) -> None:
        if scope["method"] != "GET":
            raise MethodNotAllowed(f"{path} accepts GET, not {scope['method']}.")
        principal = routes.authenticate(scope, self.keys)
        policy = self.config.policies.get(principal.tenant)
        allowed = getattr(policy, "allowed_models", None) if policy is not None else None
        listing = routes.list_models(self.config.catalogue, principal, allowed)
        if path == "/v1/models":
            await http.send_json(send, 200, listing, rid)
        else:
            await http.send_json(send, 200, routes.get_model(listing, path[len("/v1/models/"):]), rid)

    async def _healthz(self, scope: http.Scope, receive: http.Receive, send: http.Send, rid: str) -> None:
        await http.send_json(send, 200, {"status": "ok"}, rid)

    async def _readyz(self, scope: http.Scope, receive: http.Receive, send: http.Send, rid: str) -> None:
        endpoints = self.health.snapshot()
        body = {"ready": self.ready, "in_flight": self.in_flight, "endpoints": endpoints}
        await http.send_json(send, 200 if self.ready else 503, body, rid)

    async def _metrics(self, scope: http.Scope, receive: http.Receive, send: http.Send, rid: str) -> None:
        for ep in self.config.catalogue.endpoints:
            self.metrics.endpoint_up.labels(ep.id, ep.jurisdiction.country).set(
                1 if self.health.is_up(ep.id) else 0
            )
        body = generate_latest(self.metrics.registry)
        await http.send_bytes(send, 200, body, rid, ctype=CONTENT_TYPE_LATEST.encode())


def create_app(config: Config) -> Gateway:
    return Gateway(config)


def app_from_env() -> Gateway:
    """Factory for ``uvicorn --factory`` with several workers: config path from SEKISHO_CONFIG."""
    path = os.environ["SEKISHO_CONFIG"]
    config = load_config(path)
    return create_app(config.with_server(data_dir=os.environ.get("SEKISHO_DATA_DIR")))
