"""The entries of the ledger: canonical, versioned JSON records.

Canonical means: UTF-8, object keys sorted, no insignificant whitespace, no floats (times are
RFC 3339 UTC strings with milliseconds, durations integer milliseconds), and a ``v`` field with
the record version. The same record always gives the same bytes, so anyone can rebuild a leaf.

Nothing secret and no personal data goes in: findings are types and counts, never values; the
principal is a pseudonymous id; prompt and output appear only as keyed hashes
(``keyed_hash``: HMAC-SHA256 with a per-tenant key) so nobody without the tenant's key can
confirm a guessed prompt.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson

RECORD_VERSION = 1
KEYED_HASH_PREFIX = "hmac-sha256:"


class RecordError(ValueError):
    """Bytes that are not a valid ledger record of a version we know."""


def keyed_hash(tenant_key: bytes, data: bytes) -> str:
    """HMAC-SHA256 of ``data`` under the tenant's key, as ``hmac-sha256:<hex>``."""
    if len(tenant_key) < 16:
        raise ValueError("a tenant hashing key must be at least 16 bytes")
    return KEYED_HASH_PREFIX + hmac.new(tenant_key, data, hashlib.sha256).hexdigest()


def canonical_json(value: Mapping[str, Any]) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def format_time(when: datetime) -> str:
    """RFC 3339 UTC with milliseconds: ``2026-11-27T09:30:00.123Z``."""
    if when.tzinfo is None:
        raise ValueError("record times must be timezone-aware")
    if when.tzinfo is not UTC:
        when = when.astimezone(UTC)
    # isoformat is C code; strftime was a measurable part of every ledger entry
    return when.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def parse_time(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        raise RecordError(f"time {text!r} is not RFC 3339 UTC with milliseconds") from None


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """What the gateway decided for one request, written before any byte goes upstream."""

    kind: ClassVar[str] = "decision"
    time: datetime
    request_id: str
    tenant: str
    principal: str  # pseudonymous id, never a name or key
    classification: str  # Level label: public, internal, confidential, restricted
    findings: Mapping[str, int]  # finding type -> count; never the values
    policy_digest: str
    action: str  # Action value: allow, redact, pseudonymise, block
    endpoint: str | None  # None when nothing was eligible or the policy blocked
    jurisdiction_country: str | None
    jurisdiction_region: str | None
    operator_name: str | None
    operator_country: str | None
    model: str
    storage_region: str | None
    prompt_hash: str  # keyed_hash of the prompt
    # Every endpoint the policy allowed, in preference order: the request may reach these and
    # no other, even on failover; ``endpoint`` is the first the router meant to try.
    eligible: tuple[str, ...] = ()
    # The rule that decided (a block's, an action's), or why the level is what it is when
    # nothing was read ("classifier failed (fail closed)"); absent when nothing needed naming.
    rule: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = self._fields()
        if self.rule is not None:
            out["rule"] = self.rule
        return out

    def _fields(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "kind": self.kind,
            "time": format_time(self.time),
            "request_id": self.request_id,
            "tenant": self.tenant,
            "principal": self.principal,
            "classification": self.classification,
            "findings": {str(k): int(v) for k, v in self.findings.items()},
            "policy_digest": self.policy_digest,
            "action": self.action,
            "endpoint": self.endpoint,
            "jurisdiction": {
                "country": self.jurisdiction_country,
                "region": self.jurisdiction_region,
            },
            "operator": {"name": self.operator_name, "country": self.operator_country},
            "model": self.model,
            "storage_region": self.storage_region,
            "prompt_hash": self.prompt_hash,
            "eligible": list(self.eligible),
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    """How the request ended, linked to its decision by ``request_id``."""

    kind: ClassVar[str] = "outcome"
    time: datetime
    request_id: str
    status: int  # HTTP status returned to the client
    prompt_tokens: int | None
    completion_tokens: int | None
    output_hash: str | None  # keyed_hash of the output; None when there was no output
    error_code: str | None
    duration_ms: int
    endpoint: str | None = None  # the endpoint that actually answered (after any failover)
    # The provider's own id of the request (its x-request-id): what to quote to the operator
    # in an incident. Only present when the provider gave one.
    upstream_request_id: str | None = None
    # The endpoint reported no token usage; the counts are sekisho's estimate from the texts.
    usage_estimated: bool = False

    def to_json(self) -> dict[str, Any]:
        out = {
            "v": RECORD_VERSION,
            "kind": self.kind,
            "time": format_time(self.time),
            "request_id": self.request_id,
            "status": self.status,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "output_hash": self.output_hash,
            "error_code": self.error_code,
            "duration_ms": self.duration_ms,
            "endpoint": self.endpoint,
        }
        if self.upstream_request_id is not None:
            out["upstream_request_id"] = self.upstream_request_id
        if self.usage_estimated:
            out["usage_estimated"] = True
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())


@dataclass(frozen=True, slots=True)
class AdminRecord:
    """An administrative act (key created, policy changed, data deleted, ...)."""

    kind: ClassVar[str] = "admin"
    time: datetime
    actor: str
    action: str
    target: str
    details: Mapping[str, str | int | bool | None] = field(default_factory=dict)

    @property
    def request_id(self) -> None:
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "kind": self.kind,
            "time": format_time(self.time),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "details": dict(self.details),
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())


