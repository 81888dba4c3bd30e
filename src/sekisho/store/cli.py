"""Command line of the stores: ``db upgrade|checkpoint``, ``subject find|export|delete|restrict``,
``tenant delete`` and ``keys rotate|kek-versions|kek-retire``.

The main CLI calls ``register(subparsers)`` and ``register_keys(keys_subparsers)``; every command
sets ``func`` to a handler taking the parsed args and returning the exit status. Administrative
acts are reported to an audit sink: the main CLI passes ``audit=`` a factory that records them in
the ledger; run on its own (``python -m sekisho.store.cli``), the acts are appended to
``DATA_DIR/store-admin.jsonl`` (fsynced) instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sekisho.errors import ConfigError, SekishoError
from sekisho.store import database, subjects
from sekisho.store.errors import StoreError
from sekisho.store.identifiers import (
    EMAIL,
    MY_NUMBER,
    PERSON,
    PHONE,
    PHONE_INTL,
    IdentifierError,
    check_query,
    is_phone_abroad,
)
from sekisho.store.spec import RetentionSpec, retention_of
from sekisho.store.stores import AuditSink, Stores, validate_regions

# `subject export` wrote what it could read, but some records were unreadable.
EXPORT_INCOMPLETE = 3

AuditFactory = Callable[[Any], AbstractAsyncContextManager[AuditSink]]
DEFAULT_CONFIG = "sekisho.yaml"


class JsonlAuditSink:
    """Administrative acts appended to a JSON Lines file, each line fsynced before the act."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def admin(
        self, actor: str, action: str, target: str, details: Mapping[str, object]
    ) -> None:
        line = json.dumps(
            {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "actor": actor,
                "action": action,
                "target": target,
                "details": dict(details),
            },
            ensure_ascii=False,
        )
        await asyncio.to_thread(self._append, line)

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.asynccontextmanager
async def jsonl_audit(config: Any) -> AsyncIterator[AuditSink]:
    yield JsonlAuditSink(Path(config.data_dir) / "store-admin.jsonl")


class _NothingRecorded:
    """The sink of a command that only reads (``keys kek-versions``): it records no act."""

    async def admin(
        self, actor: str, action: str, target: str, details: Mapping[str, object]
    ) -> None:
        raise RuntimeError(f"a read-only command tried to record {action}")


@contextlib.asynccontextmanager
async def _reading_only(config: Any) -> AsyncIterator[AuditSink]:
    yield _NothingRecorded()


@dataclass(frozen=True)
class _TenantView:
    home_region: str
    retention: RetentionSpec


def _load(args: argparse.Namespace) -> Any:
    from sekisho.config import load_config

    config = load_config(args.config)
    problems = validate_regions(config.regions, config.data_dir, config.source_file)
    if problems:
        raise ConfigError(problems)
    return config


def _tenants(config: Any) -> dict[str, _TenantView]:
    # Until the config model carries ``tenants.NAME.retention`` read it where it will be.
    out = {}
    for name, tenant in config.tenants.items():
        raw = getattr(tenant, "retention", None)
        if raw is None:
            raw = getattr(config.model.tenants[name], "retention", None)
        out[name] = _TenantView(tenant.home_region, retention_of(raw))
    return out


@contextlib.asynccontextmanager
async def _opened(config: Any, args: argparse.Namespace) -> AsyncIterator[Stores]:
    """The stores, with acts recorded in the sink this command was registered with."""
    if not config.data_dir.is_dir():
        # An unmounted volume or a typo: nothing here to search, and no new ledger or key
        # should be made in its place.
        raise StoreError(
            f"the data directory {config.data_dir} does not exist: nothing was searched or "
            "recorded. Check server.data_dir (and that its volume is mounted)"
        )
    async with args.audit(config) as audit:
        stores = await Stores.open(config.regions, config.data_dir, audit=audit, create_keys=False)
        for name, view in _tenants(config).items():
            stores.set_retention(name, view.retention)
        try:
            yield stores
        finally:
            await stores.close()


