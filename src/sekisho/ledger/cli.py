"""Command line of the ledger: ``verify``, ``ledger audit``, ``ledger checkpoint``, ``keys ledger``.

The main CLI calls ``register(subparsers)`` and ``register_keys(keys_subparsers)``; every command
sets ``func`` to a handler taking the parsed args and returning the exit status. ``python -m
sekisho.ledger.cli`` runs the same commands on their own.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from sekisho._where import add_data_dir_args, config_of, data_dir
from sekisho.ledger import continuity, merkle
from sekisho.ledger.audit import against_kept, audit
from sekisho.ledger.checkpoint import Checkpoint, CheckpointError
from sekisho.ledger.keys import KeyFileError, create_signing_key, load_signer
from sekisho.ledger.note import NoteError, Verifier
from sekisho.ledger.proof import (
    KeptCheckpoints,
    ReceiptError,
    ReceiptOfAnotherLog,
    load_json,
    read_text,
    verify_document,
)
from sekisho.ledger.storage import Storage, StorageError, open_storage

KEY_FILE = Path("keys") / "ledger.key"


def _data_dir(args: argparse.Namespace) -> Path:
    return data_dir(args)


def _key_file(args: argparse.Namespace) -> Path:
    """The signer key: ``--key-file``, the config's ``ledger.key_file``, or under the data dir."""
    if getattr(args, "key_file", None):
        return Path(args.key_file)
    config = config_of(args)
    if config is not None and config.ledger.key_file and not getattr(args, "data_dir", None):
        return Path(config.ledger.key_file)
    return _data_dir(args) / KEY_FILE


def _location(args: argparse.Namespace) -> str:
    """The ledger's database: ``--url``, the data dir given, or where ``--config`` keeps it."""
    if getattr(args, "url", None):
        return str(args.url)
    config = config_of(args)
    if config is not None and config.ledger.url and not getattr(args, "data_dir", None):
        return config.ledger.url
    return str(_data_dir(args))


def _fail(message: str) -> int:
    print(f"FAILED: {message}", file=sys.stderr)
    return 1


def _read_verifier(text: str) -> Verifier:
    """A verifier key string, or a file holding one."""
    candidate = Path(text)
    if "+" not in text or candidate.is_file():
        try:
            text = candidate.read_bytes().decode("utf-8").strip()
        except UnicodeDecodeError:
            raise NoteError("the file is not UTF-8 text") from None
    return Verifier.from_key_string(text)


# --- verify ---------------------------------------------------------------------------------------


def verify_command(args: argparse.Namespace) -> int:
    try:
        verifier = _read_verifier(args.key)
    except (OSError, NoteError) as e:
        return _fail(f"verifier key {args.key}: {e}")
    # C2SP tlog-checkpoint: a client checks the origin line against the log it expects. A key
    # may sign more than one log (one key file shared by two deployments), so the key alone
    # does not say which log a receipt is from; sekisho names a log's key after it.
    origin = args.origin if args.origin is not None else verifier.name
    if not origin.strip():
        return _fail("--origin is empty: give the log's origin, as its operator gave it to you")
    try:
        text = read_text(Path(args.receipt), "receipt")
        kept = None
        if args.checkpoints:
            kept = KeptCheckpoints.load(Path(args.checkpoints), [verifier], origin=origin)
            print(
                f"ok  kept checkpoints: {len(kept.checkpoints)} loaded, signatures and links hold"
            )
        lines = verify_document(text, str(args.receipt), [verifier], kept=kept, origin=origin)
    except ReceiptOfAnotherLog as e:
        expected = (
            "named by --origin"
            if args.origin is not None
            else f"the verifier key is named after ({verifier.name!r})"
        )
        return _fail(
            f"{e}: verify expects the log {expected}, and a receipt of another log proves "
            "nothing about it, even signed by the same key. If that log's operator gave you "
            "its origin together with the key (it differs from the key's name where "
            "ledger.origin was set after the key was made), pass --origin ORIGIN; never take "
            "it from the receipt"
        )
    except ReceiptError as e:
        return _fail(str(e))
    for line in lines:
        print(line)
    return 0


