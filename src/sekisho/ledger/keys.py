"""The ledger's signing key on local disk: one line, Go's signer key string, mode 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sekisho.ledger.note import NoteError, Signer


class KeyFileError(RuntimeError):
    """The signing key file is missing, unreadable, too open or malformed."""


def create_signing_key(path: Path, name: str) -> str:
    """Write a new Ed25519 signer key to ``path`` (0600, never overwriting); return the
    verifier key string to publish."""
    try:
        signer = Signer.generate(name)
    except NoteError as e:
        raise KeyFileError(f"cannot use {name!r} as the ledger key name: {e}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"{path} already exists; refusing to overwrite a signing key "
            "(move it away first if you really mean to rotate it)"
        ) from None
    except OSError as e:
        raise KeyFileError(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(signer.key_string() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return signer.verifier().key_string()


def load_signer(path: Path) -> Signer:
    """Read the signer key, refusing a file that group or others can read or write."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(
            f"ledger signing key {path} does not exist; create it with `sekisho keys ledger`"
        ) from None
    except OSError as e:
        raise KeyFileError(f"cannot read ledger signing key {path}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"ledger signing key {path} has permissions {stat.S_IMODE(mode):04o}, which lets "
            f"other users read it; run `chmod 600 {path}`"
        )
    try:
        return Signer.from_key_string(path.read_text(encoding="ascii"))
    except (NoteError, UnicodeDecodeError) as e:
        raise KeyFileError(f"ledger signing key {path} is not a signer key: {e}") from None