def _run(handler: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(handler(args))
    except ConfigError as exc:
        for p in exc.problems:
            print(f"error: {p}", file=sys.stderr)
        return 2
    except (SekishoError, IdentifierError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return int(result or 0)


# -- db upgrade ------------------------------------------------------------------------------------


def db_upgrade(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"error: {p}", file=sys.stderr)
        return 2
    status = 0
    for name, region in config.regions.items():
        for at in database.locate(name, region.store, config.data_dir):
            engine = database.create(at)
            try:
                before, after = database.upgrade(engine, at)
                database.claim(engine, at, region.country)
            except SekishoError as exc:
                print(f"error: {exc}", file=sys.stderr)
                status = 1
                continue
            finally:
                engine.dispose()
            change = "up to date" if before == after else f"{before or 'empty'} -> {after}"
            print(f"region {name} {at.role}: {at.display}: {change}")
    return status


def db_checkpoint(args: argparse.Namespace) -> int:
    """Copy each SQLite store's write-ahead log back and empty it: completes an erasure that a
    running backup kept from finishing (``store.erasure_incomplete`` in the ledger). Each
    database checkpointed is a ``store.checkpoint`` entry saying whether it completed."""
    try:
        config = _load(args)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"error: {p}", file=sys.stderr)
        return 2
    return _run(_checkpoint, argparse.Namespace(**vars(args), loaded=config))


async def _checkpoint(args: argparse.Namespace) -> int:
    from sekisho.store.region import empty_log

    config = args.loaded
    files: list[database.Location] = []
    for name, region in config.regions.items():
        for at in database.locate(name, region.store, config.data_dir):
            if not at.is_sqlite:
                print(f"region {name} {at.role}: {at.display}: PostgreSQL (nothing to do)")
            elif at.sqlite_path.exists():
                files.append(at)
    if not files:
        return 0
    status = 0
    async with args.audit(config) as audit:
        for at in files:
            engine = database.create(at)
            try:
                await asyncio.to_thread(empty_log, engine, at, args.wait, "deleted data")
            except SekishoError as exc:
                print(f"error: {exc}", file=sys.stderr)
                status = 1
                outcome = {"complete": False, "reason": str(exc)}
            else:
                print(
                    f"region {at.region} {at.role}: {at.display}: write-ahead log copied back "
                    "and emptied"
                )
                outcome = {"complete": True}
            finally:
                engine.dispose()
            # After the act, as a rotation's entry: only then is its outcome known.
            await audit.admin(
                args.actor,
                "store.checkpoint",
                f"region:{at.region}",
                {"store": at.role, "database": at.display} | outcome,
            )
    return status


# -- subject requests ------------------------------------------------------------------------------


def _subject(args: argparse.Namespace) -> subjects.Subject:
    given = [
        (t, v)
        for t, v in (
            (EMAIL, args.email),
            (PHONE, args.phone),
            (MY_NUMBER, args.my_number),
            (PERSON, args.name),
            (args.type, args.value),
        )
        if v is not None
    ]
    if args.value is not None and args.type is None:
        raise IdentifierError("--value needs --type (e.g. --type PASSPORT_JP --value TK1234567)")
    if len(given) != 1 or given[0][0] is None:
        raise IdentifierError(
            "name exactly one identifier: --email, --phone, --my-number, --name or --type/--value"
        )
    id_type, value = given[0]
    if value == "-":
        value = _identifier_from_stdin(id_type)
    elif id_type == MY_NUMBER:
        print(
            "warning: a My Number on the command line stays in the shell's history and is seen "
            "by ps; pass --my-number - to type it (not echoed) or pipe it in",
            file=sys.stderr,
        )
    if id_type == PHONE and is_phone_abroad(value):
        id_type = PHONE_INTL  # --phone +49 30 12345678: a number outside Japan
    check_query(id_type, value)  # before anything is searched or recorded
    return subjects.Subject(args.tenant, id_type, value)


def _identifier_from_stdin(id_type: str) -> str:
    """``-`` for an identifier: read it from standard input, so that it is not kept in the
    shell's history or shown by ``ps`` (個人番号をコマンド履歴に残さない). At a terminal it
    is asked for and not echoed."""
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"{id_type} (not shown): ")
    else:
        value = sys.stdin.readline()
    value = value.strip()
    if not value:
        raise IdentifierError(f"no {id_type} on standard input (one line, for the '-' given)")
    return value


def _known_tenant(config: Any, args: argparse.Namespace) -> None:
    """A tenant the config does not name is most often a typo, and "0 records" for it would
    answer a data subject's request falsely: said on stderr (a removed tenant's records can
    still be reached, so it is not refused)."""
    if args.tenant not in config.tenants:
        print(
            f"warning: tenant {args.tenant!r} is not in {config.source_file} (its tenants: "
            f"{', '.join(sorted(config.tenants))}); a typo finds nothing",
            file=sys.stderr,
        )


