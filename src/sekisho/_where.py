"""Where the command line finds a deployment's state: one rule for every command.

``serve`` takes its data directory from ``--data-dir`` or the config's ``server.data_dir``. The
commands that work on what it keeps (keys, usage, the ledger) take ``--data-dir``, or
``--config FILE`` to use the same data directory (and ledger database) as ``serve`` with that
file: a key created in ``./data`` while the gateway keeps ``/var/lib/sekisho`` would otherwise
be a key that never works. Without either, ``$SEKISHO_DATA_DIR``, then ``./data``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sekisho.config import Config

DEFAULT_DATA_DIR = "./data"


def add_data_dir_args(p: argparse.ArgumentParser) -> None:
    """``--data-dir`` and ``--config``, as every command on a deployment's state takes them."""
    p.add_argument(
        "--data-dir",
        default=None,
        help="data directory (default: the --config file's server.data_dir, "
        "else $SEKISHO_DATA_DIR, else ./data)",
    )
    p.add_argument(
        "--config",
        "-c",
        default=None,
        metavar="FILE",
        help="the gateway's config: use its data directory, and check tenants and models in it",
    )


def config_of(args: argparse.Namespace) -> Config | None:
    """The ``--config`` file, validated (``ConfigError`` names every problem), or None."""
    path = getattr(args, "config", None)
    if not path:
        return None
    cached: Config | None = getattr(args, "_loaded_config", None)
    if cached is None:
        from sekisho.config import load_config

        cached = load_config(path)
        args._loaded_config = cached
    return cached


def data_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "data_dir", None):
        return Path(args.data_dir)
    config = config_of(args)
    if config is not None:
        return Path(config.server.data_dir)
    return Path(os.environ.get("SEKISHO_DATA_DIR") or DEFAULT_DATA_DIR)


def record_key_act(
    args: argparse.Namespace, action: str, target: str, details: dict[str, object]
) -> str | None:
    """Write a key act of the command line (create, revoke, rotate) to the transparency log
    before it happens, as the admin API does; None when written, else why not (the act is
    then refused: no key is made or changed unrecorded)."""
    import asyncio

    from sekisho.recorder import ledger_audit_at

    config = config_of(args)
    actor = getattr(args, "actor", None) or "operator"
    if config is None:
        # Without the config only the data directory's own ledger is known: where the gateway
        # keeps its log elsewhere (PostgreSQL), writing here would start a second log.
        import json

        from sekisho.ledger.continuity import RECORD, names_this_ledger

        record = data_dir(args) / RECORD
        try:
            kept = json.loads(record.read_text(encoding="utf-8")).get("ledger")
        except (OSError, ValueError, AttributeError):
            kept = None
        if isinstance(kept, str) and not names_this_ledger(kept, data_dir(args)):
            return (
                f"the gateway's ledger is {kept}, not this data directory's: pass --config "
                "FILE (the file serve runs with) so the act is recorded there"
            )

    async def write() -> None:
        async with ledger_audit_at(data_dir(args), config.ledger if config else None) as sink:
            await sink.admin(actor, action, target, {**details, "via": "cli"})

    try:
        asyncio.run(write())
    except Exception as exc:  # the ledger cannot record it: nothing is done
        return f"the transparency ledger could not record it ({exc})"
    return None
