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
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn, Protocol

import orjson

from sekisho._output import (
    RESPONSE_TERMINAL,
    TEXT_FIELDS,
    ResponsesStreamOutput,
    StreamOutput,
    inspect_answer,
    inspect_response,
    json_string_escape,
    pseudonymise_obj,
    response_item_slots,
    rewrite_texts,
)
from sekisho._threads import in_fair_thread
from sekisho._upstream import Primed, Released, client_error_from, parse_answer, parse_retry_after
from sekisho.api.schema import ResponsesRequest
from sekisho.classify import Finding, Pseudonymiser, Scanner, redact, summarise
from sekisho.classify.memo import ScanMemo
from sekisho.errors import (
    EndpointsBusy,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    PolicyViolation,
    SekishoError,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from sekisho.identity import Principal
from sekisho.identity.limits import Admission, Limiter
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
from sekisho.providers.base import upstream_request_id
from sekisho.routing import Catalogue, Health, Route, Selector
from sekisho.routing.catalogue import Endpoint
from sekisho.routing.slots import SlotsUnavailable
from sekisho.store import Exchange, RetentionSpec, StoreError, Stores
from sekisho.types import Action

log = logging.getLogger("sekisho.pipeline")

# Characters of input from which a request is scanned in a worker thread: scanning runs at
# roughly 5-20 MB/s, so below this it costs the event loop a few milliseconds at most.
_SCAN_IN_THREAD = 64 * 1024


Kind = Literal["chat", "embeddings", "responses", "completions"]


@dataclass(slots=True)
class Call:
    """One client request on its way through the pipeline."""

    request_id: str
    principal: Principal
    kind: Kind
    model: str
    body: dict[str, Any]
    texts: list[str]
    # What the upstream would receive that sekisho cannot read (images, audio, files, token
    # ids): finding type -> count, classified by the policy like findings (fail closed).
    uninspected: dict[str, int] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False
    declared_classification: str | None = None
    started: float = field(default_factory=time.perf_counter)
    findings: dict[str, list[Finding]] = field(default_factory=dict)  # text -> its findings
    admission: Admission | None = None
    pseudonymiser: Pseudonymiser | None = None
    upstream_request_id: str | None = None  # the provider's id of the request that answered

    def prompt(self) -> Any:
        """What the client asked, as stored and hashed in the ledger: the messages, the
        embeddings' input, or a Responses request's instructions and input."""
        if self.kind == "chat":
            return self.body.get("messages")
        if self.kind == "responses":
            return {"instructions": self.body.get("instructions"), "input": self.body.get("input")}
        if self.kind == "completions":
            return {"prompt": self.body.get("prompt"), "suffix": self.body.get("suffix")}
        return self.body.get("input")


@dataclass(slots=True)
class Outcome:
    status: int
    route: Route | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error_code: str | None = None
    output_texts: list[str] = field(default_factory=list)
    # A Responses answer's output items as delivered: kept whole, so that a later request can
    # continue the conversation from the tenant's own store (previous_response_id).
    output_items: list[Any] | None = None
    usage_estimated: bool = False  # the endpoint reported no usage: the counts are sekisho's

    def estimate_usage(self, prompt_texts: list[str]) -> None:
        """An endpoint that reports no token usage (an old server, a stream without it) is
        still charged: a rough count from the texts, so token limits cannot be bypassed."""
        if self.prompt_tokens or self.completion_tokens or self.route is None:
            return
        self.prompt_tokens = estimate_tokens(prompt_texts)
        self.completion_tokens = estimate_tokens(self.output_texts)
        self.usage_estimated = True


def estimate_tokens(texts: list[str]) -> int:
    """About four ASCII characters per token, one per other character (Japanese text runs
    close to one token per character in current tokenizers): errs high rather than low."""
    n = 0
    for text in texts:
        ascii_chars = len(text.encode("ascii", "ignore"))
        n += -(-ascii_chars // 4) + len(text) - ascii_chars
    return n


@dataclass(slots=True)
class Reply:
    """A complete response."""

    status: int
    body: bytes
    headers: list[tuple[str, str]]
    outcome: Outcome | None = None  # what the access log reports (model, tokens)


@dataclass(slots=True)
class StreamReply:
    """A streaming (SSE) response: headers now, chunks as they come."""

    headers: list[tuple[str, str]]
    chunks: AsyncIterator[bytes]
    outcome: Outcome | None = None  # complete once the chunks are


class Recorder(Protocol):
    """Where decisions and outcomes become durable (the ledger)."""

    async def decision(self, call: Call, decision: Decision, tenant_region: str) -> str | None:
        """Make the decision entry durable; return the compact receipt reference, if any."""
        ...

    async def outcome(self, call: Call, decision: Decision, outcome: Outcome) -> None: ...


class OutputRule(Protocol):
    @property
    def action(self) -> str: ...

    @property
    def types(self) -> list[str]: ...


class DetectionView(Protocol):
    @property
    def output(self) -> OutputRule: ...


class TenantView(Protocol):
    """What the pipeline reads of a tenant (sekisho.config.Tenant)."""

    @property
    def name(self) -> str: ...

    @property
    def home_region(self) -> str: ...

    @property
    def default_classification(self) -> str: ...

    @property
    def detection(self) -> DetectionView: ...

    @property
    def retention(self) -> RetentionSpec: ...

    @property
    def provider_features(self) -> frozenset[str]: ...


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
        limiter: Limiter | None = None,
        stores: Stores | None = None,
        max_attempts: int = 3,
        stream_keepalive: float = 0.0,
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
        self.limiter = limiter
        self.stores = stores
        self.max_attempts = max_attempts
        self.stream_keepalive = stream_keepalive
        self._memos: dict[str, ScanMemo] = {}
        self._route_cache: dict[tuple[str, str], tuple[Route, ...]] = {}

    async def run(self, call: Call) -> Reply | StreamReply:
        tenant = self._tenant(call)
        routes = self._routes(call)
        if call.kind == "chat":
            _check_provider_features(call.body, tenant)
        elif call.kind == "responses":
            previous = call.body.get("previous_response_id")
            if (
                _keeps_conversations(tenant)
                and isinstance(previous, str)
                and _request_of(previous) is not None
            ):  # one of sekisho's own: continued from the tenant's store
                await self._continue(call, tenant)
            _check_responses_features(call.body, tenant)
        await self._admit(call)
        try:
            if sum(map(len, call.texts)) < _SCAN_IN_THREAD:
                findings, failed = self.inspect(call, tenant)  # 2
            else:  # a long document: the event loop serves everyone else meanwhile
                findings, failed = await in_fair_thread(self.inspect, call, tenant)
            decision = self.decide(call, tenant, routes, findings, failed)  # 3
            if decision.denied:
                await self.refuse(call, decision, tenant)
            call.pseudonymiser = self.transform(call, decision, findings)  # 4
            receipt = await self.commit(call, decision, tenant)  # 5
        except BaseException:
            await self._settle(call, None)
            raise
        headers = self._decision_headers(call, decision, receipt)
        try:
            if call.stream and self.stream_keepalive > 0:
                dispatching = asyncio.ensure_future(self.dispatch(call, decision))
                try:
                    await asyncio.wait((dispatching,), timeout=self.stream_keepalive)
                except asyncio.CancelledError:
                    dispatching.cancel()
                    raise
                if not dispatching.done():  # still thinking: start the stream, keep it alive
                    outcome = Outcome(200)
                    chunks = self._stream_when_answered(
                        call, decision, tenant, dispatching, outcome
                    )
                    return StreamReply([*headers, ("x-sekisho-keepalive", "on")], chunks, outcome)
                route, upstream, data = dispatching.result()
            else:
                route, upstream, data = await self.dispatch(call, decision)  # 6
        except SekishoError as exc:
            await self.record(call, decision, Outcome(exc.status, error_code=exc.code))
            raise
        except asyncio.CancelledError:
            # The client left before any endpoint answered: its decision gets an outcome
            # (the audit would otherwise list it with the requests a crash cut short).
            await asyncio.shield(self._gone(call, decision))
            raise
        headers += _route_headers(route)
        if call.upstream_request_id is not None:
            headers.append(("x-sekisho-upstream-request-id", call.upstream_request_id))
        if call.stream:
            outcome = Outcome(200, route)
            chunks = self._stream(call, decision, tenant, route, upstream, outcome)
            return StreamReply(headers, chunks, outcome)
        return await self._complete(call, decision, tenant, route, data, headers)

    async def _admit(self, call: Call) -> None:
        if self.limiter is None:
            return
        body = call.body
        estimate = sum(len(t) for t in call.texts) // 3 + _int(
            body.get("max_completion_tokens")
            or body.get("max_tokens")
            or body.get("max_output_tokens")
            or 256
        )
        call.admission = await self.limiter.admit(call.principal, call.model, estimate)

    async def _settle(self, call: Call, outcome: Outcome | None) -> None:
        if self.limiter is None or call.admission is None:
            return
        prompt = outcome.prompt_tokens if outcome else 0
        completion = outcome.completion_tokens if outcome else 0
        try:
            await self.limiter.settle(call.admission, prompt, completion)
        except Exception:  # usage accounting must not fail a served request
            log.exception("could not settle usage", extra={"request_id": call.request_id})

    # -- 1 identify happens in the api; here we only resolve what the principal points at --

    def _tenant(self, call: Call) -> TenantView:
        tenant = self.tenants.get(call.principal.tenant)
        if tenant is None:
            raise PermissionDenied(
                f"The key's tenant {call.principal.tenant!r} is not in the configuration."
            )
        return tenant

    def _routes(self, call: Call) -> tuple[Route, ...]:
        want = "embedding" if call.kind == "embeddings" else "chat"
        routes = self._route_cache.get((call.model, call.kind))
        if routes is None:
            routes = tuple(
                r
                for r in self.catalogue.routes(call.model)
                if r.model.kind == want and _speaks(r.endpoint, call.kind)
            )
            if routes:  # the catalogue is fixed for the pipeline's life; unknown names aren't kept
                self._route_cache[(call.model, call.kind)] = routes
        if not routes:
            other = self.catalogue.kind(call.model)
            if other is not None and other != want:
                raise InvalidRequest(
                    f"The model '{call.model}' is an {other} model; it cannot serve "
                    f"{_API_NAMES[call.kind]}.",
                    param="model",
                    code="model_not_supported",
                )
            if other is not None:  # a chat model, none of whose endpoints speaks this API
                serving = sorted({r.endpoint.id for r in self.catalogue.routes(call.model)})
                api, flag = _OPT_IN_APIS[call.kind]
                raise InvalidRequest(
                    f"The model '{call.model}' is served only by endpoints without the {api} "
                    f"({', '.join(serving)}). Use /v1/chat/completions, or an operator sets "
                    f"{flag}: true on an endpoint that serves POST /v1/{call.kind}.",
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
                f"(key {call.principal.key_id} may use: "
                f"{', '.join(sorted(call.principal.models))}).",
                param="model",
            )
        return routes

    # -- 2 inspect -------------------------------------------------------------------------

    def inspect(self, call: Call, tenant: TenantView) -> tuple[list[Finding], bool]:
        """Scan every text the upstream would see. A classifier error counts as the highest
        classification (fail closed), never as "nothing found"."""
        scanner = self._memo(tenant.name)
        findings: list[Finding] = []
        try:
            for text in call.texts:
                if text in call.findings:
                    continue
                found = scanner.scan(text)
                call.findings[text] = found
                findings.extend(found)
        except Exception:
            log.exception(
                "classifier failed; treating the request as restricted",
                extra={"request_id": call.request_id},
            )
            return [], True
        return findings, False

    def _memo(self, tenant: str) -> ScanMemo:
        """The tenant's scanner behind its memo of texts already scanned (a conversation's
        earlier turns); a reload's new scanner gets a new memo."""
        scanner = self.scanners[tenant]
        memo = self._memos.get(tenant)
        if memo is None or memo.scanner is not scanner:
            memo = self._memos[tenant] = ScanMemo(scanner)
        return memo

    # -- 3 decide --------------------------------------------------------------------------

    def decide(
        self,
        call: Call,
        tenant: TenantView,
        routes: tuple[Route, ...],
        findings: list[Finding],
        failed: bool = False,
    ) -> Decision:
        policy = self.policies[tenant.name]
        counts = summarise(findings)
        if call.uninspected:
            counts.update(call.uninspected)
        level = policy.classify(counts, call.declared_classification, failed=failed)
        m = self.metrics
        m.child(m.classified, tenant.name, level.label).inc()
        for kind in counts:
            m.child(m.findings, tenant.name, kind).inc()
        decision = policy.decide(
            model=call.model,
            routes=routes,
            level=level,
            finding_counts=counts,
            key_models=call.principal.models,
        )
        return decision

    async def refuse(self, call: Call, decision: Decision, tenant: TenantView) -> NoReturn:
        """Explain every no, and record it: a refusal is a decision entry (nothing eligible)
        and an outcome entry (403), so an auditor can show what was kept from whom."""
        self.metrics.policy_refusals.labels(tenant.name, decision.level.label).inc()
        decision = dataclasses.replace(decision, eligible=())  # it may reach no endpoint at all
        receipt = await self.commit(call, decision, tenant)
        if self.recorder is not None:
            refused = Outcome(PolicyViolation.status, error_code=PolicyViolation.code)
            await self.recorder.outcome(call, decision, refused)
        headers = dict(self._decision_headers(call, decision, receipt))
        raise PolicyViolation(decision.refusal_message(), headers=headers)

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
            known = call.findings.get(text)
            if known is None:
                known = scanner.scan(text)
            found = [f for f in known if f.type in redact_types or f.type in pseudo_types]
            if not found:
                return text
            if pseudo is not None:
                text = pseudo.pseudonymise(text, [f for f in found if f.type in pseudo_types])
                found = [f for f in scanner.scan(text) if f.type in redact_types]
            return redact(text, found) if found else text

        call.body = rewrite_texts(call.kind, call.body, rewrite)
        return pseudo

    # -- 5 commit --------------------------------------------------------------------------

    async def commit(self, call: Call, decision: Decision, tenant: TenantView) -> str | None:
        if self.recorder is None:
            return None
        return await self.recorder.decision(call, decision, tenant.home_region)

    # -- 6 dispatch ------------------------------------------------------------------------

    async def dispatch(
        self, call: Call, decision: Decision
    ) -> tuple[Route, UpstreamResponse, dict[str, Any] | None]:
        """Try the eligible routes in plan order until one answers usably. A route counts as
        answered only when its body parsed (non-streaming) or its first event arrived
        (streaming): until then nothing has reached the client, so failing over is safe."""
        plan = self.selector.plan(decision.eligible, self.max_attempts, self._tiers(call, decision))
        last: UpstreamError | None = None
        failures: list[UpstreamError] = []
        tried: list[str] = []
        busy: list[str] = []
        unavailable: SlotsUnavailable | None = None
        for route in plan:
            ep = route.endpoint
            transport = self.transports[ep.family]
            state = self.health.state(ep.id)
            cap = self.health.cap(ep)
            if cap is None or (state.shared is None and state.in_flight < cap):
                state.in_flight += 1
            else:
                try:
                    taken = await state.take(cap, ep.timeouts.connect)
                except SlotsUnavailable as exc:  # shared slots, Redis unreachable: fail closed
                    unavailable = exc
                    continue
                if not taken:
                    # Busy, not failing: its health stays as it was; the next route is tried.
                    busy.append(f"{ep.id} (all {cap} slots busy for {ep.timeouts.connect:g} s)")
                    self.metrics.endpoint_busy.labels(ep.id, ep.jurisdiction.country).inc()
                    continue
            tried.append(ep.id)
            released = False
            sent_at = time.perf_counter()
            try:
                upstream = await transport.open(
                    route, call.kind, call.body, stream=call.stream, request_id=call.request_id
                )
                call.upstream_request_id = upstream_request_id(upstream.headers)
                if call.stream:
                    primed = await Primed.prime(upstream, ep.id)
                    released = True
                    self._upstream_latency(ep, "first_event", sent_at)
                    return route, Released(primed, state), None
                try:
                    raw = await upstream.read()
                finally:
                    state.release()
                    released = True
                data = parse_answer(raw, ep.id, call.kind)
                self._upstream_latency(ep, "answer", sent_at)
                return route, upstream, data
            except UpstreamError as exc:
                if not released:
                    state.release()
                self._upstream_failed(route, exc)
                if isinstance(exc, UpstreamStatusError) and not exc.retryable:
                    raise client_error_from(exc) from None
                last = exc
                failures.append(exc)
                continue
            except BaseException:
                if not released:
                    state.release()
                raise
        if unavailable is not None and not failures and not busy:
            raise unavailable
        if busy and not failures:
            raise EndpointsBusy(
                f"Every eligible endpoint is at its concurrency limit ({'; '.join(busy)}). "
                "The request was not sent anywhere; retry shortly.",
                headers={"retry-after": "1"},
            )
        tried += busy
        if isinstance(last, UpstreamTimeoutError):
            raise UpstreamTimeout(
                f"No eligible endpoint answered in time (tried: {', '.join(tried)}). "
                "The request was not sent anywhere else."
            )
        if failures and all(
            isinstance(e, UpstreamStatusError) and e.status == 429 for e in failures
        ):
            raise _rate_limited(failures, tried)
        detail = f"{last.detail}" if last else "no endpoint could be tried"
        raise UpstreamFailed(
            f"Every eligible endpoint failed (tried: {', '.join(tried)}; last: {detail}). "
            "The request was not sent anywhere else.",
            headers={"retry-after": "1"},
        )

    def _upstream_latency(self, ep: Endpoint, mode: str, sent_at: float) -> None:
        m = self.metrics
        m.child(m.upstream_latency, ep.id, ep.jurisdiction.country, mode).observe(
            time.perf_counter() - sent_at
        )

    def _tiers(self, call: Call, decision: Decision) -> list[tuple[int, int]] | None:
        """Preference tiers of the eligible routes: weights choose only among equals."""
        policy = self.policies.get(call.principal.tenant)
        if policy is None:
            return None
        return [policy.preference_rank(r.endpoint.id) for r in decision.eligible]

    def _upstream_failed(self, route: Route, exc: UpstreamError) -> None:
        ep = route.endpoint
        retry_after = None
        if isinstance(exc, UpstreamStatusError):
            if not exc.retryable:
                return  # a 4xx about the request says nothing about the endpoint's health
            retry_after = parse_retry_after(exc.retry_after)
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
        tenant: TenantView,
        route: Route,
        data: dict[str, Any] | None,
        headers: list[tuple[str, str]],
    ) -> Reply:
        assert data is not None
        self.health.success(route.endpoint.id)
        found = data.get("usage")
        usage: dict[str, Any] = found if isinstance(found, dict) else {}
        prompt_key, completion_key = _USAGE_KEYS[call.kind]
        outcome = Outcome(
            200,
            route,
            prompt_tokens=_int(usage.get(prompt_key)),
            completion_tokens=_int(usage.get(completion_key)),
        )
        if call.kind != "embeddings":
            if _answer_chars(data) < _SCAN_IN_THREAD:
                self._inspect_output(call, data, tenant, outcome)
            else:  # a document-sized answer: scanned off the event loop, as prompts are
                await in_fair_thread(self._inspect_output, call, data, tenant, outcome)
        if call.kind == "responses":
            if data.get("status") == "failed":
                outcome.error_code = outcome.error_code or "upstream_response_failed"
            if isinstance(data.get("output"), list):
                outcome.output_items = data["output"]
            if _keeps_conversations(tenant):
                data["id"] = response_id(call.request_id)
        raw = orjson.dumps(data)
        outcome.estimate_usage(call.texts)
        await self.record(call, decision, outcome)
        if outcome.error_code == "output_cut":
            headers = [*headers, ("x-sekisho-output", "cut")]
        elif outcome.error_code == "output_masked":
            headers = [*headers, ("x-sekisho-output", "masked")]
        return Reply(200, raw, headers, outcome)

    def _inspect_output(
        self, call: Call, data: dict[str, Any], tenant: TenantView, outcome: Outcome
    ) -> None:
        """Re-identify pseudonyms, then apply the tenant's output rule (mask or cut), in the
        answer's text and in its tool calls' arguments."""
        inspect = inspect_response if call.kind == "responses" else inspect_answer
        error, delivered = inspect(
            data,
            call.pseudonymiser,
            tenant.detection.output,
            self.scanners[tenant.name],
            call.request_id,
        )
        if error is not None:
            outcome.error_code = error
        outcome.output_texts.extend(delivered)

    # -- 7 inspect output, 8 record, 9 respond (streaming) -------------------------------

    async def _stream(
        self,
        call: Call,
        decision: Decision,
        tenant: TenantView,
        route: Route,
        upstream: UpstreamResponse,
        outcome: Outcome,
    ) -> AsyncIterator[bytes]:
        if call.kind == "responses":
            async for chunk in self._stream_responses(
                call, decision, tenant, route, upstream, outcome
            ):
                yield chunk
            return
        outcome.route = route
        ep = route.endpoint
        output = StreamOutput(
            call.pseudonymiser,
            tenant,
            self.scanners[tenant.name],
            legacy=call.kind == "completions",
        )
        done = False
        raw_lines = upstream.lines()
        lines: AsyncIterator[bytes | None] = (
            _marking_silence(raw_lines, self.stream_keepalive)
            if self.stream_keepalive > 0
            else raw_lines
        )
        try:
            async for line in lines:
                if line is None:  # the endpoint has been silent that long: keep the client's
                    yield b": keep-alive\n\n"  # connection (and any proxy's idle timer) alive
                    continue
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
                    if not call.include_usage and not event.get("choices"):
                        continue  # sekisho asked for it (token limits); the client did not
                elif not isinstance(event.get("choices"), list) and "error" not in event:
                    # Not this API's event (inspection reads only choices): never passed on.
                    raise UpstreamProtocolError(
                        ep.id, f"stream event without 'choices': not a {call.kind} stream"
                    )
                if output.apply(event):
                    payload = orjson.dumps(event)
                yield b"data: " + payload + b"\n\n"
            if not done:
                raise UpstreamProtocolError(ep.id, "stream ended without [DONE]")
            tail = output.finish()
            if tail is not None:
                yield b"data: " + orjson.dumps(tail) + b"\n\n"
            self.health.success(ep.id)
            outcome.output_texts = output.texts()
            outcome.error_code = output.error_code
            outcome.estimate_usage(call.texts)
            try:
                await self.record(call, decision, outcome)
            except SekishoError as exc:
                # Nothing completes without its record: the stream ends with the reason (e.g.
                # ledger_unavailable), never with [DONE].
                yield b"data: " + orjson.dumps(exc.body()) + b"\n\n"
                return
            yield b"data: [DONE]\n\n"
        except UpstreamError as exc:
            # Bytes have reached the client: no failover now. Tell the client in-stream, in the
            # shape the OpenAI SDKs raise as an APIError.
            await self._stream_broke(call, decision, route, outcome, output.texts(), exc)
            err = {
                "error": {
                    "message": f"The stream from endpoint {ep.id} broke: {exc.detail}.",
                    "type": "upstream_error",
                    "param": None,
                    "code": "upstream_stream_broken",
                }
            }
            yield b"data: " + orjson.dumps(err) + b"\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            await self._stream_left(call, decision, outcome, output.texts())
            raise
        finally:
            upstream.close()

    async def _continue(self, call: Call, tenant: TenantView) -> None:
        """A Responses request that continues an earlier one (``previous_response_id``), for a
        tenant that keeps its conversations itself rather than at the provider: the earlier
        turn's input and output come back from the tenant's home-region store and go upstream
        as this request's first input items. All of it is inspected and decided on afresh."""
        previous = call.body["previous_response_id"]
        request_id = _request_of(previous)
        kept = None
        if request_id is not None and self.stores is not None:
            store = self.stores.for_tenant(tenant.name, tenant.home_region)
            kept = await store.kept(request_id)
        if kept is None or not kept.usable or kept.prompt is None:
            if kept is not None and kept.mode != "full":
                why = (
                    "its turn was kept without its content (retention mode "
                    f"{kept.mode!r}, as the tenant's retention policy says for its level)"
                )
            elif kept is not None:
                why = "its turn has expired or is restricted (利用停止)"
            else:
                why = "sekisho keeps no such response for this tenant"
            raise InvalidRequest(
                f"Cannot continue from previous_response_id {str(previous)[:80]!r}: {why}. "
                "Send the whole conversation as input instead.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        earlier = _reidentified(kept.prompt, kept.pseudonym_map)
        answer = _reidentified(kept.output, kept.pseudonym_map) if kept.output else []
        body = call.body
        body["input"] = (
            _as_input_items(earlier.get("input") if isinstance(earlier, dict) else None)
            + _output_as_input(answer)
            + _as_input_items(body.get("input"))
        )
        del body["previous_response_id"]
        req = ResponsesRequest(body, call.model, call.stream)
        call.texts = req.texts()
        call.uninspected = req.uninspected()

    async def _stream_broke(
        self,
        call: Call,
        decision: Decision,
        route: Route,
        outcome: Outcome,
        texts: list[str],
        exc: UpstreamError,
    ) -> None:
        """A stream whose endpoint failed after bytes reached the client: the endpoint's
        health hears of it, and the outcome (502, what was delivered) is recorded."""
        self._upstream_failed(route, exc)
        outcome.status = 502
        outcome.error_code = "upstream_stream_broken"
        outcome.output_texts = texts
        outcome.estimate_usage(call.texts)
        try:
            await self.record(call, decision, outcome)
        except SekishoError:  # the ledger says why; the client still learns the stream broke
            log.exception("could not record a broken stream", extra={"request_id": call.request_id})

    async def _stream_left(
        self, call: Call, decision: Decision, outcome: Outcome, texts: list[str]
    ) -> None:
        """A client gone mid-stream: recorded as 499 with what it got, and charged what the
        endpoint generated until then (shielded: the cancellation must not cut the record)."""
        outcome.status = 499
        outcome.error_code = "client_disconnected"
        outcome.output_texts = texts
        outcome.estimate_usage(call.texts)  # the endpoint spent them all the same
        await asyncio.shield(self.record(call, decision, outcome))

    async def _stream_responses(
        self,
        call: Call,
        decision: Decision,
        tenant: TenantView,
        route: Route,
        upstream: UpstreamResponse,
        outcome: Outcome,
    ) -> AsyncIterator[bytes]:
        """A Responses API stream: typed events, no [DONE]; it ends with response.completed
        (or .incomplete, .failed), which is held until the outcome entry is durable, as chat's
        [DONE] is. The event names are rebuilt from each event's type."""
        outcome.route = route
        ep = route.endpoint
        output = ResponsesStreamOutput(
            call.pseudonymiser,
            tenant,
            self.scanners[tenant.name],
            response_id=response_id(call.request_id) if _keeps_conversations(tenant) else None,
        )
        terminal: dict[str, Any] | None = None
        raw_lines = upstream.lines()
        lines: AsyncIterator[bytes | None] = (
            _marking_silence(raw_lines, self.stream_keepalive)
            if self.stream_keepalive > 0
            else raw_lines
        )
        try:
            async for line in lines:
                if line is None:
                    yield b": keep-alive\n\n"
                    continue
                if not line.startswith(b"data:"):
                    continue  # "event:" lines: every event names its type in its data too
                payload = line[5:].strip()
                if payload == b"[DONE]":  # not in OpenAI's protocol, but some servers add it
                    break
                try:
                    event = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    raise UpstreamProtocolError(ep.id, "stream event is not JSON") from None
                if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                    raise UpstreamProtocolError(ep.id, "stream event is not a typed object")
                etype = event["type"]
                if etype in RESPONSE_TERMINAL:
                    terminal = event
                    break
                if etype == "error":  # the provider gave up mid-answer: it says why
                    raise UpstreamProtocolError(
                        ep.id, f"stream error event: {str(event.get('message'))[:200]}"
                    )
                events = output.apply_event(event)
                if events is None:
                    yield b"event: " + etype.encode() + b"\ndata: " + payload + b"\n\n"
                else:
                    for e in events:
                        yield _response_event(e)
            if terminal is None:
                raise UpstreamProtocolError(ep.id, "stream ended before the response did")
            final = output.finish_response(terminal)
            response = terminal.get("response")
            usage = response.get("usage") if isinstance(response, dict) else None
            if isinstance(response, dict) and isinstance(response.get("output"), list):
                outcome.output_items = response["output"]
            if isinstance(usage, dict):
                outcome.prompt_tokens = _int(usage.get("input_tokens"))
                outcome.completion_tokens = _int(usage.get("output_tokens"))
            for e in final[:-1]:  # text held back to the last
                yield _response_event(e)
            if terminal["type"] == "response.failed":
                outcome.status = 502
                outcome.error_code = "upstream_response_failed"
            else:
                self.health.success(ep.id)
                outcome.error_code = output.error_code
            outcome.output_texts = output.texts()
            outcome.estimate_usage(call.texts)
            try:
                await self.record(call, decision, outcome)
            except SekishoError as exc:
                # Nothing completes without its record: an error event, never response.completed
                yield _response_error(output, exc.code, exc.message)
                return
            yield _response_event(final[-1])
        except UpstreamError as exc:
            await self._stream_broke(call, decision, route, outcome, output.texts(), exc)
            yield _response_error(
                output,
                "upstream_stream_broken",
                f"The stream from endpoint {ep.id} broke: {exc.detail}.",
            )
        except (asyncio.CancelledError, GeneratorExit):
            await self._stream_left(call, decision, outcome, output.texts())
            raise
        finally:
            upstream.close()

    async def _stream_when_answered(
        self,
        call: Call,
        decision: Decision,
        tenant: TenantView,
        dispatching: asyncio.Future[tuple[Route, UpstreamResponse, dict[str, Any] | None]],
        outcome: Outcome,
    ) -> AsyncIterator[bytes]:
        """A stream already started (200) while its endpoint has not sent a first event: SSE
        comments until it does, which clients ignore and idle timers count as traffic. A
        failure now arrives as an error event, in the shape the SDKs raise; where the answer
        came from, which headers can no longer say, arrives as comments."""
        streaming = False
        try:
            while not dispatching.done():
                yield b": keep-alive\n\n"
                await asyncio.wait((dispatching,), timeout=self.stream_keepalive)
            try:
                route, upstream, _ = dispatching.result()
            except SekishoError as exc:
                outcome.status, outcome.error_code = exc.status, exc.code
                await self.record(call, decision, outcome)
                if call.kind == "responses":
                    yield _response_error(None, exc.code, exc.message)
                else:
                    yield b"data: " + orjson.dumps(exc.body()) + b"\n\n"
                return
            info = [f"{k}: {v}" for k, v in _route_headers(route)]
            if call.upstream_request_id is not None:
                info.append(f"x-sekisho-upstream-request-id: {call.upstream_request_id}")
            yield "".join(f": {line}\n" for line in info).encode() + b"\n"
            streaming = True
            async for chunk in self._stream(call, decision, tenant, route, upstream, outcome):
                yield chunk
        finally:
            if not dispatching.done():
                dispatching.cancel()  # the client went away while the endpoint was thinking
                await asyncio.shield(self._gone(call, decision))
            elif not streaming and not dispatching.cancelled() and not dispatching.exception():
                dispatching.result()[1].close()  # answered, but nobody is left to read it

    async def _gone(self, call: Call, decision: Decision) -> None:
        try:
            await self.record(call, decision, Outcome(499, error_code="client_disconnected"))
        except SekishoError:
            log.warning(
                "outcome of a request its client left could not be recorded",
                extra={"request_id": call.request_id},
            )

    # -- 8 record --------------------------------------------------------------------------

    async def record(self, call: Call, decision: Decision, outcome: Outcome) -> None:
        """The store record, then the outcome entry, then usage. A store that cannot keep the
        exchange (a full disk) fails the request, but the ledger still records that outcome
        and usage still counts the tokens the endpoint spent."""
        route = outcome.route
        ep_id = route.endpoint.id if route else "-"
        juris = route.endpoint.jurisdiction.country if route else "-"
        if route is not None and (outcome.prompt_tokens or outcome.completion_tokens):
            m = self.metrics
            m.child(m.tokens, ep_id, juris, "prompt").inc(outcome.prompt_tokens)
            m.child(m.tokens, ep_id, juris, "completion").inc(outcome.completion_tokens)
        try:
            unkept: StoreError | None = None
            try:
                await self._store(call, decision, outcome)
            except StoreError as exc:
                outcome.status, outcome.error_code = exc.status, exc.code
                unkept = exc
            if self.recorder is not None:
                await self.recorder.outcome(call, decision, outcome)
            if unkept is not None:
                raise unkept
        finally:
            await self._settle(call, outcome)

    async def _store(self, call: Call, decision: Decision, outcome: Outcome) -> None:
        """Keep prompt and output in the tenant's home-region store, as its retention says."""
        if self.stores is None:
            return
        tenant = self.tenants[call.principal.tenant]
        store = self.stores.for_tenant(tenant.name, tenant.home_region)
        prompt_obj = call.prompt()
        prompt = orjson.dumps(prompt_obj)
        output_obj: Any = outcome.output_items
        if output_obj is not None:
            output: bytes | None = orjson.dumps(output_obj)
        else:
            output = "\x00".join(outcome.output_texts).encode() if outcome.output_texts else None
        pseudo = call.pseudonymiser
        store_types = decision.store_pseudonymised_types
        identifiers = [
            (f.type, text[f.start : f.end]) for text, fs in call.findings.items() for f in fs
        ]
        if store_types:
            # 番号法: these identifiers are pseudonymised before anything is stored, in the
            # prompt as sent (redaction may have rewritten its texts) and in the output alike.
            keeper = pseudo or Pseudonymiser()
            scanner = self.scanners[tenant.name]

            def find(text: str) -> list[Finding]:
                known = call.findings.get(text)
                found = known if known is not None else scanner.scan(text)
                return [f for f in found if f.type in store_types]

            prompt = orjson.dumps(pseudonymise_obj(prompt_obj, find, keeper))
            if output_obj is not None:
                output = orjson.dumps(pseudonymise_obj(output_obj, find, keeper))
            elif outcome.output_texts:
                texts = [pseudonymise_obj(t, find, keeper) for t in outcome.output_texts]
                output = "\x00".join(texts).encode()
            pseudo = keeper
        await store.put(
            Exchange(
                request_id=call.request_id,
                tenant=tenant.name,
                created_at=datetime.now(UTC),
                level=decision.level,
                retention=tenant.retention,
                endpoint_id=outcome.route.endpoint.id if outcome.route else "-",
                model=call.model,
                prompt=prompt,
                output=output,
                identifiers=identifiers,
                pseudonym_map=pseudo.mapping if pseudo is not None else None,
                prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
                status=outcome.status,
            )
        )

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


def _check_provider_features(body: dict[str, Any], tenant: TenantView) -> None:
    """Refuse a request that asks the provider to keep it or to take it to the web, unless the
    tenant allows that feature: both go beyond the endpoint's declared data terms."""
    allowed = tenant.provider_features
    if body.get("store") is True and "store" not in allowed:
        raise InvalidRequest(
            "This request asks the provider to keep the completion ('store': true). Tenant "
            f"{tenant.name!r} does not allow that: what is kept of a request, and where, is the "
            "tenant's retention policy (its home-region store), not the provider's. An operator "
            f"can allow it with tenants.{tenant.name}.provider_features: [store].",
            param="store",
            code="provider_feature_not_allowed",
        )
    if body.get("web_search_options") is not None and "web_search" not in allowed:
        raise InvalidRequest(
            "This request asks the provider to search the web with words from the prompt "
            f"('web_search_options'). Tenant {tenant.name!r} does not allow that: the search "
            "engine is a third party outside the endpoint's data terms. An operator can allow it "
            f"with tenants.{tenant.name}.provider_features: [web_search].",
            param="web_search_options",
            code="provider_feature_not_allowed",
        )
    modalities = body.get("modalities")
    spoken = body.get("audio") is not None or (
        isinstance(modalities, list) and "audio" in modalities
    )
    if spoken and "audio_output" not in allowed:
        raise InvalidRequest(
            "This request asks for a spoken answer ('modalities': ['audio'] or 'audio'). Tenant "
            f"{tenant.name!r} does not allow that: sekisho cannot inspect audio, so the "
            "tenant's output rule and the re-identification of pseudonyms could not apply to it. "
            f"An operator can allow it with tenants.{tenant.name}.provider_features: "
            "[audio_output].",
            param="modalities" if modalities is not None else "audio",
            code="provider_feature_not_allowed",
        )


# Responses API features that keep data at the provider or hand it to a third party: the tool
# types the provider runs itself, and the feature that allows each. A client-side tool
# (function, custom, local_shell, shell, apply_patch, computer_use) runs in the client's
# application and needs no permission.
_HOSTED_TOOLS = {
    "web_search": "web_search",
    "web_search_preview": "web_search",
    "file_search": "file_search",
    "code_interpreter": "code_interpreter",
    "mcp": "mcp",
    "image_generation": "image_generation",
}
_CLIENT_TOOLS = frozenset(
    {"function", "custom", "local_shell", "shell", "apply_patch", "computer_use_preview"}
)


def _check_responses_features(body: dict[str, Any], tenant: TenantView) -> None:
    """Provider-side state and hosted tools in a Responses API request. OpenAI keeps every
    response unless told not to ('store' defaults to true there): without the tenant's leave,
    sekisho tells it not to. State kept at the provider (an earlier response, a conversation,
    a background run, an item reference) needs that leave too, and each hosted tool its own."""
    allowed = tenant.provider_features
    if "store" not in allowed:
        stateful = [k for k in ("previous_response_id", "conversation") if body.get(k) is not None]
        if body.get("background") is True:
            stateful.append("background")
        inp = body.get("input")
        if isinstance(inp, list) and any(
            isinstance(i, dict) and i.get("type") == "item_reference" for i in inp
        ):
            stateful.append("input (item_reference)")
        if body.get("store") is True:
            stateful.insert(0, "store")
        if stateful:
            raise InvalidRequest(
                f"This request relies on the provider keeping responses ({', '.join(stateful)}). "
                f"Tenant {tenant.name!r} does not allow that: what is kept of a request, and "
                "where, is the tenant's retention policy (its home-region store), not the "
                "provider's. Send the whole conversation as input instead, or an operator can "
                f"allow it with tenants.{tenant.name}.provider_features: [store].",
                param=stateful[0].partition(" ")[0],
                code="provider_feature_not_allowed",
            )
        body["store"] = False  # the Responses API's default is to keep it
    for i, tool in enumerate(body.get("tools") or ()):
        kind = str(tool.get("type"))
        if kind in _CLIENT_TOOLS:
            continue
        feature = _HOSTED_TOOLS.get(kind) or _HOSTED_TOOLS.get(kind.rsplit("_20", 1)[0])
        if feature is None or feature not in allowed:
            what = f"provider_features: [{feature}]" if feature else "no provider feature"
            raise InvalidRequest(
                f"This request gives the model a tool the provider runs itself "
                f"(tools[{i}].type {kind!r}): words from the prompt would go to it, beyond the "
                f"endpoint's data terms. Tenant {tenant.name!r} does not allow that"
                + (
                    f"; an operator can allow it with tenants.{tenant.name}.{what}."
                    if feature
                    else f" ({what} covers that tool type)."
                ),
                param=f"tools[{i}].type",
                code="provider_feature_not_allowed",
            )


async def _marking_silence(
    lines: AsyncIterator[bytes], interval: float
) -> AsyncIterator[bytes | None]:
    """``lines``, with a None each time ``interval`` seconds pass without one (a pause in the
    middle of a stream: a model thinking between two parts of its answer)."""
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(lines))
            done, _ = await asyncio.wait((pending,), timeout=interval)
            if not done:
                yield None
                continue
            finished, pending = pending, None
            try:
                line = finished.result()
            except StopAsyncIteration:
                return
            yield line
    finally:
        if pending is not None:
            pending.cancel()