async def _subject_find(args: argparse.Namespace) -> int:
    config = _load(args)
    subject = _subject(args)
    _known_tenant(config, args)
    async with _opened(config, args) as stores:
        found = await subjects.find(stores, subject, actor=args.actor, ticket=args.ticket)
    for m in found:
        flag = "  RESTRICTED" if m.restricted else ""
        print(
            f"{m.record_id}  {m.region}  {m.created_at:%Y-%m-%d %H:%M:%S}Z  request {m.request_id}"
            f"  {m.classification}  {m.mode}  {m.endpoint_id}  {m.model}{flag}"
        )
    print(f"{len(found)} record(s) of tenant {args.tenant} mention this {subject.id_type}")
    return 0


async def _subject_export(args: argparse.Namespace) -> int:
    config = _load(args)
    subject = _subject(args)
    _known_tenant(config, args)
    async with _opened(config, args) as stores:
        doc = await subjects.export(stores, subject, actor=args.actor, ticket=args.ticket)
    body = json.dumps(doc, ensure_ascii=False, indent=2).encode() + b"\n"
    out = Path(args.out)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it is personal data
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through open(): set it, before writing
    with os.fdopen(fd, "wb") as f:
        f.write(body)
    print(
        f"wrote {len(doc['records'])} record(s) to {out} (mode 0600)"
        + (
            f"; {len(doc['restricted'])} restricted record(s) listed without content"
            if doc["restricted"]
            else ""
        )
    )
    if doc["unreadable"]:
        for bad in doc["unreadable"]:
            print(
                f"error: record {bad['record_id']} (request {bad['request_id']}, region "
                f"{bad['region']}) could not be exported: {bad['reason']}",
                file=sys.stderr,
            )
        print(
            f"error: {len(doc['unreadable'])} record(s) that mention this {subject.id_type} are "
            f'unreadable and are not in {out} (listed there under "unreadable"); the export '
            "is incomplete",
            file=sys.stderr,
        )
        return EXPORT_INCOMPLETE
    return 0


async def _subject_delete(args: argparse.Namespace) -> int:
    if not args.yes:
        print("error: deleting is permanent; add --yes to confirm", file=sys.stderr)
        return 2
    config = _load(args)
    subject = _subject(args)
    _known_tenant(config, args)
    async with _opened(config, args) as stores:
        n = await subjects.delete(stores, subject, actor=args.actor, ticket=args.ticket)
    print(f"deleted {n} record(s) of tenant {args.tenant}")
    return 0


async def _subject_restrict(args: argparse.Namespace) -> int:
    config = _load(args)
    subject = _subject(args)
    _known_tenant(config, args)
    async with _opened(config, args) as stores:
        n = await subjects.restrict(stores, subject, actor=args.actor, ticket=args.ticket)
    print(
        f"restricted {n} record(s) of tenant {args.tenant} (利用停止: excluded from export and use)"
    )
    return 0


# -- tenant delete, keys rotate ------------------------------------------------------------------


async def _tenant_delete(args: argparse.Namespace) -> int:
    if not args.yes:
        print(
            "error: this destroys the tenant's data keys; its records can never be read again. "
            "Add --yes to confirm",
            file=sys.stderr,
        )
        return 2
    config = _load(args)
    from sekisho import _serving

    # Held exclusively until the deletion is over: a gateway starting meanwhile waits for it
    # (its stores would otherwise load, or make, a data key of the tenant being destroyed).
    with _serving.exclusively(config.data_dir) as alone:
        if not alone:
            # The gateway holds the tenant's data key in memory: it would go on sealing new
            # records under the key destroyed here, records no subject request could find.
            print(
                f"error: a gateway is serving {config.data_dir}; stop it (every worker) before "
                f"destroying tenant {args.tenant}'s data keys, remove the tenant from "
                f"{config.source_file}, then start it again",
                file=sys.stderr,
            )
            return 1
        return await _delete_tenant(config, args)


async def _delete_tenant(config: Any, args: argparse.Namespace) -> int:
    if args.tenant in config.tenants:
        print(
            f"warning: tenant {args.tenant} is still in {config.source_file}; remove it, or new "
            "requests will start a new data key",
            file=sys.stderr,
        )
    async with _opened(config, args) as stores:
        if not await stores.holds(args.tenant):
            print(
                f"tenant {args.tenant} has no data key and no record in any region: nothing to "
                f"destroy (its tenants in {config.source_file}: "
                f"{', '.join(sorted(config.tenants))})",
                file=sys.stderr,
            )
            return 1
        deleted = await stores.delete_tenant(args.tenant, actor=args.actor)
    total = sum(deleted.values())
    print(
        f"destroyed the data keys of tenant {args.tenant} and deleted {total} record(s)"
        + "".join(f"; {r}: {n}" for r, n in sorted(deleted.items()))
    )
    return 0


