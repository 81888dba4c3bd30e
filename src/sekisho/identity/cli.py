"""Command line of identity: `sekisho keys rotate-api` and `sekisho usage`."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from typing import TYPE_CHECKING

from sekisho._where import add_data_dir_args, config_of, data_dir

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("usage", help="tokens and requests per tenant, key and model")
    p.add_argument("--tenant", help="only this tenant (default: every tenant)")
    p.add_argument("--key", dest="key_id", help="only this key id")
    p.add_argument("--model", help="only this model, as clients name it (default: every model)")
    p.add_argument("--since", help="first day, YYYY-MM-DD (default: first of this month)")
    p.add_argument("--until", help="last day, YYYY-MM-DD (default: today)")
    p.add_argument("--redis", help="read the shared counters in Redis (redis://…) instead")
    p.add_argument(
        "--namespace",
        default="default",
        help="Redis namespace (default: the --config file's limits.namespace, else 'default')",
    )
    add_data_dir_args(p)
    p.set_defaults(func=cmd_usage)


def register_keys(keys_subparsers: Subparsers) -> None:
    p = keys_subparsers.add_parser(
        "rotate-api",
        help="replace an API key: prints the successor once; the old key works for the overlap",
    )
    p.add_argument("key_id")
    p.add_argument(
        "--overlap-hours", type=float, default=24.0,
        help="how long the old key keeps working (default 24; 0 retires it now)",
    )  # fmt: skip
    p.add_argument(
        "--actor",
        default="operator",
        help="who does this, as the ledger records it (default: operator)",
    )
    add_data_dir_args(p)
    p.set_defaults(func=cmd_keys_rotate_api)


def cmd_keys_rotate_api(args: argparse.Namespace) -> int:
    from sekisho.errors import NotFound
    from sekisho.identity import KeyStore

    if not 0 <= args.overlap_hours <= 90 * 24:
        print(
            "sekisho: --overlap-hours must be from 0 to 2160 (90 days, as the admin API allows)",
            file=sys.stderr,
        )
        return 2
    store = KeyStore(data_dir(args) / "identity.db")
    from sekisho._where import record_key_act
    from sekisho.identity.keys import new_key_id

    try:
        old = store.get(args.key_id)
    except NotFound as exc:
        print(f"sekisho: {exc.message}", file=sys.stderr)
        return 1
    if old.state() != "active" or old.successor is not None:
        why = f"rotated to {old.successor}" if old.successor else old.state()
        print(f"sekisho: key {args.key_id} is {why}; only an active key rotates", file=sys.stderr)
        return 1
    successor = new_key_id()
    refused = record_key_act(
        args,
        "keys.rotate",
        f"key/{args.key_id}",
        {"overlap_seconds": int(args.overlap_hours * 3600), "successor": successor},
    )
    if refused is not None:
        print(f"sekisho: key {args.key_id} was not rotated: {refused}", file=sys.stderr)
        return 1
    try:
        key, info = store.rotate(args.key_id, args.overlap_hours * 3600, key_id_new=successor)
    except (ValueError, NotFound) as exc:
        print(f"sekisho: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    from sekisho.identity.keys import shown_time

    until = dt.datetime.fromtimestamp(shown_time(store.get(args.key_id).expires_at or 0), dt.UTC)
    print(
        f"rotated key {args.key_id} → {info.key_id} (tenant {info.tenant}, role {info.role}); "
        f"the old key works until {until:%Y-%m-%d %H:%M:%SZ}. The new key is shown only this "
        "once; store it now:",
        file=sys.stderr,
    )
    print(key)
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    return asyncio.run(_usage(args))


async def _usage(args: argparse.Namespace) -> int:
    from sekisho.identity.usage import RedisUsage, SQLiteUsage, UsageStore

    config = config_of(args)
    if config is not None:
        # The gateway's own day (limits.timezone, or the tenant's), where it keeps its usage
        # (redis:, its namespace), and only tenants and models it has: what `--config` promises.
        limits = config.model.limits
        if not args.redis and config.model.redis:
            args.redis = config.model.redis
        if args.namespace == "default":
            args.namespace = limits.namespace
        unknown = []
        if args.tenant is not None and args.tenant not in config.tenants:
            unknown.append(f"tenant {args.tenant!r} (its tenants: {', '.join(config.tenants)})")
        if args.model is not None and args.model not in config.catalogue.model_names:
            unknown.append(
                f"model {args.model!r} (served: {', '.join(config.catalogue.model_names)})"
            )
        if unknown:
            print(f"sekisho: {config.source_file} has no {' and no '.join(unknown)}",
                  file=sys.stderr)  # fmt: skip
            return 2
        from zoneinfo import ZoneInfo

        # One tenant's report is in its own days (tenants.NAME.limits.timezone).
        own = config.tenants[args.tenant].limits if args.tenant is not None else None
        zone = own.timezone if own is not None and own.timezone else limits.timezone
        today = dt.datetime.now(ZoneInfo(zone)).date()
    else:
        today = dt.datetime.now(dt.UTC).date()
    try:
        since = dt.date.fromisoformat(args.since) if args.since else today.replace(day=1)
        until = dt.date.fromisoformat(args.until) if args.until else today
    except ValueError as exc:
        print(f"sekisho: --since/--until: {exc} (write YYYY-MM-DD)", file=sys.stderr)
        return 2
    client = None
    store: UsageStore
    if args.redis:
        from redis.asyncio import Redis

        client = Redis.from_url(args.redis)
        store = RedisUsage(client, args.namespace)
    else:
        store = SQLiteUsage(data_dir(args) / "usage.db")
    try:
        rows = await store.query(
            since, until, tenant=args.tenant,
            key_ids={args.key_id} if args.key_id else None, model=args.model,
        )  # fmt: skip
    except ValueError as exc:
        print(f"sekisho: {exc}", file=sys.stderr)
        return 2
    finally:
        await store.close()
        if client is not None:
            await client.aclose()
    print(f"usage {since} … {until}")
    print(f"{'TENANT':<16} {'KEY':<18} {'MODEL':<24} {'REQUESTS':>9} {'PROMPT':>12} {'COMPL.':>12}")
    for r in rows:
        print(
            f"{r.tenant:<16} {r.key_id:<18} {r.model:<24} {r.requests:>9} "
            f"{r.prompt_tokens:>12} {r.completion_tokens:>12}"
        )
    return 0