def _route_headers(route: Route) -> list[tuple[str, str]]:
    ep = route.endpoint
    return [
        ("x-sekisho-endpoint", ep.id),
        ("x-sekisho-jurisdiction", f"{ep.jurisdiction.country}/{ep.jurisdiction.region}"),
        ("x-sekisho-operator-country", ep.operator.country),
    ]


def _rate_limited(failures: list[UpstreamError], tried: list[str]) -> UpstreamRateLimited:
    """Every endpoint tried said 429: the client is told to wait as long as the soonest of them
    asked (at least 1 s), as a 429 its SDK backs off on, not a 502."""
    waits = [
        w
        for e in failures
        if isinstance(e, UpstreamStatusError)
        and (w := parse_retry_after(e.retry_after)) is not None
    ]
    after = max(1, math.ceil(min(waits))) if waits else 1
    return UpstreamRateLimited(
        f"Every eligible endpoint is rate-limiting requests (tried: {', '.join(tried)}): "
        f"retry after {after} s. The request was not sent anywhere else.",
        headers={"retry-after": str(after)},
    )


def _answer_chars(data: dict[str, Any]) -> int:
    """Characters of text in a chat or Responses answer that output inspection reads."""
    n = 0
    output = data.get("output")
    if isinstance(output, list):
        for oi, item in enumerate(output):
            n += sum(len(holder[key]) for holder, key, _ in response_item_slots(item, oi))
    for choice in data.get("choices") or ():
        if isinstance(choice, dict) and isinstance(choice.get("text"), str):
            n += len(choice["text"])  # a legacy completion
        msg = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(msg, dict):
            continue
        for name in TEXT_FIELDS.values():  # content, and a reasoning model's reasoning
            text = msg.get(name)
            if isinstance(text, str):
                n += len(text)
        for tc in msg.get("tool_calls") or ():
            fn = tc.get("function") if isinstance(tc, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                n += len(fn["arguments"])
        fc = msg.get("function_call")
        if isinstance(fc, dict) and isinstance(fc.get("arguments"), str):
            n += len(fc["arguments"])
    return n


_API_NAMES = {
    "chat": "chat completions",
    "embeddings": "embeddings",
    "responses": "responses",
    "completions": "completions",
}
# APIs an endpoint serves only when its entry says so: (name, the catalogue's flag).
_OPT_IN_APIS = {
    "responses": ("Responses API", "responses_api"),
    "completions": ("completions API", "completions_api"),
}


def _speaks(ep: Endpoint, kind: str) -> bool:
    """Whether ``ep`` serves the API of a ``kind`` request."""
    if kind == "responses":
        return ep.responses_api
    if kind == "completions":
        return ep.completions_api
    return True


# Where each API reports the tokens a request cost: (prompt, completion).
_USAGE_KEYS = {
    "chat": ("prompt_tokens", "completion_tokens"),
    "embeddings": ("prompt_tokens", "completion_tokens"),
    "responses": ("input_tokens", "output_tokens"),
    "completions": ("prompt_tokens", "completion_tokens"),
}


def _keeps_conversations(tenant: TenantView) -> bool:
    """A tenant whose Responses conversations are kept by sekisho (its home-region store), not
    by the provider (which is sent ``store: false``)."""
    return "store" not in tenant.provider_features


_RESPONSE_PREFIX = "resp_sk"


def response_id(request_id: str) -> str:
    """The id a client sees for a response sekisho keeps: its request id, recognisably."""
    return _RESPONSE_PREFIX + request_id.removeprefix("req_")


def _request_of(response: str) -> str | None:
    if not response.startswith(_RESPONSE_PREFIX) or len(response) > 200:
        return None
    return "req_" + response[len(_RESPONSE_PREFIX) :]


def _reidentified(raw: bytes, mapping: Mapping[str, str] | None) -> Any:
    """Stored JSON with its placeholders restored (values escaped for JSON strings)."""
    text = raw.decode()
    if mapping:
        text = Pseudonymiser(mapping).reidentify(text, json_string_escape)
    return orjson.loads(text)


def _as_input_items(value: Any) -> list[Any]:
    """A Responses ``input`` as a list of items (a string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return list(value) if isinstance(value, list) else []


def _output_as_input(output: Any) -> list[Any]:
    """An earlier answer's output items as input items: its messages and tool calls (ids and
    statuses dropped: the provider keeps nothing to refer to; reasoning is not carried)."""
    items: list[Any] = []
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            parts = [
                {"type": "output_text", "text": p["text"]}
                for p in item.get("content") or ()
                if isinstance(p, dict) and isinstance(p.get("text"), str)
            ]
            items.append({"type": "message", "role": "assistant", "content": parts})
        elif kind == "function_call":
            keep = ("call_id", "name", "arguments")
            items.append({"type": "function_call", **{k: item.get(k) for k in keep}})
        elif kind == "custom_tool_call":
            keep = ("call_id", "name", "input")
            items.append({"type": "custom_tool_call", **{k: item.get(k) for k in keep}})
    return items


def _response_event(event: dict[str, Any]) -> bytes:
    """One Responses API server-sent event: its type as the SSE event name, as OpenAI sends."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _response_error(output: ResponsesStreamOutput | None, code: str, message: str) -> bytes:
    """A failure after the stream started, as the Responses API reports one: an ``error``
    event (the SDKs yield it as a ResponseErrorEvent; no response.completed follows)."""
    event = {
        "type": "error",
        "code": code,
        "message": message,
        "param": None,
        "sequence_number": output.next_sequence if output is not None else 0,
    }
    return _response_event(event)


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0
