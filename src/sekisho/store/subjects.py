"""Data-subject requests under APPI (保有個人データの開示・利用停止・消去の請求).

The store never holds an identifier in clear: each is indexed as an HMAC of its normalised form
under the tenant's index key. A request names one identifier; it is normalised the same way and
hashed with every live generation of the tenant's key in every region. Each step is reported to
the audit sink (the ledger) with who asked, before it is done; the identifier itself never is.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from sekisho.store.errors import ErasureIncomplete, RecordUnreadable
from sekisho.store.identifiers import normalise
from sekisho.store.region import RegionStore, live_generations, now_ms
from sekisho.store.stores import Stores, from_ms, incomplete_after
from sekisho.types import Level


@dataclass(frozen=True, slots=True)
class Subject:
    """One identifier of one person, as the requester gave it."""

    tenant: str
    id_type: str
    value: str

    def details(self, **more: object) -> dict[str, object]:
        return {"id_type": self.id_type, **more}  # never the value


@dataclass(frozen=True, slots=True)
class Match:
    region: str
    record_id: str
    request_id: str
    created_at: datetime
    expires_at: datetime
    classification: str
    mode: str
    endpoint_id: str
    model: str
    restricted: bool


def _matches(store: RegionStore, subject: Subject) -> list[tuple[str, Any]]:
    ids: list[str] = []
    normalised = normalise(subject.id_type, subject.value)
    # Identifiers hashed with a key that is gone match nothing: "0 records" would be false.
    store.refuse_lost_keys(subject.tenant)
    for generation in live_generations(store, subject.tenant):
        keys = store.keys_at(subject.tenant, generation)
        ids += store.find_subject(subject.tenant, [keys.index_hash(subject.id_type, normalised)])
    return [(store.region, r) for r in store.records_by_id(subject.tenant, set(ids))]


async def _locate(stores: Stores, subject: Subject) -> list[tuple[str, Any]]:
    normalise(subject.id_type, subject.value)  # IdentifierError before touching any store
    found: list[tuple[str, Any]] = []
    for store in stores.regions.values():
        found += await asyncio.to_thread(_matches, store, subject)
    return found


def _match(region: str, row: Any) -> Match:
    return Match(
        region,
        row.record_id,
        row.request_id,
        from_ms(row.created_at),
        from_ms(row.expires_at),
        Level(row.level).label,
        row.mode,
        row.endpoint_id,
        row.model,
        row.restricted_at is not None,
    )


def _unexpired(stores: Stores, tenant: str, rows: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """What the retention policy still keeps: a record past its expiry is gone for every use
    (the gateway refuses it) though the sweeper has not deleted it yet, unless the tenant is
    under legal hold, which keeps it."""
    if stores.on_legal_hold(tenant):
        return rows
    now = now_ms()
    return [(region, row) for region, row in rows if row.expires_at > now]


async def find(
    stores: Stores, subject: Subject, *, actor: str, ticket: str | None = None
) -> list[Match]:
    """The records that mention the person (開示請求, first step)."""
    rows = _unexpired(stores, subject.tenant, await _locate(stores, subject))
    await stores.audit.admin(
        actor,
        "store.subject_find",
        f"tenant:{subject.tenant}",
        subject.details(records=len(rows), ticket=ticket),
    )
    return [_match(region, row) for region, row in rows]


async def export(
    stores: Stores, subject: Subject, *, actor: str, ticket: str | None = None
) -> dict[str, Any]:
    """The person's records, decrypted, as a JSON-able document (保有個人データの開示).

    Records under 利用停止 (restricted) are listed without content: they are excluded from any
    further use, export included. A record that cannot be decrypted (altered, its data key
    destroyed) does not stop the others: it is listed under ``unreadable`` with the reason.
    The ledger entry, made before the document is returned, counts what was exported, what was
    unreadable and what is restricted.
    """
    rows = _unexpired(stores, subject.tenant, await _locate(stores, subject))
    usable = [(r, row) for r, row in rows if row.restricted_at is None]
    out: list[dict[str, Any]] = []
    unreadable: list[dict[str, Any]] = []
    for region, row in usable:
        try:
            out.append(
                await asyncio.to_thread(_decrypted, stores.region(region), subject.tenant, row)
            )
        except RecordUnreadable as exc:
            unreadable.append(
                {
                    "record_id": row.record_id,
                    "request_id": row.request_id,
                    "region": region,
                    "created_at": from_ms(row.created_at).isoformat(),
                    "error": exc.code,
                    "reason": str(exc),
                }
            )
    await stores.audit.admin(
        actor,
        "store.subject_export",
        f"tenant:{subject.tenant}",
        subject.details(
            records=len(out),
            unreadable=len(unreadable),
            restricted=len(rows) - len(usable),
            ticket=ticket,
        ),
    )
    return {
        "format": "sekisho-subject-export/1",
        "tenant": subject.tenant,
        "identifier_type": subject.id_type,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "exported_by": actor,
        "records": out,
        "unreadable": unreadable,
        "restricted": [
            {
                "record_id": row.record_id,
                "region": region,
                "restricted_at": from_ms(row.restricted_at).isoformat(),
            }
            for region, row in rows
            if row.restricted_at is not None
        ],
    }


def _decrypted(store: RegionStore, tenant: str, row: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "record_id": row.record_id,
        "request_id": row.request_id,
        "region": store.region,
        "created_at": from_ms(row.created_at).isoformat(),
        "expires_at": from_ms(row.expires_at).isoformat(),
        "classification": Level(row.level).label,
        "kept": row.mode,
        "endpoint": row.endpoint_id,
        "model": row.model,
        "status": row.status,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
    }
    if row.mode != "full":
        return doc
    keys = store.keys_at(tenant, row.key_generation)
    rid, req = row.record_id, row.request_id
    if row.prompt is not None:
        doc["prompt"] = _json_or_text(keys.open(rid, "prompt", row.prompt, request_id=req))
    if row.output is not None:
        doc["output"] = _json_or_text(keys.open(rid, "output", row.output, request_id=req))
    if row.pseudonym_map is not None:
        doc["pseudonym_map"] = orjson.loads(
            keys.open(rid, "pseudonym_map", row.pseudonym_map, request_id=req)
        )
    return doc


def _json_or_text(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return data.decode("utf-8", "replace")


async def delete(stores: Stores, subject: Subject, *, actor: str, ticket: str | None = None) -> int:
    """Delete the person's records (消去): gone from the store, index included."""
    stores._refuse_if_held(subject.tenant, "delete records")
    rows = await _locate(stores, subject)
    by_region: dict[str, list[str]] = {}
    for region, row in rows:
        by_region.setdefault(region, []).append(row.record_id)
    await stores.audit.admin(
        actor,
        "store.subject_delete",
        f"tenant:{subject.tenant}",
        subject.details(records=len(rows), ticket=ticket),
    )
    deleted = 0
    incomplete: list[ErasureIncomplete] = []
    for region, ids in by_region.items():
        try:
            deleted += await asyncio.to_thread(
                stores.region(region).delete_records, subject.tenant, ids
            )
        except ErasureIncomplete as exc:
            deleted += exc.done
            await stores.erasure_incomplete(
                actor, "store.subject_delete", f"tenant:{subject.tenant}", exc
            )
            incomplete.append(exc)
    if incomplete:
        raise incomplete_after(f"{deleted} record(s) were deleted", incomplete)
    return deleted


async def restrict(
    stores: Stores, subject: Subject, *, actor: str, ticket: str | None = None
) -> int:
    """Mark the person's records restricted (利用停止): excluded from any future export or use."""
    rows = await _locate(stores, subject)
    by_region: dict[str, list[str]] = {}
    for region, row in rows:
        by_region.setdefault(region, []).append(row.record_id)
    await stores.audit.admin(
        actor,
        "store.subject_restrict",
        f"tenant:{subject.tenant}",
        subject.details(records=len(rows), ticket=ticket),
    )
    marked = 0
    for region, ids in by_region.items():
        marked += await asyncio.to_thread(
            stores.region(region).restrict, subject.tenant, ids, actor
        )
    return marked