async def _keys_rotate(args: argparse.Namespace) -> int:
    config = _load(args)
    async with _opened(config, args) as stores:
        version, count = await stores.rotate_keys(args.region, actor=args.actor)
        where = stores.region(args.region).keys.description
        print(
            f"region {args.region}: KEK version {version} ({where}); re-wrapped {count} data key(s)"
        )
        resealed, unreadable = await stores.reseal_records(args.region, actor=args.actor)
    if resealed:
        print(
            f"region {args.region}: re-sealed {resealed} record(s) sealed before request ids "
            "were bound (record/v1), each now bound to its request id"
        )
    if unreadable:
        shown = ", ".join(unreadable[:10]) + (", ..." if len(unreadable) > 10 else "")
        print(
            f"warning: region {args.region}: {len(unreadable)} record(s) fail authentication "
            f"under their data key and were left as they are ({shown}): altered, or moved from "
            "another record; `subject export` lists them too",
            file=sys.stderr,
        )
    return 0


async def _kek_versions(args: argparse.Namespace) -> int:
    config = _load(args)
    regions = [args.region] if args.region else sorted(config.regions)
    status = 0
    async with _opened(config, args) as stores:
        for name in regions:
            kv = await stores.kek_versions(name)
            print(f"region {name}: {kv.kek}")
            for version in sorted(set(kv.held) | set(kv.usage)):
                using = kv.usage.get(version, [])
                tenants = sorted({t for t, _ in using})
                what = f"wraps {len(using)} data key(s)" + (
                    f" ({', '.join(tenants)})" if tenants else ""
                )
                if version == kv.current:
                    state = "current"
                elif version not in kv.held:
                    state = "MISSING from the key provider: these data keys do not unwrap"
                    status = 1
                elif using:
                    state = f"in use; `sekisho keys rotate --region {name}` re-wraps them"
                else:
                    state = "unused: can be retired (`sekisho keys kek-retire`)"
                print(f"  version {version}: {what}; {state}")
    return status


async def _kek_retire(args: argparse.Namespace) -> int:
    if not args.yes:
        print(
            f"error: retiring KEK version {args.version} deletes it for good: a keyring backup "
            "made before the rotation that replaced it can no longer be read. Add --yes to "
            "confirm",
            file=sys.stderr,
        )
        return 2
    config = _load(args)
    from sekisho import _serving
    from sekisho.store.spec import VaultKeysSpec, key_provider_of

    region = config.regions.get(args.region)
    if region is None:
        print(
            f"error: no region {args.region!r} in {config.source_file} (its regions: "
            f"{', '.join(sorted(config.regions))})",
            file=sys.stderr,
        )
        return 2
    local = not isinstance(key_provider_of(region), VaultKeysSpec)
    # A gateway reads a local key file when it starts: one started before the last rotation
    # still wraps new data keys under the version it had as current, perhaps this one.
    with _serving.exclusively(config.data_dir) as alone:
        if local and not alone:
            print(
                f"error: a gateway is serving {config.data_dir}; stop it (every worker) before "
                f"retiring a version of region {args.region}'s local key file (a gateway started "
                "before the last rotation may still wrap new data keys under an older version), "
                "then start it again",
                file=sys.stderr,
            )
            return 1
        async with _opened(config, args) as stores:
            await stores.retire_kek(args.region, args.version, actor=args.actor)
            where = stores.region(args.region).keys.description
    print(f"region {args.region}: KEK version {args.version} retired ({where})")
    return 0


def _async(handler: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    return lambda args: _run(handler, args)


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        default=os.environ.get("SEKISHO_CONFIG", DEFAULT_CONFIG),
        metavar="FILE",
        help=f"YAML config (default: $SEKISHO_CONFIG or ./{DEFAULT_CONFIG.removeprefix('./')})",
    )


def _subject_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--tenant", required=True)
    p.add_argument("--actor", required=True, help="who asks (recorded in the ledger)")
    p.add_argument("--ticket", help="your reference for the request (recorded in the ledger)")
    who = p.add_argument_group(
        "the person's identifier (exactly one; '-' reads it from standard input, kept out of "
        "the shell's history)"
    )
    who.add_argument("--email")
    who.add_argument("--phone")
    who.add_argument("--my-number", dest="my_number")
    who.add_argument("--name")
    who.add_argument("--type", help="a finding type, e.g. PASSPORT_JP (with --value)")
    who.add_argument("--value")


