"""The request's path, in order. Read this module top to bottom to know where everything happens.

    1 identify   (api)      API key → Principal
    2 inspect    classify/  scan the input → findings → classification level
    3 decide     policy/    eligible endpoints in order, action, reasons, policy digest
    4 transform  classify/  redact or pseudonymise as decided
    5 commit     ledger/    the decision entry is durable before any byte goes upstream
    6 dispatch   routing/   try the eligible routes in plan order; fail over only among them
    7 inspect    classify/  scan the output (incrementally while streaming), re-identify
    8 record     ledger/    the outcome entry is durable before the response completes
    9 respond    (api)      response + x-sekisho-* headers

Each step is a method of ``Pipeline`` with typed inputs and outputs. A step never reaches around
another: dispatch sees only ``decision.eligible``, so no byte can leave the eligible set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from sekisho.classify import Finding, Pseudonymiser, Scanner, redact, summarise
from sekisho.errors import (
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    PolicyViolation,
    SekishoError,
    UpstreamFailed,
    UpstreamTimeout,
)
from sekisho.identity import Principal
from sekisho.metrics import Metrics
from sekisho.policy.compiler import CompiledPolicy
from sekisho.policy.decision import Decision
from sekisho.providers import (
    Transport,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from sekisho.routing import Catalogue, Health, Route, Selector
from sekisho.types import Action

log = logging.getLogger("sekisho.pipeline")

Kind = Literal["chat", "embeddings"]


@dataclass(slots=True)
class Call:
    """One client request on its way through the pipeline."""

    request_id: str
    principal: Principal
    kind: Kind
    model: str
    body: dict[str, Any]
    texts: list[str]
    stream: bool = False
    include_usage: bool = False
    declared_classification: str | None = None
    started: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class Outcome:
    status: int
    route: Route | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error_code: str | None = None
    output_texts: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Reply:
    """A complete response."""

    status: int
    body: bytes
    headers: list[tuple[str, str]]


@dataclass(slots=True)
class StreamReply:
    """A streaming (SSE) response: headers now, chunks as they come."""

    headers: list[tuple[str, str]]
    chunks: AsyncIterator[bytes]


class Recorder(Protocol):
    """Where decisions and outcomes become durable (the ledger)."""

    async def decision(self, call: Call, decision: Decision, tenant_region: str) -> str | None:
        """Make the decision entry durable; return the compact receipt reference, if any."""
        ...

    async def outcome(self, call: Call, decision: Decision, outcome: Outcome) -> None: ...


class TenantView(Protocol):
    name: str
    home_region: str
    default_classification: str


class Pipeline:
    def __init__(
        self,
        *,
        catalogue: Catalogue,
        tenants: Mapping[str, TenantView],
        policies: Mapping[str, CompiledPolicy],
        scanners: Mapping[str, Scanner],
        transports: Mapping[str, Transport],
        health: Health,
        selector: Selector,
        metrics: Metrics,
        recorder: Recorder | None,
        max_attempts: int = 3,
    ) -> None:
        self.catalogue = catalogue
        self.tenants = tenants
        self.policies = policies
        self.scanners = scanners
        self.transports = transports
        self.health = health
        self.selector = selector
        self.metrics = metrics
        self.recorder = recorder
        self.max_attempts = max_attempts

    async def run(self, call: Call) -> Reply | StreamReply:
        tenant = self._tenant(call)
        routes = self._routes(call)
        findings = self.inspect(call, tenant)  # 2
        decision = self.decide(call, tenant, routes, findings)  # 3
        pseudonymiser = self.transform(call, decision, findings)  # 4
        receipt = await self.commit(call, decision, tenant)  # 5
        headers = self._decision_headers(call, decision, receipt)
        try:
            route, upstream = await self.dispatch(call, decision)  # 6
        except SekishoError as exc:
            await self.record(call, decision, Outcome(exc.status, error_code=exc.code))
            raise
        headers += _route_headers(route)
        if call.stream:
            chunks = self._stream(call, decision, route, upstream, pseudonymiser)
            return StreamReply(headers, chunks)
        return await self._complete(call, decision, route, upstream, pseudonymiser, headers)

    # -- 1 identify happens in the api; here we only resolve what the principal points at --

    def _tenant(self, call: Call) -> TenantView:
        tenant = self.tenants.get(call.principal.tenant)
        if tenant is None:
            raise PermissionDenied(
                f"The key's tenant {call.principal.tenant!r} is not in the configuration."
            )
        return tenant

    def _routes(self, call: Call) -> tuple[Route, ...]:
        routes = self.catalogue.routes(call.model)
        want = "chat" if call.kind == "chat" else "embedding"
        routes = tuple(r for r in routes if r.model.kind == want)
        if not routes:
            other = self.catalogue.kind(call.model)
            if other is not None:
                raise InvalidRequest(
                    f"The model '{call.model}' is an {other} model; it cannot serve "
                    f"{'chat completions' if call.kind == 'chat' else 'embeddings'}.",
                    param="model",
                    code="model_not_supported",
                )
            raise ModelNotFound(
                f"The model '{call.model}' does not exist or you do not have access to it. "
                "GET /v1/models lists the models you may use.",
                param="model",
            )
        if call.principal.models is not None and call.model not in call.principal.models:
            raise ModelNotFound(
                f"The model '{call.model}' does not exist or you do not have access to it "
                f"(key {call.principal.key_id} may use: {', '.join(sorted(call.principal.models))}).",
                param="model",
            )
        return routes

    # -- 2 inspect -------------------------------------------------------------------------

    def inspect(self, call: Call, tenant: TenantView) -> list[Finding]:
        scanner = self.scanners[tenant.name]
        findings: list[Finding] = []
        for text in call.texts:
            findings.extend(scanner.scan(text))
        return findings

    # -- 3 decide --------------------------------------------------------------------------

    def decide(
        self, call: Call, tenant: TenantView, routes: tuple[Route, ...], findings: list[Finding]
    ) -> Decision:
        policy = self.policies[tenant.name]
        counts = summarise(findings)
        level = policy.classify(counts, call.declared_classification)
        decision = policy.decide(
            model=call.model,
            routes=routes,
            level=level,
            finding_counts=counts,
            key_models=call.principal.models,
        )
        if decision.action == Action.BLOCK or not decision.eligible:
            self.metrics.policy_refusals.labels(tenant.name, level.label).inc()
            raise PolicyViolation(decision.refusal_message())
        return decision

    # -- 4 transform -----------------------------------------------------------------------

    def transform(
        self, call: Call, decision: Decision, findings: list[Finding]
    ) -> Pseudonymiser | None:
        redact_types = decision.redact_types
        pseudo_types = decision.pseudonymise_types
        if not findings or not (redact_types or pseudo_types):
            return None
        if not any(f.type in redact_types or f.type in pseudo_types for f in findings):
            return None
        scanner = self.scanners[call.principal.tenant]
        pseudo = Pseudonymiser() if pseudo_types else None

        def rewrite(text: str) -> str:
            found = [f for f in scanner.scan(text) if f.type in redact_types or f.type in pseudo_types]
            if not found:
                return text
            if pseudo is not None:
                text = pseudo.pseudonymise(text, [f for f in found if f.type in pseudo_types])
                found = [f for f in scanner.scan(text) if f.type in redact_types]
            return redact(text, found) if found else text

        _rewrite_texts(call, rewrite)
        return pseudo

    # -- 5 commit --------------------------------------------------------------------------

    async def commit(self, call: Call, decision: Decision, tenant: TenantView) -> str | None:
        if self.recorder is None:
            return None
        return await self.recorder.decision(call, decision, tenant.home_region)

    # -- 6 dispatch ------------------------------------------------------------------------

    async def dispatch(self, call: Call, decision: Decision) -> tuple[Route, UpstreamResponse]:
        plan = self.selector.plan(decision.eligible, self.max_attempts)
        last: UpstreamError | None = None
        tried: list[str] = []
        for route in plan:
            ep = route.endpoint
            transport = self.transports[ep.family]
            tried.append(ep.id)
            state = self.health.state(ep.id)
            state.in_flight += 1
            try:
                upstream = await transport.open(route, call.kind, call.body, stream=call.stream)
                if call.stream:
                    upstream = await _Primed.prime(upstream, ep.id)
            except UpstreamError as exc:
                state.in_flight -= 1
                self._upstream_failed(route, exc)
                if isinstance(exc, UpstreamStatusError) and not exc.retryable:
                    raise _client_error_from(exc) from None
                last = exc
                continue
            except BaseException:
                state.in_flight -= 1
                raise
            return route, _Release(upstream, state)
        if isinstance(last, UpstreamTimeoutError):
            raise UpstreamTimeout(
                f"No eligible endpoint answered in time (tried: {', '.join(tried)})."
            )
        detail = f"{last.detail}" if last else "no endpoint could be tried"
        raise UpstreamFailed(
            f"Every eligible endpoint failed (tried: {', '.join(tried)}; last: {detail}). "
            "The request was not sent anywhere else.",
            headers={"retry-after": "1"},
        )

    def _upstream_failed(self, route: Route, exc: UpstreamError) -> None:
        ep = route.endpoint
        retry_after = None
        if isinstance(exc, UpstreamStatusError):
            if not exc.retryable:
                return  # a 4xx about the request says nothing about the endpoint's health
            retry_after = _parse_retry_after(exc.retry_after)
        self.health.failure(ep.id, str(exc), retry_after)
        self.metrics.upstream_errors.labels(ep.id, ep.jurisdiction.country, exc.reason).inc()
        log.warning(
            "upstream failed",
            extra={"endpoint": ep.id, "reason": exc.reason, "detail": exc.detail},
        )

    # -- 7 inspect output, 8 record, 9 respond (complete) --------------------------------

    async def _complete(
        self,
        call: Call,
        decision: Decision,
        route: Route,
        upstream: UpstreamResponse,
        pseudo: Pseudonymiser | None,
        headers: list[tuple[str, str]],
    ) -> Reply:
        try:
            raw = await upstream.read()
            data = orjson.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except (orjson.JSONDecodeError, ValueError):
            exc = UpstreamProtocolError(route.endpoint.id, "answered with a body that is not JSON")
            self._upstream_failed(route, exc)
            await self.record(call, decision, Outcome(502, route, error_code="upstream_protocol"))
            raise UpstreamFailed(
                f"Endpoint {route.endpoint.id} answered with a body that is not an OpenAI "
                "response (not JSON)."
            ) from None
        except UpstreamError as exc:
            self._upstream_failed(route, exc)
            await self.record(call, decision, Outcome(502, route, error_code="upstream_" + exc.reason))
            raise UpstreamFailed(f"Endpoint {route.endpoint.id} failed: {exc.detail}") from None
        self.health.success(route.endpoint.id)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        outcome = Outcome(
            200,
            route,
            prompt_tokens=_int(usage.get("prompt_tokens")),
            completion_tokens=_int(usage.get("completion_tokens")),
        )
        if call.kind == "chat":
            changed = self._inspect_output(data, decision, pseudo, outcome)
            if changed:
                raw = orjson.dumps(data)
        await self.record(call, decision, outcome)
        return Reply(200, raw, headers)

    def _inspect_output(
        self, data: dict[str, Any], decision: Decision, pseudo: Pseudonymiser | None,
        outcome: Outcome,
    ) -> bool:
        changed = False
        for choice in data.get("choices") or ():
            msg = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(msg, dict):
                continue
            content = msg.get("content")
            if isinstance(content, str):
                outcome.output_texts.append(content)
                if pseudo is not None:
                    restored = pseudo.reidentify(content)
                    if restored != content:
                        msg["content"] = restored
                        changed = True
        return changed

    # -- 7 inspect output, 8 record, 9 respond (streaming) -------------------------------

    async def _stream(
        self,
        call: Call,
        decision: Decision,
        route: Route,
        upstream: UpstreamResponse,
        pseudo: Pseudonymiser | None,
    ) -> AsyncIterator[bytes]:
        outcome = Outcome(200, route)
        ep = route.endpoint
        reident = _StreamReidentify(pseudo) if pseudo is not None else None
        done = False
        try:
            async for line in upstream.lines():
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                try:
                    event = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    raise UpstreamProtocolError(ep.id, "stream event is not JSON") from None
                if not isinstance(event, dict):
                    raise UpstreamProtocolError(ep.id, "stream event is not an object")
                usage = event.get("usage")
                if isinstance(usage, dict):
                    outcome.prompt_tokens = _int(usage.get("prompt_tokens"))
                    outcome.completion_tokens = _int(usage.get("completion_tokens"))
                if reident is not None and reident.apply(event):
                    payload = orjson.dumps(event)
                yield b"data: " + payload + b"\n\n"
            if not done:
                raise UpstreamProtocolError(ep.id, "stream ended without [DONE]")
            if reident is not None:
                tail = reident.flush_event()
                if tail is not None:
                    yield b"data: " + orjson.dumps(tail) + b"\n\n"
            self.health.success(ep.id)
            await self.record(call, decision, outcome)
            yield b"data: [DONE]\n\n"
        except UpstreamError as exc:
            # Bytes have reached the client: no failover now. Tell the client in-stream, in the
            # shape the OpenAI SDKs raise as an APIError.
            self._upstream_failed(route, exc)
            outcome.status = 502
            outcome.error_code = "upstream_stream_broken"
            await self.record(call, decision, outcome)
            err = {
                "error": {
                    "message": f"The stream from endpoint {ep.id} broke: {exc.detail}.",
                    "type": "upstream_error",
                    "param": None,
                    "code": "upstream_stream_broken",
                }
            }
            yield b"data: " + orjson.dumps(err) + b"\n\n"
        except asyncio.CancelledError:
            outcome.status = 499
            outcome.error_code = "client_disconnected"
            await asyncio.shield(self.record(call, decision, outcome))
            raise
        finally:
            upstream.close()

    # -- 8 record --------------------------------------------------------------------------

    async def record(self, call: Call, decision: Decision, outcome: Outcome) -> None:
        route = outcome.route
        ep_id = route.endpoint.id if route else "-"
        juris = route.endpoint.jurisdiction.country if route else "-"
        if route is not None and (outcome.prompt_tokens or outcome.completion_tokens):
            self.metrics.tokens.labels(ep_id, juris, "prompt").inc(outcome.prompt_tokens)
            self.metrics.tokens.labels(ep_id, juris, "completion").inc(outcome.completion_tokens)
        if self.recorder is not None:
            await self.recorder.outcome(call, decision, outcome)

    def _decision_headers(
        self, call: Call, decision: Decision, receipt: str | None
    ) -> list[tuple[str, str]]:
        h = [
            ("x-sekisho-classification", decision.level.label),
            ("x-sekisho-policy-digest", decision.policy_digest),
        ]
        if decision.action != Action.ALLOW:
            h.append(("x-sekisho-action", str(decision.action)))
        if receipt is not None:
            h.append(("x-sekisho-receipt", receipt))
        return h


def _route_headers(route: Route) -> list[tuple[str, str]]:
    ep = route.endpoint
    return [
        ("x-sekisho-endpoint", ep.id),
        ("x-sekisho-jurisdiction", f"{ep.jurisdiction.country}/{ep.jurisdiction.region}"),
        ("x-sekisho-operator-country", ep.operator.country),
    ]


class _Primed:
    """A streaming response whose first line has already been read, so a stream that dies
    before its first event still counts as a failed attempt (and fails over)."""

    def __init__(self, inner: UpstreamResponse, first: list[bytes]) -> None:
        self._inner = inner
        self._first = first
        self.status = inner.status

    @classmethod
    async def prime(cls, inner: UpstreamResponse, endpoint_id: str) -> _Primed:
        it = inner.lines()
        first: list[bytes] = []
        try:
            async for line in it:
                first.append(line)
                if line.startswith(b"data:"):
                    break
        except UpstreamError:
            inner.close()
            raise
        except asyncio.CancelledError:
            inner.close()
            raise
        if not first or not first[-1].startswith(b"data:"):
            inner.close()
            raise UpstreamProtocolError(endpoint_id, "stream ended before its first event")
        p = cls(inner, first)
        p._iter = it
        return p

    _iter: AsyncIterator[bytes]

    async def read(self) -> bytes:
        raise TypeError("a streaming response is read with lines()")

    async def lines(self) -> AsyncIterator[bytes]:
        for line in self._first:
            yield line
        async for line in self._iter:
            yield line

    def close(self) -> None:
        self._inner.close()


class _Release:
    """Decrement the endpoint's in-flight count exactly once, when the response is done."""

    def __init__(self, inner: UpstreamResponse, state: Any) -> None:
        self._inner = inner
        self._state = state
        self._open = True
        self.status = inner.status

    def _done(self) -> None:
        if self._open:
            self._open = False
            self._state.in_flight -= 1

    async def read(self) -> bytes:
        try:
            return await self._inner.read()
        finally:
            self._done()

    def lines(self) -> AsyncIterator[bytes]:
        return self._inner.lines()

    def close(self) -> None:
        self._done()
        self._inner.close()


