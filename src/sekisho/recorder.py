"""The pipeline's record steps (5 commit, 8 record) written to the transparency ledger.

Kept apart from ``ledger/`` because it translates the pipeline's types into ledger records:
the ledger knows nothing of calls and decisions, and the pipeline nothing of Merkle trees.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from sekisho import _in_force as in_force
from sekisho.call import Call, Outcome
from sekisho.config import Config, LedgerConfig
from sekisho.errors import ServiceUnavailable
from sekisho.ledger import (
    AdminRecord,
    DecisionRecord,
    KeyFileError,
    Ledger,
    LedgerUnavailable,
    OutcomeRecord,
    continuity,
    create_signing_key,
    keyed_hash,
    load_signer,
)
from sekisho.ledger.records import now
from sekisho.ledger.storage import open_storage
from sekisho.policy.decision import Decision
from sekisho.routing.catalogue import Endpoint
from sekisho.store import Stores

log = logging.getLogger("sekisho.recorder")

_MAX_PRINCIPALS = 10_000  # remembered caller pseudonyms (one HMAC each saved per request)


async def open_ledger(config: Config) -> Ledger:
    """Open the configured transparency ledger; create its signing key on first start."""
    return await open_ledger_at(config.data_dir, config.ledger)


async def open_ledger_at(data_dir: Path, cfg: LedgerConfig) -> Ledger:
    """The ledger of a data directory, as ``cfg`` says where and how (a command given only
    ``--data-dir`` passes the defaults: the ledger serve keeps there by default)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    key_file = Path(cfg.key_file) if cfg.key_file else data_dir / "keys" / "ledger.key"
    location = cfg.url or str(data_dir)
    # Before a key is made: a log once kept here must not be started again, empty, under it.
    before = open_storage(location)
    try:
        await asyncio.to_thread(
            continuity.refuse_a_second_history,
            before,
            data_dir,
            key_file,
            [data_dir / in_force.FILE],
        )
        if key_file.exists():
            # A ledger put back from a backup older than the newest checkpoint signed here
            # must not be signed from: the same key would sign a second history.
            await asyncio.to_thread(
                continuity.refuse_a_ledger_behind,
                before,
                data_dir,
                load_signer(key_file).verifier().key_string(),
            )
    finally:
        before.close()
    # The log's name: the configured one, else the name its signing key was made with (a
    # restarted container has a new host name, and the log must keep its own), else, for a
    # new log, this host's.
    origin = cfg.origin or (
        load_signer(key_file).name
        if key_file.exists()
        else f"{socket.gethostname()}/sekisho-ledger"
    )
    if not key_file.exists():
        try:
            verifier = create_signing_key(key_file, origin)
            log.warning(
                "created the ledger signing key; publish its verifier key so auditors can "
                "verify receipts offline",
                extra={"key_file": str(key_file), "verifier_key": verifier},
            )
        except KeyFileError:
            if not key_file.exists():  # another process did not just create it
                raise
    ledger = await Ledger.open(
        location,
        load_signer(key_file),
        origin=origin,
        group_interval=cfg.group_interval_ms / 1000,
        group_size=cfg.group_size,
        deadline=cfg.deadline_ms / 1000,
        checkpoint_interval=cfg.checkpoint_interval_ms / 1000,
    )
    verifier_key = ledger.signer.verifier().key_string()
    ledger.on_signed = functools.partial(continuity.record_signed, data_dir, verifier_key)
    try:
        await asyncio.to_thread(
            continuity.remember, data_dir, ledger.signer, ledger.storage, origin
        )
        latest = await asyncio.to_thread(ledger.storage.latest_checkpoint)
        if latest is not None:
            await asyncio.to_thread(ledger.on_signed, latest.size, latest.root)
    except OSError as exc:
        log.warning(
            "cannot record the log in use in %s (%s): a lost ledger may not be noticed at "
            "the next start", data_dir / continuity.RECORD, exc.strerror or exc)  # fmt: skip
    return ledger


