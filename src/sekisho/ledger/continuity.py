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

import base64
import binascii
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from sekisho.ledger import merkle
from sekisho.ledger.note import Signer
from sekisho.ledger.storage import SQLITE_FILE, Storage, StorageError

RECORD = "ledger-in-use.json"
# The newest checkpoint this data directory's gateway signed, outside the ledger it describes:
# a ledger put back from an older backup is behind it, and must not be signed from.
SIGNED = "ledger-signed.json"
# Written by `ledger init --new-log` with the new key's verifier: the next start may begin an
# empty log under that key (and no other), after which the record of the log in use replaces it.
NEW_LOG = "ledger-new-log.json"


class LedgerLost(StorageError):
    """The ledger holds no log, but this data directory shows an earlier one existed."""


class LedgerBehind(StorageError):
    """The ledger does not hold the tree of the newest checkpoint its key signed here."""


def record_signed(data_dir: Path, verifier_key: str, size: int, root: bytes) -> None:
    """Remember the newest checkpoint signed, on disk before it replaces the last record: a
    record a power cut left empty or torn proves nothing, and a ledger restored from behind it
    would then start unnoticed. (One fsync per checkpoint signed, not per request.)

    Never a smaller one over a larger one of the same key: the workers of one gateway and a
    `ledger checkpoint` sign side by side, and the one that records last may have signed less."""
    record = data_dir / SIGNED
    # One writer per thread: the checkpoint loop and a start-up may record at once.
    tmp = record.with_name(f"{SIGNED}.{os.getpid()}.{threading.get_ident()}.tmp")
    item = {"key": verifier_key, "size": size, "root": base64.b64encode(root).decode()}
    with _directory_locked(data_dir):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            known = json.loads(record.read_text(encoding="utf-8"))
            if known["key"] == verifier_key and int(known["size"]) > size:
                return
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(item) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, record)