# --- ledger audit / checkpoint ---------------------------------------------------------------


def _open(args: argparse.Namespace, *, read_only: bool = False) -> Storage:
    return open_storage(_location(args), create=False, read_only=read_only)


def _verifiers(args: argparse.Namespace) -> tuple[list[Verifier], str | None]:
    """The keys to check checkpoint signatures with: ``--key``, else the signing key of the
    deployment named (``--config``, ``--data-dir``: its ``ledger.key_file`` or the data
    directory's key), wherever its ledger is stored (SQLite or PostgreSQL). With none, why."""
    if getattr(args, "key", None):
        return [_read_verifier(args.key)], None
    if getattr(args, "url", None) and not getattr(args, "config", None):
        # A bare --url names a database, not a deployment: whatever ./data or
        # $SEKISHO_DATA_DIR holds may be another log's key.
        return [], (
            "--url names no signing key: give --key VERIFIER_KEY (`sekisho keys ledger` "
            "prints it), or --config FILE for the gateway whose ledger it is"
        )
    key_file = _key_file(args)
    if key_file.exists():
        return [load_signer(key_file).verifier()], None
    return [], f"there is no signing key at {key_file}: give --key VERIFIER_KEY"


def audit_command(args: argparse.Namespace) -> int:
    kept: KeptCheckpoints | None = None
    try:
        verifiers, no_key = _verifiers(args)
        if args.checkpoints and not verifiers:
            return _fail(
                "--checkpoints needs the log's verifier key to check the kept checkpoints' "
                f"signatures ({no_key}): pass --key (or the data directory that holds the "
                "signing key)"
            )
        if no_key is not None:
            print(
                f"warning: checkpoint signatures are NOT checked ({no_key}); the audit checks "
                "the log against its own stored roots only",
                file=sys.stderr,
            )
        storage = _open(args, read_only=True)
        try:
            report = audit(storage, verifiers)
            if args.checkpoints:
                kept = KeptCheckpoints.load(
                    Path(args.checkpoints), verifiers, origin=storage.origin()
                )
                report.problems += against_kept(storage, report.tree_size, kept.checkpoints)
        finally:
            storage.close()
    except sqlite3.DatabaseError as e:  # a file, but not a ledger's
        return _fail(f"{_location(args)} does not hold a sekisho ledger ({e})")
    except (StorageError, KeyFileError, NoteError, OSError, ReceiptError) as e:
        return _fail(str(e))
    if args.json:
        # Whether a checkpoint's signature was checked at all, not only its root.
        print(json.dumps({**report.to_json(), "signatures_verified": bool(verifiers)}, indent=2))
    else:
        print(f"ledger {storage.location}")
        print(f"  entries checked:     {report.entries_checked} of tree size {report.tree_size}")
        print(f"  checkpoints checked: {report.checkpoints_checked}", end="")
        print(" (signatures verified)" if verifiers else " (no key given: roots only)")
        print(f"  root:                {base64.b64encode(report.root).decode()}")
        if kept is not None:
            newest = kept.checkpoints[-1].size if kept.checkpoints else 0
            print(
                f"  kept checkpoints:    {len(kept.checkpoints)} from {args.checkpoints} "
                f"(newest size {newest})"
            )
        print(f"  incomplete requests: {len(report.incomplete)} (decision without outcome)")
        for index, request_id in report.incomplete[:20]:
            print(f"    entry {index}: request {request_id}")
        for problem in report.problems:
            print(f"  VIOLATION {problem}")
        print("audit: OK" if report.ok else f"audit: {len(report.problems)} violation(s)")
    return 0 if report.ok else 1


