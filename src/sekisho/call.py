"""A client request on its way through the gateway (``Call``), what became of it
(``Outcome``), the reply the api sends, and the protocols by which the pipeline reads the rest
of sekisho (the ledger's recorder, a tenant)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sekisho.classify import Finding, Pseudonymiser
from sekisho.errors import SekishoError
from sekisho.identity import Principal
from sekisho.identity.limits import Admission
from sekisho.policy.decision import Decision
from sekisho.routing import Route
from sekisho.store import RetentionSpec

Kind = Literal["chat", "embeddings", "responses", "completions"]


def asks_for_audio(body: dict[str, Any]) -> bool:
    """Whether a chat request asks for a spoken answer (``modalities: ["audio"]``, ``audio``)."""
    modalities = body.get("modalities")
    return body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities)


@dataclass(slots=True)
class Call:
    """One client request on its way through the pipeline."""

    request_id: str
    principal: Principal
    kind: Kind
    model: str
    body: dict[str, Any]
    texts: list[str]
    # Strings the upstream receives that are scanned but cannot be rewritten (ids, names, URLs,
    # keys of the client's choosing): their findings classify the request like any other.
    opaque: list[str] = field(default_factory=list)
    # What the upstream would receive that sekisho cannot read (images, audio, files, token
    # ids): finding type -> count, classified by the policy like findings (fail closed).
    uninspected: dict[str, int] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False
    declared_classification: str | None = None
    started: float = field(default_factory=time.perf_counter)
    findings: dict[str, list[Finding]] = field(default_factory=dict)  # text -> its findings
    opaque_findings: list[Finding] = field(default_factory=list)  # in ``opaque``, joined
    # The routes to try, in order, made before the decision entry (which names the first):
    # the entry's endpoint is where the request was meant to go, not just the most preferred.
    plan: list[Route] | None = None
    # Pieces of findings cut across two texts (classify/_seams.py), by the text each lies in.
    pieces: dict[str, list[Finding]] = field(default_factory=dict)
    admission: Admission | None = None
    pseudonymiser: Pseudonymiser | None = None
    upstream_request_id: str | None = None  # the provider's id of the request that answered
    # The endpoint that keeps the provider-side state this request continues from (a Responses
    # previous_response_id of sekisho's resp_sx… form): it may go there and nowhere else.
    pinned_endpoint: str | None = None
    # A conversation kept at a provider: per type, the placeholder numbers its earlier turns
    # used (carried in the response id); this request's new values are numbered after them.
    numbered: dict[str, int] = field(default_factory=dict)
    # The previous_response_id the client sent, as it sent it (the upstream gets another
    # one, or none): the answer echoes this one, as OpenAI's does.
    previous_response_id: str | None = None
    # Its outcome entry is written (or there is no ledger): an unexpected error after that
    # writes no second one (``Pipeline.unexpected``).
    outcome_recorded: bool = False

    def numbered_so_far(self) -> dict[str, int]:
        """Per type, the highest placeholder number a conversation kept at a provider has
        used, this request's included: what the id of its answer carries to the next turn."""
        if self.pseudonymiser is None:
            return self.numbered
        return {**self.numbered, **self.pseudonymiser.numbered}

    @property
    def spoken(self) -> bool:
        """A chat request that asks for a spoken answer: only its answer may carry audio."""
        return self.kind == "chat" and asks_for_audio(self.body)

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

    def estimate_usage(self, prompt_texts: list[str], generated: int | None = None) -> None:
        """An endpoint that reports no token usage (an old server, a stream without it) is
        still charged: a rough count from the texts, so token limits cannot be bypassed.
        ``generated``: a stream's estimate of what its endpoint sent
        (``StreamOutput.generated_tokens``), delivered or not; else the output texts'."""
        if self.prompt_tokens or self.completion_tokens or self.route is None:
            return
        self.prompt_tokens = estimate_tokens(prompt_texts)
        self.completion_tokens = (
            estimate_tokens(self.output_texts) if generated is None else generated
        )
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
    # The bytes of an error event ending this stream early (the gateway's shutdown cut it),
    # in its API's shape: ``_streams.StreamEnd``.
    end_with: Callable[[SekishoError], bytes] | None = None


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
