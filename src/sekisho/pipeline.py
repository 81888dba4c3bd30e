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

Beside it: ``call.py`` (the request, its outcome, the reply), ``_streams.py`` (steps 7-9 for a
streamed answer, event by event), ``_features.py`` (what a request may ask the provider to do
beyond answering) and ``_conversations.py`` (Responses conversations kept in the home region).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import hmac
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn

import orjson

from sekisho._conversations import (
    Owned,
    continue_conversation,
    echo_as_sent,
    keeps_conversations,
    request_of,
    response_id,
)
from sekisho._features import check_chat_features, check_responses_features
from sekisho._output import (
    TEXT_FIELDS,
    answers_in_json,
    inspect_answer,
    inspect_response,
    pseudonymise_obj,
    response_item_slots,
    rewrite_texts,
)
from sekisho._provider_state import PREFIX as PROVIDER_KEPT_PREFIX
from sekisho._provider_state import pin, sealed, unwrap, wrap
from sekisho._streams import MAX_OUTPUT, StreamEnd, relay, relay_when_answered, route_headers
from sekisho._threads import in_fair_thread
from sekisho._upstream import (
    Primed,
    Released,
    client_error_from,
    count,
    parse_answer,
    parse_retry_after,
    quote_response_error,
)
from sekisho.call import (
    Call,
    Kind,
    Outcome,
    Recorder,
    Reply,
    StreamReply,
    TenantView,
    estimate_tokens,
)
from sekisho.classify import Finding, Pseudonymiser, Scanner, redact, summarise
from sekisho.classify._person import TooManyCues
from sekisho.classify._seams import across
from sekisho.classify.memo import ScanMemo
from sekisho.classify.redact import marked_level
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
    quoted_id,
)
from sekisho.identity.keys import Principal
from sekisho.identity.limits import Limiter
from sekisho.metrics import Metrics
from sekisho.policy.compiler import CompiledPolicy
from sekisho.policy.decision import Decision
from sekisho.providers import (
    Transport,
    UpstreamConnectError,
    UpstreamConnectTimeoutError,
    UpstreamError,
    UpstreamResponse,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from sekisho.providers.base import upstream_request_id
from sekisho.routing import Catalogue, Health, Route, Selector
from sekisho.routing.catalogue import Endpoint
from sekisho.routing.health import MAX_RETRY_AFTER
from sekisho.routing.slots import SlotsUnavailable
from sekisho.store import Exchange, StoreError, Stores
from sekisho.types import Action, Level

__all__ = ["Call", "Kind", "Outcome", "Pipeline", "Reply", "StreamReply", "estimate_tokens"]

log = logging.getLogger("sekisho.pipeline")

# The route the request in this task was last sent to: a request its client leaves before the
# answer still has its log line and labels name the endpoint the prompt reached.
sent_to: contextvars.ContextVar[Route | None] = contextvars.ContextVar(
    "sekisho_sent_to", default=None
)
# Set when the request in this task ends because its client stopped reading the answer
# (server.write_timeout_seconds): its outcome is 499 ``client_stalled``, not
# ``client_disconnected``.
client_stalled: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sekisho_client_stalled", default=False
)

