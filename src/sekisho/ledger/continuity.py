"""One key, one history: a signing key that has signed a log never starts a second one.

A ledger file deleted (or a PostgreSQL schema dropped) under a gateway that keeps its signing
key would otherwise be recreated empty at the next start, and the same key would sign a tree
of size 2 with another root: a forked history that each checkpoint, alone, verifies. So the
data directory keeps ``ledger-in-use.json`` (which key signs which log, where), and a start
that finds that record, or an older gateway's traces, beside a ledger that holds no log
refuses with what to do: restore the ledger, or deliberately start a new log under a new key
(``sekisho ledger init --new-log``), which retires the old key.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from sekisho.ledger.note import Signer
from sekisho.ledger.storage import SQLITE_FILE, Storage, StorageError

RECORD = "ledger-in-use.json"
# Written by `ledger init --new-log` with the new key's verifier: the next start may begin an
# empty log under that key (and no other), after which the record of the log in use replaces it.
NEW_LOG = "ledger-new-log.json"


class LedgerLost(StorageError):
    """The ledger holds no log, but this data directory shows an earlier one existed."""


def evidence(data_dir: Path, key_file: Path, traces: Sequence[Path] = ()) -> list[str]:
    """What in ``data_dir`` shows that a log was kept before: the record of the log in use,
    else the signing key beside a file only a started gateway writes (``traces``)."""
    if _sanctioned(data_dir, key_file):
        return []  # a new log under a new key, started on purpose
    record = data_dir / RECORD
    if record.exists():
        try:
            known = json.loads(record.read_text(encoding="utf-8"))
            said = f" (the log {known['origin']!r} at {known['ledger']}, key {known['key']})"
        except (OSError, ValueError, KeyError, TypeError):
            said = ""
        return [f"{record} records that a log was kept{said}"]
    if key_file.exists():
        ran = [str(p) for p in traces if p.exists()]
        if ran:
            return [f"the signing key {key_file} exists and a gateway ran here ({', '.join(ran)})"]
    return []


def _sanctioned(data_dir: Path, key_file: Path) -> bool:
    """Whether `ledger init --new-log` made the signing key now at ``key_file`` for a new log."""
    marker = data_dir / NEW_LOG
    if not marker.exists() or not key_file.exists():
        return False
    from sekisho.ledger.keys import KeyFileError, load_signer

    try:
        wanted = json.loads(marker.read_text(encoding="utf-8"))["key"]
        return bool(load_signer(key_file).verifier().key_string() == wanted)
    except (OSError, ValueError, KeyError, TypeError, KeyFileError):
        return False


def sanction_new_log(data_dir: Path, verifier_key: str) -> None:
    """Let the next start begin an empty log under the key whose verifier is given."""
    marker = data_dir / NEW_LOG
    tmp = marker.with_name(f"{NEW_LOG}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": verifier_key}) + "\n", encoding="utf-8")
    os.replace(tmp, marker)


def refuse_a_second_history(
    storage: Storage, data_dir: Path, key_file: Path, traces: Sequence[Path] = ()
) -> None:
    """Raise ``LedgerLost`` when ``storage`` holds no log but ``data_dir`` shows there was one."""
    if storage.holds_log():
        return
    found = evidence(data_dir, key_file, traces)
    if not found:
        return
    raise LedgerLost(
        f"the ledger at {storage.location} is missing or empty, but {'; '.join(found)}. "
        "Starting a new log there would let the same signing key sign a second, different "
        "history (a fork no auditor could tell from tampering), so the gateway did not start. "
        f"Restore the ledger from its backup to {storage.location}; or, if it is lost for "
        "good, start a new log under a new signing key with `sekisho ledger init --new-log` "
        "(same --data-dir or --config), which retires the old key, and publish the new "
        "verifier key"
    )


def where(location: str) -> str:
    """``location`` as the record of the log in use keeps it: a SQLite file as its absolute,
    resolved path (a relative one means nothing to a command run from another directory), a
    URL as it is."""
    if "://" in location:
        return location
    return str(Path(location).resolve())


def names_this_ledger(kept: str, data_dir: Path) -> bool:
    """Whether ``kept`` (the ``ledger`` of a record in ``data_dir``) is the data directory's
    own ledger file (``data_dir/ledger.sqlite3``), the one a command without the config opens.
    An older record keeps the path as serve was given it, perhaps relative to a working
    directory no longer known: it names this ledger when, read from some directory above the
    data directory (or the data directory itself), it is that file."""
    if "://" in kept:
        return False
    own = (data_dir / SQLITE_FILE).resolve()
    path = Path(kept)
    if path.is_absolute():
        return path.resolve() == own
    here = data_dir.resolve()
    return any((base / path).resolve() == own for base in (here, *here.parents))


def remember(data_dir: Path, signer: Signer, storage: Storage, origin: str) -> None:
    """Record (once) that ``signer`` signs the log ``origin`` at ``storage``."""
    record = data_dir / RECORD
    wanted = {
        "origin": origin,
        "key": signer.verifier().key_string(),
        "ledger": where(storage.location),
    }
    with contextlib.suppress(OSError, ValueError):
        if json.loads(record.read_text(encoding="utf-8")) == wanted:
            return
    tmp = record.with_name(f"{RECORD}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, record)
    with contextlib.suppress(FileNotFoundError):
        (data_dir / NEW_LOG).unlink()  # the new log is the one in use now


def retire(data_dir: Path, key_file: Path) -> Path | None:
    """For a new log: move the old signing key aside (kept, to verify the old log's receipts,
    but never loaded to sign again) and forget the record of the old log. Returns where the
    old key went."""
    retired = None
    if key_file.exists():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        retired = key_file.with_name(f"{key_file.name}.retired-{stamp}")
        os.replace(key_file, retired)
    with contextlib.suppress(FileNotFoundError):
        (data_dir / RECORD).unlink()
    return retired