class _StreamReidentify:
    """Restore pseudonymised values in streamed deltas, even when a placeholder is split
    across events: text is held back while it could be the start of a placeholder."""

    def __init__(self, pseudo: Pseudonymiser) -> None:
        self._pseudo = pseudo
        self._held: dict[int, str] = {}
        self._last: dict[str, Any] | None = None

    def apply(self, event: dict[str, Any]) -> bool:
        changed = False
        for choice in event.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict) or not isinstance(delta.get("content"), str):
                continue
            idx = choice.get("index", 0)
            text = self._held.pop(idx, "") + delta["content"]
            cut = text.rfind("<")
            if cut != -1 and ">" not in text[cut:] and len(text) - cut < 48:
                self._held[idx] = text[cut:]
                text = text[:cut]
            restored = self._pseudo.reidentify(text)
            if restored != delta["content"]:
                delta["content"] = restored
                changed = True
            self._last = event
        return changed

    def flush_event(self) -> dict[str, Any] | None:
        if not self._held or self._last is None:
            return None
        choices = [
            {"index": i, "delta": {"content": self._pseudo.reidentify(t)}, "finish_reason": None}
            for i, t in self._held.items()
        ]
        self._held.clear()
        base = {k: v for k, v in self._last.items() if k not in ("choices", "usage")}
        return {**base, "choices": choices}