def checkpoint_command(args: argparse.Namespace) -> int:
    """Print the latest checkpoint (signing one if the tree grew); optionally keep it."""
    try:
        storage = _open(args)
        try:
            signed = _latest_signed(args, storage, Path(args.keep) if args.keep else None)
            if args.keep:
                _keep(Path(args.keep), signed, storage)
        finally:
            storage.close()
    except merkle.ProofError as e:
        return _fail(f"the log is not consistent with the last checkpoint you kept: {e}")
    except sqlite3.DatabaseError as e:
        return _fail(f"{_location(args)} does not hold a sekisho ledger ({e})")
    except (StorageError, KeyFileError, NoteError, CheckpointError, ReceiptError, OSError) as e:
        return _fail(str(e))
    sys.stdout.write(signed)
    return 0


def _latest_signed(args: argparse.Namespace, storage: Storage, keep: Path | None) -> str:
    size = storage.tree_size()
    latest = storage.latest_checkpoint()
    if latest is not None and latest.size >= size:
        return latest.note
    signer = load_signer(_key_file(args))
    verifier_key = signer.verifier().key_string()
    data = _data_dir(args)
    # As the gateway does: never sign a ledger restored from behind the newest checkpoint
    # signed, and record this one before it can be published, so that a later restore
    # from behind it is refused too.
    continuity.check_before_signing(storage, data, verifier_key)
    origin = storage.origin() or signer.name
    root = merkle.root_from_hashes(size, storage.hashes(merkle.subtree_keys(0, size)))
    if keep is not None:
        _link(keep, size, root, storage)  # a tree that does not extend the kept ones: a fork
    continuity.record_signed(data, verifier_key, size, root)
    signed = Checkpoint(origin, size, root).sign(signer)
    storage.store_checkpoint(size, root, signed)
    return signed


def _keep(path: Path, signed: str, storage: Storage) -> None:
    """Append ``signed`` to a kept-checkpoints file with a consistency proof from its last one."""
    checkpoint = Checkpoint.parse(signed.partition("\n\n")[0] + "\n")
    proof = _link(path, checkpoint.size, checkpoint.root_hash, storage)
    with path.open("a", encoding="utf-8") as f:
        f.write(KeptCheckpoints.line(signed, proof))


def _link(path: Path, size: int, root: bytes, storage: Storage) -> list[bytes]:
    """The consistency proof from the last checkpoint kept in ``path`` to the tree of ``size``
    and ``root``; ``merkle.ProofError`` when that tree does not extend it."""
    if not path.exists():
        return []
    lines = [
        (n, ln)
        for n, ln in enumerate(read_text(path, "kept checkpoints").splitlines(), 1)
        if ln.strip()
    ]
    if not lines:
        return []
    number, line = lines[-1]
    item = load_json(line, f"{path}:{number}")
    last = item.get("checkpoint") if isinstance(item, dict) else None
    if not isinstance(last, str):
        raise ReceiptError(
            f"{path}:{number}: not a kept-checkpoint line (no 'checkpoint' signed note)"
        )
    last_cp = Checkpoint.parse(last.partition("\n\n")[0] + "\n")
    ranges = merkle.consistency_ranges(last_cp.size, size)
    proof = merkle.proof_from_hashes(ranges, storage.hashes(merkle.keys_for(ranges)))
    merkle.verify_consistency(last_cp.size, size, last_cp.root_hash, root, proof)
    return proof


# --- ledger init --new-log -------------------------------------------------------------------