# Characters of input from which a request is scanned in a worker thread: scanning runs at
# roughly 5-20 MB/s, so below this it costs the event loop a few milliseconds at most.
# A request of many texts (their meetings are read too) is inspected off the loop as well.
_TEXTS_IN_THREAD = 256
_SCAN_IN_THREAD = 64 * 1024


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
        max_stream_text: int = MAX_OUTPUT,
    ) -> None:
        self.catalogue = catalogue
        self.tenants = tenants
        self.policies = policies
        self.scanners = scanners
        self._nameless_scanners: dict[str, tuple[Scanner, Scanner]] = {}
        self.transports = transports
        self.health = health
        self.selector = selector
        self.metrics = metrics
        self.recorder = recorder
        self.limiter = limiter
        self.stores = stores
        self.max_attempts = max_attempts
        self.stream_keepalive = stream_keepalive
        self.max_stream_text = max_stream_text  # server.max_stream_text_chars
        # The subjects a caller has acted as (KeyStore.lineage): whose kept conversations it
        # may continue. None: any caller of the tenant (no key store, e.g. in unit tests).
        self.lineage: Callable[[Principal], list[str]] | None = None
        # The server is shutting down: a request cut now was cut by the gateway, not left.
        self.draining = False
        self._local_key = secrets.token_bytes(32)
        self._memos: dict[str, ScanMemo] = {}
        self._route_cache: dict[tuple[str, str], tuple[Route, ...]] = {}

    async def run(self, call: Call) -> Reply | StreamReply:
        tenant = self._tenant(call)
        routes = self._routes(call)
        if call.kind == "chat":
            check_chat_features(call.body, tenant)
        elif call.kind == "responses":
            previous = call.body.get("previous_response_id")
            if isinstance(previous, str):
                call.previous_response_id = previous
                if keeps_conversations(tenant):
                    if request_of(previous) is not None:  # continued from the tenant's store
                        await continue_conversation(
                            self.stores, call, tenant, self.owned(call.principal)
                        )
                elif (kept_at := unwrap(previous)) is not None:  # state kept at a provider
                    endpoint_id, seal, provider_id, numbered = kept_at
                    if not hmac.compare_digest(seal, self.seal(tenant, endpoint_id, provider_id)):
                        raise InvalidRequest(
                            f"Cannot continue from previous_response_id {quoted_id(previous)}: it "
                            f"is not a response of tenant {tenant.name!r}.",
                            param="previous_response_id",
                            code="previous_response_not_found",
                        )
                    call.pinned_endpoint = endpoint_id
                    call.numbered = numbered
                    call.body["previous_response_id"] = provider_id
                else:
                    # Every tenant with the store leave reaches the same provider account
                    # through sekisho: a provider's own id, whoever learned it, would continue
                    # whichever tenant's conversation it names. Only ids sekisho issued (and
                    # sealed to this tenant) are continued.
                    raise InvalidRequest(
                        f"Cannot continue from previous_response_id {quoted_id(previous)}: sekisho "
                        "did not issue it. Continue from the id sekisho returned for the "
                        f"response (it begins with {PROVIDER_KEPT_PREFIX!r}), or send the "
                        "whole conversation as input.",
                        param="previous_response_id",
                        code="previous_response_not_found",
                    )
            check_responses_features(call.body, tenant)
        await self._admit(call)
        committing = False
        try:
            if not _inspect_off_loop(call):
                findings, failed = self.inspect(call, tenant)  # 2
            else:  # a long document: the event loop serves everyone else meanwhile
                findings, failed = await in_fair_thread(self.inspect, call, tenant)
            decision = self.decide(call, tenant, routes, findings, failed)  # 3
            if call.pinned_endpoint is not None:  # only that endpoint knows the earlier turns
                decision = pin(decision, call.pinned_endpoint)
            if decision.denied:
                await self.refuse(call, decision, tenant)
            call.pseudonymiser = self.transform(call, decision, findings)  # 4
            committing = True
            receipt = await self.commit(call, decision, tenant)  # 5
        except asyncio.CancelledError:
            # The client left while its decision entry was being made durable: the entry is
            # written all the same, so it gets its outcome (the audit would otherwise count
            # it with the requests a crash cut short).
            if committing:
                await asyncio.shield(self.gone(call, decision))
            await self._settle(call, None)
            raise
        except BaseException:
            await self._settle(call, None)
            raise
        headers = self._decision_headers(call, decision, receipt)
        route: Route | None = None
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
                    end = StreamEnd(call)
                    chunks = relay_when_answered(
                        self, call, decision, tenant, dispatching, outcome, end
                    )
                    return StreamReply(
                        [*headers, ("x-sekisho-keepalive", "on")], chunks, outcome, end.error
                    )
                route, upstream, data = dispatching.result()
            else:
                route, upstream, data = await self.dispatch(call, decision)  # 6
        except SekishoError as exc:
            delivered = exc.route  # an endpoint's 4xx: the outcome names who answered it
            await self.record(call, decision, Outcome(exc.status, delivered, error_code=exc.code))
            _with_headers(exc, headers)  # the decision was made and recorded: its receipt
            raise
        except asyncio.CancelledError:
            # The client left before any endpoint answered: its decision gets an outcome
            # (the audit would otherwise list it with the requests a crash cut short).
            await asyncio.shield(self.gone(call, decision))
            raise
        except Exception:
            raise await self.unexpected(call, decision, route, headers) from None
        headers += route_headers(route)
        if call.upstream_request_id is not None:
            headers.append(("x-sekisho-upstream-request-id", call.upstream_request_id))
        if call.stream:
            outcome = Outcome(200, route)
            end = StreamEnd(call)
            chunks = relay(self, call, decision, tenant, route, upstream, outcome, end)
            return StreamReply(headers, chunks, outcome, end.error)
        try:
            return await self._complete(call, decision, tenant, route, data, headers)
        except SekishoError as exc:
            _with_headers(exc, headers)
            raise
        except Exception:
            raise await self.unexpected(call, decision, route, headers) from None

    async def unexpected(
        self,
        call: Call,
        decision: Decision,
        route: Route | None,
        headers: list[tuple[str, str]] | None = None,
    ) -> SekishoError:
        """An unexpected error (a defect, not a refusal) after the request's decision entry
        was written: logged with its traceback, and the decision gets its outcome (500,
        ``internal_error``; the endpoint, when one had answered), so that no unexpected error
        leaves a decision without an outcome (``ledger audit``'s "incomplete" is kept for
        requests a crash cut short). Call it in an ``except`` block. Returns the error the
        client gets, with the decision's headers (its receipt)."""
        log.exception("unexpected error", extra={"request_id": call.request_id})
        if not call.outcome_recorded:
            outcome = Outcome(500, route, error_code="internal_error")
            try:
                # The ledger entry only: the store's record is what failed, or may have.
                if self.recorder is not None:
                    await asyncio.shield(self.recorder.outcome(call, decision, outcome))
                call.outcome_recorded = True
            except Exception:
                log.exception(
                    "the outcome of a request that failed unexpectedly could not be recorded",
                    extra={"request_id": call.request_id},
                )
            finally:
                await self._settle(call, outcome)
        err = SekishoError(
            f"sekisho hit an unexpected error (request {call.request_id}); the operator's "
            "logs have the details."
        )
        _with_headers(err, headers or [])
        return err

    def seal(self, tenant: TenantView, endpoint_id: str, provider_id: str) -> str:
        """The seal binding a provider-kept response id to ``tenant`` (``_provider_state``)."""
        hasher = getattr(self.recorder, "keyed_hash", None)  # the tenant's own hashing key
        if hasher is None:  # no ledger (unit tests): a key of this process
            hasher = self._local_hash
        name = tenant.name
        return sealed(lambda data: str(hasher(name, data)), endpoint_id, provider_id)

    def _local_hash(self, tenant: str, data: bytes) -> str:
        return hmac.new(self._local_key, tenant.encode() + b"\x00" + data, "sha256").hexdigest()

    def owned(self, principal: Principal) -> Owned | None:
        """Whether a kept request was made by ``principal`` (or a key it was rotated from)."""
        made_by = getattr(self.recorder, "made_by", None)  # the ledger's recorder has it
        if self.lineage is None or made_by is None:
            return None
        subjects = self.lineage(principal)

        async def owned(request_id: str) -> bool:
            return bool(await made_by(request_id, principal.tenant, subjects))

        return owned

    async def _admit(self, call: Call) -> None:
        if self.limiter is None:
            return
        body = call.body
        # The same estimate an answer without usage is charged (about four ASCII characters or
        # one Japanese character per token), plus the most the answer may cost: each of its
        # ``n`` choices may run to the limit.
        n = body.get("n")
        choices = n if type(n) is int and n > 1 else 1
        estimate = estimate_tokens(call.texts) + choices * count(
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
                    f"The model '{call.model}' is {'an' if other[0] in 'aeiou' else 'a'} "
                    f"{other} model; it cannot serve "
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
        classification (fail closed), never as "nothing found", and never loosens what was
        found: a text too dense with names to read is still read for everything else (a
        secret, a card, a My Number), so rules and redaction on those still apply."""
        scanner = self._memo(tenant.name)
        findings: list[Finding] = []
        failed = False

        def scan(text: str) -> list[Finding]:
            nonlocal failed
            try:
                return scanner.scan(text)
            except TooManyCues as exc:  # padded with names past what is read: fail closed
                log.warning(
                    "a text too dense with names to read; treating the request as restricted",
                    extra={"request_id": call.request_id, "reason": str(exc)},
                )
                failed = True
                # It holds names, unread: rules on PERSON apply as if one had been found.
                call.uninspected["PERSON"] = max(call.uninspected.get("PERSON", 0), 1)
                return self._nameless(tenant.name).scan(text)

        try:
            for text in call.texts:
                if text in call.findings:
                    continue
                found = scan(text)
                call.findings[text] = found
                findings.extend(found)
            if len(call.texts) > 1:
                # A number cut across two parts or messages is whole to the model.
                try:
                    crossing, pieces = across(scanner.scan, call.texts)
                except TooManyCues:  # too many meetings to read: the request is restricted
                    failed = True
                    crossing, pieces = [], {}
                findings.extend(crossing)
                for i, split in pieces.items():
                    have = call.pieces.setdefault(call.texts[i], [])
                    have.extend(f for f in split if f not in have)  # a text repeated: once
            if call.opaque:
                # Ids, names, URLs and keys: one text (the same one request after request
                # for a client's fixed tool set, so the memo answers it), findings counted.
                call.opaque_findings = scan("\n\n".join(call.opaque))
                findings.extend(call.opaque_findings)
        except Exception:
            log.exception(
                "classifier failed; treating the request as restricted",
                extra={"request_id": call.request_id},
            )
            self._count_classifier_failure(tenant.name, "error")
            return findings, True  # what was found so far still counts
        if failed:
            self._count_classifier_failure(tenant.name, "too_many_names")
        return findings, failed

    def _count_classifier_failure(self, tenant: str, reason: str) -> None:
        m = self.metrics
        m.child(m.classifier_failures, tenant, reason).inc()

    def _nameless(self, tenant: str) -> Scanner:
        """The tenant's scanner without its name detector, for a text too dense with names."""
        scanner = self.scanners[tenant]
        cached = self._nameless_scanners.get(tenant)
        if cached is None or cached[0] is not scanner:
            cached = self._nameless_scanners[tenant] = (scanner, scanner.without_names())
        return cached[1]

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
        marked = marked_level(findings) if "CONFIDENTIAL_LABEL" in counts else None
        explained = policy.explain_level(
            counts, call.declared_classification, failed=failed, marked=marked
        )
        level = explained.level
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
            level_reason=explained.reason,
        )
        return decision

    async def refuse(self, call: Call, decision: Decision, tenant: TenantView) -> NoReturn:
        """Explain every no, and record it: a refusal is a decision entry (nothing eligible)
        and an outcome entry (403), so an auditor can show what was kept from whom."""
        self.metrics.policy_refusals.labels(tenant.name, decision.level.label).inc()
        decision = dataclasses.replace(decision, eligible=())  # it may reach no endpoint at all

        async def entries() -> str | None:
            receipt = await self.commit(call, decision, tenant)
            if self.recorder is not None:
                refused = Outcome(PolicyViolation.status, error_code=PolicyViolation.code)
                await self.recorder.outcome(call, decision, refused)
            return receipt

        # Both entries, or (a ledger failure) none: a client that leaves meanwhile does not
        # leave a decision without its outcome.
        receipt = await asyncio.shield(entries())
        headers = dict(self._decision_headers(call, decision, receipt))
        message = decision.refusal_message()
        if not decision.blocked_by_rule:  # a block rule refuses every model alike
            others = self._models_that_may_take(call, decision)
            if others:
                message += f" Models that may take this request: {', '.join(others)}."
        raise PolicyViolation(message, headers=headers)

    def reaches(
        self,
        principal: Principal,
        model: str,
        routes: tuple[Route, ...],
        level: Level,
        finding_counts: Mapping[str, int],
    ) -> bool:
        """Whether the tenant's policy lets a request of ``level`` with these findings reach
        one of ``routes`` for ``model`` (decisions are memoised: cheap to ask often)."""
        return (
            not self.policies[principal.tenant]
            .decide(
                model=model,
                routes=routes,
                level=level,
                finding_counts=finding_counts,
                key_models=principal.models,
            )
            .denied
        )

    def _models_that_may_take(self, call: Call, refused: Decision, most: int = 5) -> list[str]:
        """Other models of the same kind, that this key may use, with an endpoint the policy
        lets this request (its level and finding types) reach: the way out of a refusal."""
        kind = self.catalogue.kind(call.model)
        policy = self.policies[call.principal.tenant]
        allowed = policy.models
        # Names that reach the same endpoints and models are one choice (an alias of a model
        # already named): listed together, not counted as more ways out.
        groups: dict[frozenset[tuple[str, str]], list[str]] = {}
        for name in self.catalogue.model_names:
            if name == call.model or self.catalogue.kind(name) != kind:
                continue
            if call.principal.models is not None and name not in call.principal.models:
                continue
            if allowed is not None and name not in allowed:
                continue
            routes = tuple(r for r in self.catalogue.routes(name) if _speaks(r.endpoint, call.kind))
            if not routes:
                continue
            decision = policy.decide(
                model=name,
                routes=routes,
                level=refused.level,
                finding_counts=refused.finding_types,
                key_models=call.principal.models,
            )
            if decision.denied:
                continue
            reach = frozenset((r.endpoint.id, r.model.id) for r in decision.eligible)
            same = groups.get(reach)
            if same is not None:
                same.append(name)
            elif len(groups) < most:
                groups[reach] = [name]
        return [
            names[0] + (f" (also called {', '.join(names[1:])})" if len(names) > 1 else "")
            for names in groups.values()
        ]

    # -- 4 transform -----------------------------------------------------------------------

    def transform(
        self, call: Call, decision: Decision, findings: list[Finding]
    ) -> Pseudonymiser | None:
        redact_types = decision.redact_types
        pseudo_types = decision.pseudonymise_types
        if not findings or not (redact_types or pseudo_types):
            return None
        unrewritable = sorted(
            {f.type for f in call.opaque_findings if f.type in redact_types | pseudo_types}
        )
        if unrewritable:
            # Fail closed: the policy wants these rewritten, and the field cannot be.
            raise InvalidRequest(
                f"This request carries {', '.join(unrewritable)} in a field the upstream parses "
                "(an id, a name, a URL, or a key of an object), and tenant "
                f"{call.principal.tenant!r}'s policy has that redacted or pseudonymised before "
                "anything is sent; sekisho cannot rewrite such a field without breaking the "
                "request. Nothing was sent. Move the value into the text of a message.",
                code="unrewritable_field",
            )
        if not any(f.type in redact_types or f.type in pseudo_types for f in findings):
            return None
        scanner = self.scanners[call.principal.tenant]
        pseudo = Pseudonymiser(numbered=call.numbered) if pseudo_types else None

        def rewrite(text: str) -> str:
            split = [f for f in call.pieces.get(text, ()) if f.type in redact_types | pseudo_types]
            if split:  # pieces of a number cut across texts first, then the text read again
                text = _rewrite_pieces(text, split, pseudo, pseudo_types)
                known = scanner.scan(text)
            else:
                memo = call.findings.get(text)
                known = scanner.scan(text) if memo is None else memo
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
        if decision.eligible and call.plan is None:  # the entry names where it will go first
            call.plan = self.selector.plan(
                decision.eligible, self.max_attempts, self._tiers(call, decision)
            )
        return await self.recorder.decision(call, decision, tenant.home_region)

    # -- 6 dispatch ------------------------------------------------------------------------

    async def dispatch(
        self, call: Call, decision: Decision
    ) -> tuple[Route, UpstreamResponse, dict[str, Any] | None]:
        """Try the eligible routes in plan order until one answers usably. A route counts as
        answered only when its body parsed (non-streaming) or its first event arrived
        (streaming): until then nothing has reached the client, so failing over is safe."""
        plan = call.plan
        if plan is None or (plan and self.health.is_full(plan[0].endpoint)):
            # No plan yet, or its first endpoint filled up while the decision was being made
            # durable (concurrent requests all planned before any took a slot): plan again,
            # so the load spreads as the slots are now.
            plan = self.selector.plan(
                decision.eligible, self.max_attempts, self._tiers(call, decision)
            )
        last: UpstreamError | None = None
        failures: list[UpstreamError] = []
        tried: list[str] = []
        busy: list[str] = []
        unavailable: SlotsUnavailable | None = None
        tenant = call.principal.tenant
        for route in plan:
            ep = route.endpoint
            transport = self.transports[ep.family]
            state = self.health.state(ep.id)
            cap = self.health.cap(ep)
            if cap is None:
                state.in_flight += 1
            elif state.shared is None and state.in_flight < cap:
                state.occupy(tenant)
            else:
                try:
                    taken = await state.take(cap, ep.timeouts.connect, tenant)
                except SlotsUnavailable as exc:  # shared slots, Redis unreachable: fail closed
                    unavailable = exc
                    continue
                if not taken:
                    # Busy, not failing: its health stays as it was; the next route is tried.
                    busy.append(f"{ep.id} (all {cap} slots busy for {ep.timeouts.connect:g} s)")
                    self.metrics.endpoint_busy.labels(ep.id, ep.jurisdiction.label).inc()
                    continue
            tried.append(ep.id)
            sent_to.set(route)
            released = False
            sent_at = time.perf_counter()
            try:
                upstream = await transport.open(
                    route, call.kind, call.body, stream=call.stream, request_id=call.request_id
                )
                call.upstream_request_id = upstream_request_id(upstream.headers)
                if call.stream:
                    primed = await Primed.prime(
                        upstream,
                        ep.id,
                        call.kind,
                        self.scanners[call.principal.tenant],
                        call.spoken,
                        transport.credentials(ep),
                    )
                    released = True
                    self._upstream_latency(ep, "first_event", sent_at)
                    return route, Released(primed, state, tenant), None
                try:
                    raw = await upstream.read()
                finally:
                    state.release(tenant)
                    released = True
                data = parse_answer(raw, ep.id, call.kind, call.spoken)
                self._upstream_latency(ep, "answer", sent_at)
                return route, upstream, data
            except UpstreamError as exc:
                if not released:
                    state.release(tenant)
                self.upstream_failed(route, exc)
                if isinstance(exc, UpstreamStatusError) and not exc.retryable:
                    # About the request: the client hears it, and where it was delivered.
                    err = client_error_from(
                        exc, self.scanners[call.principal.tenant], transport.credentials(ep)
                    )
                    err.headers.update(route_headers(route))
                    err.route = route
                    raise err from None
                last = exc
                failures.append(exc)
                continue
            except BaseException:
                if not released:
                    state.release(tenant)
                raise
        if not plan and decision.eligible:
            # Every eligible endpoint said when to come back (a 429's Retry-After): nothing
            # is sent before then, and the client waits as long as the soonest asked.
            waits = [self.health.limited_for(r.endpoint.id) for r in decision.eligible]
            after = max(1, math.ceil(min(waits)))
            raise UpstreamRateLimited(
                "Every eligible endpoint is rate-limiting requests "
                f"({', '.join(r.endpoint.id for r in decision.eligible)}): retry after "
                f"{after} s. Nothing was sent.",
                headers={"retry-after": str(after)},
            )
        if unavailable is not None and not failures and not busy:
            raise unavailable
        if busy and not failures:
            raise EndpointsBusy(
                f"Every eligible endpoint is at its concurrency limit ({'; '.join(busy)}). "
                "The request was not sent anywhere; retry shortly.",
                headers={"retry-after": "1"},
            )
        tried += busy
        if failures and all(isinstance(e, UpstreamConnectTimeoutError) for e in failures):
            # No connection anywhere in time: nothing was sent, so a retry costs nothing.
            raise UpstreamTimeout(
                f"No eligible endpoint could be reached in time (tried: {', '.join(tried)}; "
                f"last: {last.told if last else '-'}). Nothing was sent; retrying may "
                f"succeed.{self._simulators_down(failures, busy)}",
                code="upstream_connect_timeout",
                headers={"retry-after": "1"},
            )
        if isinstance(last, UpstreamTimeoutError):
            # Each endpoint tried may still be generating the answer: an SDK's automatic retry
            # would start every one of those generations again, after waiting as long again.
            if "total" in last.detail:
                advice = (
                    "The answer took longer than the endpoint's timeouts.total: ask for a "
                    "shorter one (max_tokens), or ask the operator to raise that limit."
                )
            elif call.stream:
                advice = (
                    "The endpoint did not begin its answer in time: ask the operator to raise "
                    "the endpoint's timeouts.first_byte."
                )
            else:
                advice = (
                    "A long answer that is not streamed arrives whole: stream it, or ask the "
                    "operator to raise the endpoint's timeouts.first_byte."
                )
            raise UpstreamTimeout(
                f"No eligible endpoint answered in time (tried: {', '.join(tried)}; last: "
                f"{last.told}). The request was not sent anywhere else. {advice}",
                headers={"x-should-retry": "false"},
            )
        if failures and all(
            isinstance(e, UpstreamStatusError) and e.status == 429 for e in failures
        ):
            raise _rate_limited(failures, tried)
        detail = last.told if last else "no endpoint could be tried"
        raise UpstreamFailed(
            f"Every eligible endpoint failed (tried: {', '.join(tried)}; last: {detail}). "
            f"The request was not sent anywhere else.{self._simulators_down(failures, busy)}",
            headers={"retry-after": "1"},
        )

    def _simulators_down(self, failures: list[UpstreamError], busy: list[str]) -> str:
        """A hint, when every endpoint tried could not be reached and each is one of sekisho's
        simulators (``simulated: true``): they are not running (`sekisho serve` without
        ``--with-simulators``, and no `sekisho simulate`)."""
        if busy or not failures:
            return ""
        unreachable = (UpstreamConnectError, UpstreamConnectTimeoutError)
        if not all(isinstance(e, unreachable) for e in failures):
            return ""
        endpoints = [self.catalogue.by_id.get(e.endpoint_id) for e in failures]
        if not all(ep is not None and ep.simulated for ep in endpoints):
            return ""
        return (
            " These endpoints are sekisho's simulators (simulated: true) and none is "
            "running: start them with `sekisho simulate` in another terminal (`--base-port N` "
            "where the config's base_url ports are not 9101-9103), or serve with "
            "`--with-simulators`."
        )

    def _upstream_latency(self, ep: Endpoint, mode: str, sent_at: float) -> None:
        m = self.metrics
        m.child(m.upstream_latency, ep.id, ep.jurisdiction.label, mode).observe(
            time.perf_counter() - sent_at
        )

    def _tiers(self, call: Call, decision: Decision) -> list[tuple[int, int]] | None:
        """Preference tiers of the eligible routes: weights choose only among equals."""
        policy = self.policies.get(call.principal.tenant)
        if policy is None:
            return None
        return [policy.preference_rank(r.endpoint.id) for r in decision.eligible]

    def credentials(self, ep: Endpoint) -> tuple[str, ...]:
        """What sekisho sends ``ep`` that no client may read (``Transport.credentials``)."""
        return self.transports[ep.family].credentials(ep)

    def upstream_failed(self, route: Route, exc: UpstreamError) -> None:
        ep = route.endpoint
        retry_after = None
        if isinstance(exc, UpstreamStatusError):
            if not exc.retryable:
                return  # a 4xx about the request says nothing about the endpoint's health
            retry_after = parse_retry_after(exc.retry_after)
        self.health.failure(ep.id, str(exc), retry_after)
        self.metrics.upstream_errors.labels(ep.id, ep.jurisdiction.label, exc.reason).inc()
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
            prompt_tokens=count(usage.get(prompt_key)),
            completion_tokens=count(usage.get(completion_key)),
        )
        if call.kind != "embeddings":
            if _answer_chars(data) < _SCAN_IN_THREAD:
                self._inspect_output(call, data, tenant, outcome)
            else:  # a document-sized answer: scanned off the event loop, as prompts are
                await in_fair_thread(self._inspect_output, call, data, tenant, outcome)
        if call.kind == "responses":
            if data.get("status") == "failed":
                outcome.error_code = outcome.error_code or "upstream_response_failed"
                quote_response_error(
                    data, self.scanners[tenant.name], self.credentials(route.endpoint)
                )
            if isinstance(data.get("output"), list):
                outcome.output_items = data["output"]
            echo_as_sent(data, call)
            if keeps_conversations(tenant):
                data["id"] = response_id(call.request_id)
            elif isinstance(data.get("id"), str):  # kept at this endpoint: the id says so
                ep_id = route.endpoint.id
                data["id"] = wrap(
                    data["id"], ep_id, self.seal(tenant, ep_id, data["id"]), call.numbered_so_far()
                )
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
            json_answer=answers_in_json(call.kind, call.body),
        )
        if error is not None:
            outcome.error_code = error
        outcome.output_texts.extend(delivered)

    def cut(self) -> tuple[int, str]:
        """Status and code of a request that ended before its answer did: its client left
        (499 ``client_disconnected``), stopped reading it (499 ``client_stalled``), or the
        gateway's shutdown grace period ran out (503, ``gateway_shutdown``)."""
        if client_stalled.get():
            return 499, "client_stalled"
        return (503, "gateway_shutdown") if self.draining else (499, "client_disconnected")

    async def gone(self, call: Call, decision: Decision) -> None:
        status, code = self.cut()
        try:
            await self.record(call, decision, Outcome(status, error_code=code))
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
        juris = route.endpoint.jurisdiction.label if route else "-"
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
            call.outcome_recorded = True
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
        if outcome.output_texts and tenant.retention.for_level(decision.level).mode == "full":
            # The answer is kept too: whoever it names (a customer a RAG lookup returned) must
            # be found by 開示・利用停止・消去 like whoever the prompt names.
            texts = outcome.output_texts
            if sum(map(len, texts)) < _SCAN_IN_THREAD:
                identifiers.extend(self._output_identifiers(call, tenant.name, texts))
            else:  # a document-sized answer: read off the event loop, as prompts are
                identifiers.extend(
                    await in_fair_thread(self._output_identifiers, call, tenant.name, texts)
                )
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

    def _output_identifiers(
        self, call: Call, tenant: str, texts: list[str]
    ) -> list[tuple[str, str]]:
        """The identifiers in an answer as delivered (the memo has most: the output rule just
        scanned them)."""
        memo = self._memo(tenant)
        out: list[tuple[str, str]] = []
        for text in texts:
            try:
                try:
                    found = memo.scan(text)
                except TooManyCues:
                    found = self._nameless(tenant).scan(text)
            except Exception:
                log.exception(
                    "could not read an answer's identifiers for the subject index",
                    extra={"request_id": call.request_id},
                )
                continue
            out.extend((f.type, text[f.start : f.end]) for f in found)
        return out

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
        if call.admission is not None and call.admission.headers:
            h.extend(call.admission.headers)
        return h