def _rewrite_texts(call: Call, rewrite: Any) -> None:
    if call.kind == "embeddings":
        inp = call.body["input"]
        if isinstance(inp, str):
            call.body["input"] = rewrite(inp)
        elif isinstance(inp, list):
            call.body["input"] = [rewrite(x) if isinstance(x, str) else x for x in inp]
        return
    messages = []
    for m in call.body["messages"]:
        m = dict(m)
        c = m.get("content")
        if isinstance(c, str):
            m["content"] = rewrite(c)
        elif isinstance(c, list):
            m["content"] = [
                {**p, "text": rewrite(p["text"])} if isinstance(p.get("text"), str) else p
                for p in c
            ]
        messages.append(m)
    call.body = {**call.body, "messages": messages}


def _client_error_from(exc: UpstreamStatusError) -> SekishoError:
    """A 4xx from upstream is about the request: pass its message on, in OpenAI's shape."""
    message = f"The endpoint rejected the request (HTTP {exc.status})."
    code = "upstream_rejected"
    try:
        body = orjson.loads(exc.body)
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            message = f"The endpoint rejected the request: {err['message']}"
            code = err.get("code") if isinstance(err.get("code"), str) else code
    except orjson.JSONDecodeError:
        pass
    e = SekishoError(message, code=code)
    e.status = exc.status if 400 <= exc.status < 500 else 502
    e.type = "invalid_request_error"
    return e


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0