def init_command(args: argparse.Namespace) -> int:
    """Start a new log where the old one is lost for good, under a new signing key."""
    data = _data_dir(args)
    key_file = _key_file(args)
    try:
        storage = open_storage(_location(args))
        try:
            if storage.holds_log():
                return _fail(
                    f"the ledger at {storage.location} holds a log of {storage.tree_size()} "
                    "entries: it is not lost, and a new log would not replace it. `ledger init "
                    "--new-log` is for a ledger lost for good (the gateway refuses to start "
                    "and says so)"
                )
            location = storage.location
        finally:
            storage.close()
        old = load_signer(key_file) if key_file.exists() else None
        retired = continuity.retire(data, key_file)
        config = config_of(args)
        name = (
            args.name
            or (config.ledger.origin if config is not None else None)
            or (old.name if old is not None else f"{socket.gethostname()}/sekisho-ledger")
        )
        verifier_key = create_signing_key(key_file, name)
        continuity.sanction_new_log(data, verifier_key)
    except sqlite3.DatabaseError as e:
        return _fail(f"{_location(args)} does not hold a sekisho ledger ({e})")
    except (StorageError, KeyFileError, OSError) as e:
        return _fail(str(e))
    if old is not None and retired is not None:
        print(
            f"retired the old signing key: moved to {retired}; it signs nothing more. Keep it "
            f"to verify the old log's receipts (verifier key {old.verifier().key_string()})"
        )
    print(f"created ledger signing key {key_file} (mode 0600; back it up, keep it secret)")
    print(f"the gateway starts a new, empty log at {location} on its next start")
    print("verifier key (publish this; auditors pass it to `sekisho verify --key`):")
    print(verifier_key)
    return 0


# --- keys ledger ----------------------------------------------------------------------------------


def keys_ledger(args: argparse.Namespace) -> int:
    """Create the ledger signing key under the data dir and print the verifier key."""
    path = _key_file(args)
    config = config_of(args)
    configured = config.ledger.origin if config is not None else None
    name = args.name or configured or f"{socket.gethostname()}/sekisho-ledger"
    if not path.exists() and not (args.create or args.name):
        # Printing is what this is mostly for: a key made where the operator looked by mistake
        # would be published and verify nothing.
        return _fail(
            f"there is no ledger signing key at {path}: the gateway makes it on its first start. "
            "Pass the data directory `serve` uses (--data-dir DIR) or its config (--config "
            "FILE); to make the key before the first start, add --create (and --name ORIGIN)."
        )
    if path.exists():
        # The gateway creates the key on first start; then this prints its verifier key.
        try:
            signer = load_signer(path)
        except KeyFileError as e:
            return _fail(str(e))
        asked_to_make = args.create or args.name
        print(
            f"ledger signing key {path} (name {signer.name})"
            + ("; it exists already and was not overwritten" if asked_to_make else ""),
            file=sys.stderr,
        )
        print(
            "verifier key (publish this; auditors pass it to `sekisho verify --key`):",
            file=sys.stderr,
        )
        if configured is not None and configured != signer.name:
            # verify expects the log the key is named after unless told otherwise.
            print(
                f"the log's origin is {configured!r} (ledger.origin), not the key's name: "
                f"publish it with the key; auditors pass `sekisho verify --origin {configured}`",
                file=sys.stderr,
            )
        print(signer.verifier().key_string())
        return 0
    try:
        verifier_key = create_signing_key(path, name)
    except KeyFileError as e:
        return _fail(str(e))
    print(f"created ledger signing key {path} (mode 0600; back it up, keep it secret)")
    print("verifier key (publish this; auditors pass it to `sekisho verify --key`):")
    print(verifier_key)
    return 0


# --- argparse wiring ------------------------------------------------------------------------------