def _inspect_off_loop(call: Call) -> bool:
    """A request long enough to scan in a worker thread: its texts, and the strings scanned
    but not rewritten (a megabyte metadata key, logit_bias' keys, schema property names)."""
    if len(call.texts) + len(call.opaque) >= _TEXTS_IN_THREAD:
        return True
    return sum(map(len, call.texts)) + sum(map(len, call.opaque)) >= _SCAN_IN_THREAD


def _with_headers(exc: SekishoError, headers: list[tuple[str, str]]) -> None:
    """A request that failed after its decision entry: the error carries the decision's
    headers (classification, policy digest, receipt, rate limits) as an answer would."""
    for name, value in headers:
        exc.headers.setdefault(name, value)


def _rewrite_pieces(
    text: str, pieces: list[Finding], pseudo: Pseudonymiser | None, pseudo_types: frozenset[str]
) -> str:
    """``text`` with each piece of a number cut across texts replaced: by a placeholder where
    its type is pseudonymised (the model sees one placeholder per piece; the answer gets the
    pieces back), by its type token otherwise."""
    out: list[str] = []
    pos = 0
    for f in sorted(pieces, key=lambda f: (f.start, -f.end)):
        if f.start < pos:
            continue  # overlaps the piece before it
        out.append(text[pos : f.start])
        value = text[f.start : f.end]
        if pseudo is not None and f.type in pseudo_types:
            out.append(pseudo.placeholder_for(f.type, value))
        else:
            out.append(f"[{f.type}]")
        pos = f.end
    out.append(text[pos:])
    return "".join(out)


def _rate_limited(failures: list[UpstreamError], tried: list[str]) -> UpstreamRateLimited:
    """Every endpoint tried said 429: the client is told to wait as long as the soonest of them
    asked (at least 1 s), as a 429 its SDK backs off on, not a 502."""
    waits = [
        w
        for e in failures
        if isinstance(e, UpstreamStatusError)
        and (w := parse_retry_after(e.retry_after)) is not None
    ]
    after = max(1, math.ceil(min(min(waits), MAX_RETRY_AFTER))) if waits else 1
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
