"""Responses kept at a provider (tenants with ``provider_features: [store]``) stay reachable:
the response ids clients see name the endpoint that keeps each one.

A provider's ``previous_response_id`` only means something to the endpoint that created it:
sent to another endpoint serving the same model (another region, another operator) it is an
error at best. So for such tenants sekisho hands clients ``resp_sx<endpoint>.<seal>.<provider
id>`` (the endpoint's id in URL-safe base64; the seal binds the id to its tenant) and, when a
request from that tenant continues from one, sends the
provider's own id to that endpoint and to no other: the request's decision is narrowed to it,
or refused (403, each endpoint's reason given) when its policy does not allow that endpoint.
Ids sekisho did not issue are refused: every such tenant reaches the same provider account, so a
provider's bare id would continue whichever tenant's conversation it names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import replace

from sekisho.policy.decision import Decision, Exclusion

PREFIX = "resp_sx"
_PIN_RULE = "sekisho/provider-state"
# Longest id read: a provider's id, the endpoint's and the seal, and a mark for each finding
# type a conversation pseudonymised (every type, at the longest, stays below it).
MAX_ID = 2048
_MARK = re.compile(r"[A-Z][A-Z0-9_]{0,39}-[0-9]{1,6}")


def wrap(
    provider_id: str, endpoint_id: str, seal: str, numbered: Mapping[str, int] | None = None
) -> str:
    """The id a client sees for a response kept at ``endpoint_id``; ``seal`` (``sealed``)
    binds it to the tenant it was issued to. ``numbered``: per finding type, the highest
    placeholder number the conversation has used so far (``<EMAIL_3>``: 3), carried to the
    next turn so that its new values never take a number the provider already holds for
    another value (``~EMAIL-3`` after the seal)."""
    where = base64.urlsafe_b64encode(endpoint_id.encode()).decode().rstrip("=")
    marks = "".join(f"~{t}-{n}" for t, n in sorted((numbered or {}).items()) if n > 0)
    return f"{PREFIX}{where}.{seal}{marks}.{provider_id}"


def unwrap(value: str) -> tuple[str, str, str, dict[str, int]] | None:
    """(endpoint id, seal, provider's id, placeholders numbered so far) of an id ``wrap``
    made; None for any other string. The numbers are not sealed: changing them can only make
    the client's own conversation number its pseudonyms otherwise."""
    if not value.startswith(PREFIX) or len(value) > MAX_ID:
        return None
    where, _, rest = value[len(PREFIX) :].partition(".")
    seal_and_marks, _, provider_id = rest.partition(".")
    seal, *marks = seal_and_marks.split("~")
    if not where or not seal or not provider_id:
        return None
    numbered: dict[str, int] = {}
    for mark in marks:
        if _MARK.fullmatch(mark) is None:
            return None
        type_, _, number = mark.rpartition("-")
        numbered[type_] = int(number)
    try:
        endpoint_id = base64.urlsafe_b64decode(where + "=" * (-len(where) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return endpoint_id, seal, provider_id, numbered


def sealed(keyed_hash: Callable[[bytes], str], endpoint_id: str, provider_id: str) -> str:
    """The seal of a provider-kept response id: a keyed hash under the tenant's own hashing key
    (the one its ledger pseudonyms use). Every tenant with the store leave reaches the same
    provider account through sekisho, so without it another tenant that learned an id could
    continue the conversation."""
    digest = keyed_hash(b"resp_sx\x00" + endpoint_id.encode() + b"\x00" + provider_id.encode())
    raw = hashlib.sha256(digest.encode()).digest()[:12]
    return base64.urlsafe_b64encode(raw).decode()


def pin(decision: Decision, endpoint_id: str) -> Decision:
    """The decision narrowed to the endpoint that keeps the conversation's earlier turns. When
    the policy does not let this request go there, nothing is eligible: the request is refused
    like any other, each endpoint's reason in the refusal (and in the ledger)."""
    keep = tuple(r for r in decision.eligible if r.endpoint.id == endpoint_id)
    moved = [
        Exclusion(r.endpoint.id, _PIN_RULE, f"previous_response_id is kept at {endpoint_id}")
        for r in decision.eligible
        if r.endpoint.id != endpoint_id
    ]
    if not keep and not decision.exclusions_of(endpoint_id):
        moved.append(
            Exclusion(endpoint_id, _PIN_RULE, "keeps previous_response_id but does not serve it")
        )
    return replace(decision, eligible=keep, excluded=decision.excluded + tuple(moved))