def _add_location(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--data-dir",
        help="data directory holding ledger.sqlite3 (default: the --config file's, "
        "else $SEKISHO_DATA_DIR, else ./data)",
    )
    where.add_argument("--url", help="PostgreSQL URL of the ledger instead of the data dir")
    p.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="the gateway's config: use its ledger (ledger.url, or SQLite in its data_dir)",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``verify`` and ``ledger {audit,checkpoint}`` to a CLI."""
    verify = subparsers.add_parser(
        "verify",
        help="verify a ledger receipt offline (signature, origin, inclusion, consistency)",
        description="Verify a receipt offline: the checkpoint's Ed25519 signature under --key, "
        "that it is a checkpoint of the log expected (--origin, else the key's name), the "
        "entries' inclusion under its root, and (with --checkpoints) its consistency with "
        "the tree heads you kept. Prints each check, then the entries the receipt proves. "
        "Exit status 0: verified; 1: a check failed or a file could not be read (the FAILED "
        "line says which).",
        epilog="Get the verifier key (and the log's origin, where it is not the key's name) "
        "from the gateway's operator through a channel you trust, never from a receipt, and "
        "compare its key ID (docs/ledger.md, For auditors).",
    )
    verify.add_argument("receipt", metavar="RECEIPT_FILE", help="receipt JSON or .tlog-proof")
    verify.add_argument(
        "--key",
        required=True,
        help="the log's verifier key (NAME+KEYID+BASE64, as `sekisho keys ledger` prints it), "
        "or a file holding it",
    )
    verify.add_argument(
        "--origin",
        help="the log's origin, as its operator gave it to you with the key: a checkpoint of "
        "any other log fails (default: the verifier key's name, which sekisho gives the log)",
    )
    verify.add_argument(
        "--checkpoints", metavar="FILE", help="kept checkpoints (JSON lines) to check against"
    )
    verify.set_defaults(func=verify_command)

    ledger = subparsers.add_parser("ledger", help="transparency ledger operations")
    sub = ledger.add_subparsers(dest="ledger_command", required=True)
    audit_p = sub.add_parser("audit", help="replay the log and check every checkpoint")
    _add_location(audit_p)
    audit_p.add_argument("--key", help="verifier key to check checkpoint signatures with")
    audit_p.add_argument("--json", action="store_true", help="print the report as JSON")
    audit_p.add_argument(
        "--checkpoints",
        metavar="FILE",
        help="kept checkpoints (JSON lines, as `ledger checkpoint --keep` writes): the ledger "
        "must hold each as a prefix; one it is behind or differs from is a violation (check a "
        "restored ledger with it before serving)",
    )
    audit_p.set_defaults(func=audit_command)
    cp = sub.add_parser(
        "checkpoint",
        help="print the latest signed checkpoint",
        description="Print the latest signed checkpoint. Where the log grew since the last "
        "one, sign one with the gateway's key, first recorded in the data directory's "
        "ledger-signed.json as the gateway records its own (a ledger restored from behind it "
        "is then refused): give the gateway's --config FILE or the --data-dir serve uses. "
        "Nothing is signed on a ledger behind that record, or that does not extend the last "
        "checkpoint in --keep FILE.",
    )
    _add_location(cp)
    cp.add_argument("--key-file", help="signer key file (default DATA_DIR/keys/ledger.key)")
    cp.add_argument(
        "--keep", metavar="FILE", help="also append it, with a consistency proof, to FILE"
    )
    cp.set_defaults(func=checkpoint_command)
    init = sub.add_parser(
        "init",
        help="start a new log under a new signing key, where the old log is lost for good",
    )
    _add_location(init)
    init.add_argument(
        "--new-log",
        action="store_true",
        required=True,
        help="required: a new history, not the lost one (the old signing key is retired)",
    )
    init.add_argument("--key-file", help="signing key (default DATA_DIR/keys/ledger.key)")
    init.add_argument(
        "--name", help="the new log's origin (default: the config's ledger.origin, else the old)"
    )
    init.set_defaults(func=init_command)


def register_keys(keys_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keys ledger`` under an existing ``keys`` command."""
    p = keys_subparsers.add_parser(
        "ledger", help="print the ledger's verifier key (--create: make the signing key first)"
    )
    add_data_dir_args(p)
    p.add_argument(
        "--name",
        help="key name = log origin, for a new key (default: the config's ledger.origin, else "
        "HOSTNAME/sekisho-ledger); implies --create",
    )
    p.add_argument(
        "--create",
        action="store_true",
        help="make the key if there is none (without it, a missing key is an error)",
    )
    p.add_argument("--key-file", help="where to write the key (default DATA_DIR/keys/ledger.key)")
    p.set_defaults(func=keys_ledger)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sekisho-ledger", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    keys = sub.add_parser("keys", help="key management")
    register_keys(keys.add_subparsers(dest="keys_command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