Record = DecisionRecord | OutcomeRecord | AdminRecord


def _field(obj: Mapping[str, Any], key: str, kinds: tuple[type, ...]) -> Any:
    if key not in obj:
        raise RecordError(f"record has no {key!r} field")
    value = obj[key]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise RecordError(f"record field {key!r} must be {names}")
    return value


_S = (str,)
_OS = (str, type(None))
_OI = (int, type(None))


def _eligible(value: list[Any]) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in value):
        raise RecordError("record field 'eligible' must be a list of endpoint ids")
    return tuple(value)


def parse_record(data: bytes) -> Record:
    """Parse leaf bytes back into a record; they must be canonical (re-encoding is identical)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise RecordError(f"entry is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise RecordError("entry is not a JSON object")
    if obj.get("v") != RECORD_VERSION:
        raise RecordError(f"record version {obj.get('v')!r} is not one this sekisho knows (1)")
    kind = obj.get("kind")
    record: Record
    t = parse_time(_field(obj, "time", _S))
    if kind == "decision":
        jurisdiction = _field(obj, "jurisdiction", (dict,))
        operator = _field(obj, "operator", (dict,))
        findings = _field(obj, "findings", (dict,))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in findings.values()):
            raise RecordError("record findings must map finding types to counts")
        record = DecisionRecord(
            time=t,
            request_id=_field(obj, "request_id", _S),
            tenant=_field(obj, "tenant", _S),
            principal=_field(obj, "principal", _S),
            classification=_field(obj, "classification", _S),
            findings=findings,
            policy_digest=_field(obj, "policy_digest", _S),
            action=_field(obj, "action", _S),
            endpoint=_field(obj, "endpoint", _OS),
            jurisdiction_country=_field(jurisdiction, "country", _OS),
            jurisdiction_region=_field(jurisdiction, "region", _OS),
            operator_name=_field(operator, "name", _OS),
            operator_country=_field(operator, "country", _OS),
            model=_field(obj, "model", _S),
            storage_region=_field(obj, "storage_region", _OS),
            prompt_hash=_field(obj, "prompt_hash", _S),
            eligible=_eligible(_field(obj, "eligible", (list,))),
            rule=_field(obj, "rule", _S) if "rule" in obj else None,
        )
    elif kind == "outcome":
        record = OutcomeRecord(
            time=t,
            request_id=_field(obj, "request_id", _S),
            status=_field(obj, "status", (int,)),
            prompt_tokens=_field(obj, "prompt_tokens", _OI),
            completion_tokens=_field(obj, "completion_tokens", _OI),
            output_hash=_field(obj, "output_hash", _OS),
            error_code=_field(obj, "error_code", _OS),
            duration_ms=_field(obj, "duration_ms", (int,)),
            endpoint=_field(obj, "endpoint", _OS),
            upstream_request_id=(
                _field(obj, "upstream_request_id", _S) if "upstream_request_id" in obj else None
            ),
            usage_estimated=(
                _field(obj, "usage_estimated", (bool,)) if "usage_estimated" in obj else False
            ),
        )
    elif kind == "admin":
        record = AdminRecord(
            time=t,
            actor=_field(obj, "actor", _S),
            action=_field(obj, "action", _S),
            target=_field(obj, "target", _S),
            details=_field(obj, "details", (dict,)),
        )
    else:
        raise RecordError(f"record kind {kind!r} is not decision, outcome or admin")
    encoded = record.to_bytes()
    if encoded != data:
        unknown = sorted(set(obj) - set(orjson.loads(encoded)))
        if unknown:
            # Fields are added to entries over releases: a verifier or auditor older than the
            # gateway meets them. Said as such, not as a damaged entry.
            raise RecordError(
                f"the {kind} entry has fields this sekisho does not know "
                f"({', '.join(map(repr, unknown))}): a newer sekisho wrote it; check it with a "
                "version at least as new as the gateway's"
            )
        raise RecordError("entry is not in canonical form (or has unknown fields)")
    return record
