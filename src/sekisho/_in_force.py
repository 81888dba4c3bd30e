"""Which policy each tenant was served under when this data directory last ran, so that a
policy changed while the gateway was stopped (a redeploy with a new config) or swapped by the
``--workers`` supervisor (SIGHUP to it restarts every worker from the file) is an admin entry
in the ledger like a reload through the admin API.

``policies-in-force.json`` under the data directory holds each tenant's policy digest. Workers
start together: an exclusive ``flock`` on the file makes the first one compare, record and
write, and the others find the digests already there. The entries are made before the file
is written, so a start that fails between the two records the change again, never not at all.
A data directory a version before this file ran (an upgrade) has none: what was in force is
then what the ledger last shows for each tenant, so a policy the upgrade changed is recorded too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from sekisho.ledger.storage import Storage

log = logging.getLogger("sekisho.app")

FILE = "policies-in-force.json"

# (tenant, digest before or None, digest now or None) -> the ledger's admin entry
Record = Callable[[str, str | None, str | None], Awaitable[None]]
# Each tenant's digest as the ledger last shows it (None: a tenant removed), read in a thread
History = Callable[[], Mapping[str, str | None]]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[IO[str]]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+", encoding="utf-8") as f:
        try:
            import fcntl
        except ImportError:  # Windows: a byte-range lock (retried by the C runtime ~10 s)
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # type: ignore[attr-defined,unused-ignore]
        else:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
        yield f


def _is_empty(f: IO[str]) -> bool:
    f.seek(0)
    return not f.read().strip()


def _read(f: IO[str]) -> dict[str, str] | None:
    f.seek(0)
    text = f.read()
    if not text.strip():
        return None  # the first start: nothing was in force before
    try:
        raw = json.loads(text)
    except ValueError:
        raw = None
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        log.warning("%s is not what sekisho wrote; policies are compared from now on", FILE)
        return None
    return raw


def _write(f: IO[str], digests: Mapping[str, str]) -> None:
    f.seek(0)
    f.truncate()
    f.write(json.dumps(dict(sorted(digests.items())), indent=1) + "\n")
    f.flush()
    os.fsync(f.fileno())


async def reconcile(
    data_dir: Path,
    digests: Mapping[str, str],
    record: Record,
    previous: Mapping[str, str] | None = None,
    history: History | None = None,
) -> list[str]:
    """Compare ``digests`` (tenant -> policy digest in force now) with the file, ``record``
    each tenant whose policy differs (added and removed tenants included), then remember
    ``digests``. Where the file holds nothing, compare with ``previous`` (what this process
    served until a reload); with neither, with ``history`` (what the ledger last shows: a data
    directory from before this file), each tenant it names; with none (the first start),
    nothing is recorded. Return the tenants recorded. The file is read and written in a thread:
    a stalled disk does not stall the event loop. A file that cannot be opened or written (a
    read-only or full disk) is logged and compared as if empty: a reload's change is still
    recorded, from ``previous``."""
    lock = _locked(data_dir / FILE)
    try:
        f = await asyncio.to_thread(lock.__enter__)  # may wait for another worker
    except OSError as exc:
        log.warning("cannot open %s (%s); policy changes across restarts are not compared",
                    data_dir / FILE, exc.strerror or exc)  # fmt: skip
        return await _record_changes(None, previous, digests, record)
    try:
        try:
            stored = await asyncio.to_thread(_read, f)
        except OSError as exc:
            log.warning("cannot read %s (%s)", data_dir / FILE, exc.strerror or exc)
            stored = None
        # Absent (not damaged: nothing is invented from a file sekisho did not write), and a
        # ledger to ask: a data directory a version before this file ran.
        if (
            stored is None
            and previous is None
            and history is not None
            and await asyncio.to_thread(_is_empty, f)
        ):
            shown = await asyncio.to_thread(history)
            changed = sorted(t for t in shown if shown[t] != digests.get(t))
            for tenant in changed:
                await record(tenant, shown[tenant], digests.get(tenant))
        else:
            changed = await _record_changes(stored, previous, digests, record)
        if stored != dict(digests):
            try:
                await asyncio.to_thread(_write, f, digests)
            except OSError as exc:
                log.warning("cannot write %s (%s)", data_dir / FILE, exc.strerror or exc)
        return changed
    finally:
        await asyncio.to_thread(lock.__exit__, None, None, None)


async def _record_changes(
    stored: Mapping[str, str] | None,
    previous: Mapping[str, str] | None,
    digests: Mapping[str, str],
    record: Record,
) -> list[str]:
    before = stored if stored is not None else previous
    if before is None:
        return []
    changed = sorted(t for t in set(before) | set(digests) if before.get(t) != digests.get(t))
    for tenant in changed:
        await record(tenant, before.get(tenant), digests.get(tenant))
    return changed


def shown_by_ledger(
    storage: Storage, tenants: Collection[str], chunk: int = 10_000
) -> dict[str, str | None]:
    """Each tenant's policy digest as the ledger last shows it: its newest decision entry, or a
    newer policy reload or start entry (whose ``to`` is None for a tenant removed). Read newest
    first until every tenant in ``tenants`` is found or the log's start is reached; tenants met
    on the way that are not in ``tenants`` are given too. Once per data directory: the first
    start after an upgrade from a version before policies-in-force.json."""
    shown: dict[str, str | None] = {}
    end = storage.tree_size()
    while end > 0 and not all(t in shown for t in tenants):
        start = max(0, end - chunk)
        for _, leaf, _, _, kind in reversed(storage.scan(start, end)):
            if kind not in ("decision", "admin"):
                continue
            try:
                entry = orjson.loads(leaf)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(entry, dict):
                continue
            tenant: object = None
            digest: object = None
            if kind == "decision":
                tenant, digest = entry.get("tenant"), entry.get("policy_digest")
            elif entry.get("action") in ("policy.reload", "policy.start"):
                target, details = entry.get("target"), entry.get("details")
                if isinstance(target, str) and target.startswith("tenant/"):
                    tenant = target.removeprefix("tenant/")
                    digest = details.get("to") if isinstance(details, dict) else None
                    digest = digest if isinstance(digest, str) else None
            if isinstance(tenant, str) and (digest is None or isinstance(digest, str)):
                if kind == "decision" and digest is None:
                    continue
                shown.setdefault(tenant, digest)
        end = start
    return shown