@contextlib.contextmanager
def _directory_locked(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the data directory itself (no lock file to leave behind)
    while the block runs; where there is no ``flock`` (Windows), hold none."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def check_before_signing(storage: Storage, data_dir: Path, verifier_key: str) -> None:
    """For a command about to sign a checkpoint of ``storage`` outside the gateway (`ledger
    checkpoint`): raise ``StorageError`` unless ``data_dir`` is the data directory of the
    gateway whose key signs this log, where ``record_signed`` then records it; and
    ``LedgerBehind`` when the ledger does not hold the newest checkpoint signed there (signing
    a restored or rewritten copy would be a fork, as serving from it would)."""
    config_hint = (
        "pass --config FILE (the file `serve` runs with) or the --data-dir it uses, so the "
        f"checkpoint is recorded where the gateway looks ({SIGNED}: the gateway refuses to start "
        "on a ledger restored from a backup older than it)"
    )
    if not data_dir.is_dir():
        raise StorageError(
            f"there is no data directory at {data_dir}, so no checkpoint was signed: {config_hint}"
        )
    owner = _recorded_key(data_dir / RECORD) or _recorded_key(data_dir / SIGNED)
    if owner is not None and owner != verifier_key:
        raise StorageError(
            f"the data directory {data_dir} is that of the log signed by key {owner}, not by "
            f"this signing key ({verifier_key}), so no checkpoint was signed: {config_hint}"
        )
    kept = _recorded_ledger(data_dir)
    if kept is not None and not _same_ledger(kept, storage.location, data_dir):
        raise StorageError(
            f"this signing key signs the log kept at {kept} ({data_dir / RECORD}), not the "
            f"ledger at {storage.location}: a checkpoint of that ledger under the same key "
            "would be a second history, so none was signed. Pass --config FILE (the file "
            "`serve` runs with) to sign the gateway's ledger"
        )
    refuse_a_ledger_behind(storage, data_dir, verifier_key, refused="no checkpoint was signed")


def _recorded_key(path: Path) -> str | None:
    try:
        key = json.loads(path.read_text(encoding="utf-8"))["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return key if isinstance(key, str) else None


def _recorded_ledger(data_dir: Path) -> str | None:
    try:
        kept = json.loads((data_dir / RECORD).read_text(encoding="utf-8"))["ledger"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return kept if isinstance(kept, str) else None


def _same_ledger(kept: str, location: str, data_dir: Path) -> bool:
    if kept == where(location):
        return True
    # An older record keeps a SQLite path as serve was given it, perhaps relative.
    return where(location) == str((data_dir / SQLITE_FILE).resolve()) and names_this_ledger(
        kept, data_dir
    )


def refuse_a_ledger_behind(
    storage: Storage,
    data_dir: Path,
    verifier_key: str,
    *,
    refused: str = "the gateway did not start",
) -> None:
    """Raise ``LedgerBehind`` when ``storage`` does not hold the tree of the newest checkpoint
    this key signed here (a ledger restored from a backup older than it, or another copy);
    ``refused`` says what was not done because of it."""
    try:
        known = json.loads((data_dir / SIGNED).read_text(encoding="utf-8"))
        if known["key"] != verifier_key:
            return  # another log's (a new log since): it says nothing about this one
        size, root = int(known["size"]), base64.b64decode(known["root"], validate=True)
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError, binascii.Error):
        return  # a damaged record proves nothing either way; the audit still can
    if not storage.holds_log():
        return  # refuse_a_second_history says what to do
    held = storage.tree_size()
    what_to_do = (
        "Serving from it would sign other entries at sizes already signed, under the same key: "
        f"a second history (a fork) that every receipt and kept checkpoint exposes, so {refused}. "
        "Restore a newer copy that reaches that size and check it with "
        "`sekisho ledger audit --checkpoints kept.jsonl`; if there is none, move this one "
        "aside (its entries still verify under the old key) and start a new log with "
        "`sekisho ledger init --new-log` (ledger.md, Losing the ledger)"
    )
    if held < size:
        raise LedgerBehind(
            f"the ledger at {storage.location} holds {held} entries, but this gateway signed a "
            f"checkpoint of size {size} ({data_dir / SIGNED}): it was restored from an older "
            f"backup, or is another copy. {what_to_do}"
        )
    try:
        ours = merkle.root_from_hashes(size, storage.hashes(merkle.subtree_keys(0, size)))
    except merkle.ProofError:
        ours = b""
    if ours != root:
        raise LedgerBehind(
            f"the ledger at {storage.location} holds {held} entries, but its first {size} "
            f"entries are not those of the checkpoint of size {size} this gateway signed "
            f"({data_dir / SIGNED}): it was rewritten, or is another log. {what_to_do}"
        )


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
    elsewhere = _recorded_elsewhere(data_dir, storage.location)
    if elsewhere is not None:
        as_url = elsewhere if "://" in elsewhere else f"sqlite:///{elsewhere}"
        # Not lost, most likely: kept at another place than the one configured now (a `keys`
        # or `ledger` command run with --data-dir before the first start writes to the data
        # directory's own SQLite ledger; or ledger.url was changed).
        raise LedgerLost(
            f"the ledger at {storage.location} is empty, but {'; '.join(found)}: the log this "
            f"data directory's signing key signs is kept at {elsewhere}, not at "
            f"{storage.location}. (A `sekisho keys` or `ledger` command run with --data-dir "
            "before the first start keeps its entries in the data directory's own SQLite "
            "ledger; pass --config FILE to write where `serve` does.) Starting a new log here "
            "would let the same signing key sign a second, different history, so the gateway "
            f"did not start. Either set ledger.url to {as_url} (or remove ledger.url, if "
            "that is the data directory's own ledger) to go on with that log; or start the "
            f"configured ledger as a new log under a new signing key with `sekisho ledger "
            "init --new-log --config FILE`, which retires the old key (its log stays "
            "verifiable with the old verifier key), and publish the new verifier key"
        )
    raise LedgerLost(
        f"the ledger at {storage.location} is missing or empty, but {'; '.join(found)}. "
        "Starting a new log there would let the same signing key sign a second, different "
        "history (a fork no auditor could tell from tampering), so the gateway did not start. "
        f"Restore the ledger from its backup to {storage.location}; or, if it is lost for "
        "good, start a new log under a new signing key with `sekisho ledger init --new-log` "
        "(same --data-dir or --config), which retires the old key, and publish the new "
        "verifier key"
    )


def _recorded_elsewhere(data_dir: Path, location: str) -> str | None:
    """Where the record of the log in use says the log is, when that is another place than
    ``location`` and a ledger that holds a log is there."""
    try:
        known = json.loads((data_dir / RECORD).read_text(encoding="utf-8"))
        recorded = str(known["ledger"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if recorded == where(location):
        return None
    if "://" not in recorded and not Path(recorded).exists():
        return None  # that one is gone too: lost, as the general message says
    return recorded


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
    with contextlib.suppress(FileNotFoundError):
        (data_dir / SIGNED).unlink()
    return retired