# Who an act is recorded as when --actor is not given: the login that ran the command.
_ACTOR = os.environ.get("USER", "operator")
_ACTOR_DEFAULT = "default: $USER, else operator"


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    audit: AuditFactory | None = None,
) -> None:
    """Add ``db``, ``subject`` and ``tenant``. ``audit`` opens the sink acts are recorded in
    (default: ``DATA_DIR/store-admin.jsonl``); each command carries its own."""
    sink = audit or jsonl_audit
    db = subparsers.add_parser("db", help="regional store databases")
    dsub = db.add_subparsers(dest="db_command", required=True)
    p = dsub.add_parser("upgrade", help="apply schema migrations to every region's store")
    _config_arg(p)
    p.set_defaults(func=db_upgrade)
    p = dsub.add_parser(
        "checkpoint",
        help="copy each SQLite store's write-ahead log back and empty it (completes an erasure "
        "a running backup blocked)",
    )
    _config_arg(p)
    p.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for readers (a backup) to let go (default 30)",
    )
    p.add_argument(
        "--actor",
        default=_ACTOR,
        help=f"who checkpoints (recorded in the ledger; {_ACTOR_DEFAULT})",
    )
    p.set_defaults(func=db_checkpoint, audit=sink)

    subject = subparsers.add_parser(
        "subject", help="data-subject requests (APPI 開示・利用停止・消去)"
    )
    ssub = subject.add_subparsers(dest="subject_command", required=True)
    for name, handler, text in (
        ("find", _subject_find, "list the records that mention a person"),
        ("export", _subject_export, "write a person's records, decrypted, as JSON (開示)"),
        ("delete", _subject_delete, "delete a person's records (消去)"),
        ("restrict", _subject_restrict, "exclude a person's records from any use (利用停止)"),
    ):
        p = ssub.add_parser(name, help=text)
        _subject_args(p)
        if name == "export":
            p.add_argument(
                "--out",
                required=True,
                help="JSON file to write (mode 0600). Exit status 3: written, but some records "
                "were unreadable (listed in it under 'unreadable' and on stderr)",
            )
        if name == "delete":
            p.add_argument("--yes", action="store_true", help="confirm: deletion is permanent")
        p.set_defaults(func=_async(handler), audit=sink)

    tenant = subparsers.add_parser("tenant", help="tenant data")
    tsub = tenant.add_subparsers(dest="tenant_command", required=True)
    p = tsub.add_parser("delete", help="crypto-shred a tenant: destroy its data keys and records")
    _config_arg(p)
    p.add_argument("--tenant", required=True)
    p.add_argument("--actor", required=True, help="who deletes (recorded in the ledger)")
    p.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")
    p.set_defaults(func=_async(_tenant_delete), audit=sink)


def register_keys(
    keys_subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    audit: AuditFactory | None = None,
) -> None:
    """Add ``keys rotate``, ``keys kek-versions`` and ``keys kek-retire`` under an existing ``keys``
    command (``audit`` as for ``register``)."""
    p = keys_subparsers.add_parser(
        "rotate",
        help="new key-encryption key version for a region; re-wrap its data keys and re-seal "
        "records sealed before request ids were bound (record/v1)",
    )
    _config_arg(p)
    p.add_argument("--region", required=True, help="the region, as the config's regions name it")
    p.add_argument(
        "--actor", default=_ACTOR, help=f"who rotates (recorded in the ledger; {_ACTOR_DEFAULT})"
    )
    p.set_defaults(func=_async(_keys_rotate), audit=audit or jsonl_audit)
    p = keys_subparsers.add_parser(
        "kek-versions",
        help="a region's key-encryption key versions and the data keys each still wraps",
    )
    _config_arg(p)
    p.add_argument("--region", help="only this region (default: every region)")
    p.set_defaults(func=_async(_kek_versions), audit=_reading_only)
    p = keys_subparsers.add_parser(
        "kek-retire",
        help="delete a key-encryption key version no data key is wrapped under any more",
    )
    _config_arg(p)
    p.add_argument("--region", required=True, help="the region, as the config's regions name it")
    p.add_argument(
        "--version", required=True, type=int, help="the KEK version to delete (keys kek-versions)"
    )
    p.add_argument(
        "--actor", default=_ACTOR, help=f"who retires (recorded in the ledger; {_ACTOR_DEFAULT})"
    )
    p.add_argument("--yes", action="store_true", help="confirm: a retired version is gone")
    p.set_defaults(func=_async(_kek_retire), audit=audit or jsonl_audit)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sekisho-store", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    keys = sub.add_parser("keys", help="key-encryption keys")
    register_keys(keys.add_subparsers(dest="keys_command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