class LedgerAuditSink:
    """Admin acts of command-line tools (subject requests, tenant deletion, key rotation)
    written to the same transparency log as the gateway's, with who asked."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def admin(
        self, actor: str, action: str, target: str, details: Mapping[str, object]
    ) -> None:
        flat = {
            k: v if isinstance(v, str | int | bool) or v is None else str(v)
            for k, v in details.items()
        }
        await self.ledger.append(
            AdminRecord(time=now(), actor=actor, action=action, target=target, details=flat)
        )


@contextlib.asynccontextmanager
async def ledger_audit_at(
    data_dir: Path, cfg: LedgerConfig | None = None
) -> AsyncIterator[LedgerAuditSink]:
    """``ledger_audit`` for a command given a data directory and perhaps no config."""
    ledger = await open_ledger_at(data_dir, cfg or LedgerConfig())
    try:
        yield LedgerAuditSink(ledger)
    finally:
        await ledger.close()


def ledger_audit(config: Config) -> contextlib.AbstractAsyncContextManager[LedgerAuditSink]:
    """For ``store.cli.register(audit=...)``: open the ledger for one command, then close it
    (several processes may append to one log: SQLite's single writer, or PostgreSQL's lock)."""
    return ledger_audit_at(config.data_dir, config.ledger)


def tenant_hash_key(data_dir: Path, tenant: str) -> bytes:
    """The tenant's key for keyed hashes of prompts, outputs and principals, kept under the data
    directory (created on first use, 0600). The regional store's per-tenant key replaces it
    when a store is configured."""
    path = data_dir / "keys" / "hash" / f"{tenant}.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes()
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key


class LedgerRecorder:
    """Decision entry before dispatch, outcome entry before the response completes."""

    def __init__(self, ledger: Ledger, tenant_key: Callable[[str], bytes]) -> None:
        self.ledger = ledger
        self._tenant_key = tenant_key
        self._stores: Stores | None = None
        self._homes: dict[str, str] = {}
        self._principals: dict[tuple[str, str], tuple[object, str]] = {}

    def use_store_keys(self, stores: Stores, tenants: Mapping[str, Any]) -> None:
        """Hash with each tenant's key from its home-region store (destroyed with the tenant)."""
        self._stores = stores
        self._homes = {name: t.home_region for name, t in tenants.items()}

    def keyed_hash(self, tenant: str, data: bytes) -> str:
        """A keyed hash of ``data`` under the tenant's hashing key (what the ledger's prompt
        and output hashes and caller pseudonyms use)."""
        return self._hash(tenant, data)

    def _hash(self, tenant: str, data: bytes) -> str:
        if self._stores is not None and tenant in self._homes:
            return self._stores.for_tenant(tenant, self._homes[tenant]).keyed_hash(data)
        return keyed_hash(self._tenant_key(tenant), data)

    def principal_id(self, tenant: str, subject: str) -> str:
        """A stable pseudonym for the caller: the same key always maps to the same id, and the
        id reveals nothing without the tenant's key."""
        # Remembered per (tenant, caller) while the tenant's hashing key is the same one: a new
        # key (rotation, crypto-shredding) computes it afresh.
        key_now = self._key_identity(tenant)
        cached = self._principals.get((tenant, subject))
        if cached is not None and (cached[0] is key_now or cached[0] == key_now):
            return cached[1]
        digest = self._hash(tenant, b"principal\x00" + subject.encode())
        pid = "p_" + digest.rpartition(":")[2][:20]
        if len(self._principals) >= _MAX_PRINCIPALS:
            self._principals.clear()
        self._principals[(tenant, subject)] = (key_now, pid)
        return pid

    def _key_identity(self, tenant: str) -> object:
        """The object holding the tenant's current hashing key (changes when the key does)."""
        if self._stores is not None and tenant in self._homes:
            return self._stores.for_tenant(tenant, self._homes[tenant]).current_keys()
        return self._tenant_key(tenant)

    async def made_by(self, request_id: str, tenant: str, subjects: Sequence[str]) -> bool:
        """Whether the decision entry of ``request_id`` names one of ``subjects`` of ``tenant``
        as its caller (by the keyed pseudonym the entry holds)."""
        located = await asyncio.to_thread(self.ledger.find, request_id)
        index = next((i for i, kind in located if kind == "decision"), None)
        if index is None:
            return False
        found = await asyncio.to_thread(self.ledger.storage.entry, index)
        if found is None:
            return False
        try:
            entry = orjson.loads(found[0])
        except orjson.JSONDecodeError:
            return False
        if not isinstance(entry, dict) or entry.get("tenant") != tenant:
            return False
        return entry.get("principal") in {self.principal_id(tenant, s) for s in subjects}

    async def decision(self, call: Call, decision: Decision, tenant_region: str) -> str | None:
        if call.plan:  # where the router will send it first
            first: Endpoint | None = call.plan[0].endpoint
        else:
            first = decision.eligible[0].endpoint if decision.eligible else None
        prompt = orjson.dumps(
            call.prompt(),
            option=orjson.OPT_SORT_KEYS,
        )
        record = DecisionRecord(
            time=now(),
            request_id=call.request_id,
            tenant=call.principal.tenant,
            principal=self.principal_id(call.principal.tenant, call.principal.subject),
            classification=decision.level.label,
            findings=dict(decision.finding_types),
            policy_digest=decision.policy_digest,
            action=str(decision.action),
            endpoint=first.id if first else None,
            jurisdiction_country=first.jurisdiction.country if first else None,
            jurisdiction_region=first.jurisdiction.region if first else None,
            operator_name=first.operator.name if first else None,
            operator_country=first.operator.country if first else None,
            model=call.model,
            storage_region=tenant_region,
            prompt_hash=self._hash(call.principal.tenant, prompt),
            eligible=decision.eligible_ids,
            rule=decision.rule,
        )
        appended = await self.ledger.append(record)
        return appended.header()

    async def outcome(self, call: Call, decision: Decision, outcome: Outcome) -> None:
        output_hash = None
        if outcome.output_texts:
            output_hash = self._hash(
                call.principal.tenant, "\x00".join(outcome.output_texts).encode()
            )
        record = OutcomeRecord(
            time=now(),
            request_id=call.request_id,
            status=outcome.status,
            prompt_tokens=outcome.prompt_tokens or None,
            completion_tokens=outcome.completion_tokens or None,
            output_hash=output_hash,
            error_code=outcome.error_code,
            duration_ms=int((time.perf_counter() - call.started) * 1000),
            endpoint=outcome.route.endpoint.id if outcome.route else None,
            upstream_request_id=call.upstream_request_id if outcome.route else None,
            usage_estimated=outcome.usage_estimated,
        )
        try:
            await self.ledger.append(record)
        except LedgerUnavailable as exc:
            if outcome.route is None:
                raise  # nothing was sent: the decision-time wording holds
            # Past dispatch "nothing was sent upstream" would be false: say what did happen.
            raise ServiceUnavailable(
                f"The answer is withheld: its outcome cannot be recorded in the transparency "
                f"ledger ({exc.why}). The request did reach endpoint {outcome.route.endpoint.id} "
                f"(the ledger holds its decision entry); retry later.",
                code=exc.code,
                headers=exc.headers,
            ) from None

    async def admin(
        self, actor: str, action: str, target: str, details: Mapping[str, object]
    ) -> None:
        """Admin actions (keys, policy, deletions, key destruction) are ledger entries too."""
        await LedgerAuditSink(self.ledger).admin(actor, action, target, details)
