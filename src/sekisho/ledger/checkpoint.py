"""C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint): a tree head as a signed note.

::

    origin
    tree size (decimal, no leading zeroes)
    base64(root hash)
    [extension lines]
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass

from sekisho.ledger import note
from sekisho.ledger.merkle import HASH_SIZE, MAX_SIZE


class CheckpointError(ValueError):
    """A checkpoint that is malformed, for another log, or not signed by the expected key."""


class OtherLogError(CheckpointError):
    """A checkpoint whose origin line names another log than the one expected."""


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode()]
        return "\n".join([*lines, *self.extensions]) + "\n"

    def sign(self, signer: note.Signer) -> str:
        return note.sign(self.text(), signer)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse checkpoint note text (without signatures)."""
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError("checkpoint needs origin, tree size and root hash lines")
        origin, size_text, root_text, *extensions = lines
        if not origin:
            raise CheckpointError("checkpoint origin line is empty")
        if not size_text.isascii() or not size_text.isdigit():
            raise CheckpointError(f"checkpoint tree size {size_text!r} is not a decimal number")
        if size_text != "0" and size_text.startswith("0"):
            raise CheckpointError(f"checkpoint tree size {size_text!r} has leading zeroes")
        if len(size_text) > len(str(MAX_SIZE)) or int(size_text) > MAX_SIZE:
            raise CheckpointError(
                f"checkpoint tree size {size_text[:30]}... is larger than {MAX_SIZE} (2^64-1)"
            )
        try:
            root = base64.b64decode(root_text, validate=True)
        except (binascii.Error, ValueError):
            raise CheckpointError("checkpoint root hash is not valid base64") from None
        if len(root) != HASH_SIZE:
            raise CheckpointError(f"checkpoint root hash is {len(root)} bytes, not {HASH_SIZE}")
        if any(not line for line in extensions):
            raise CheckpointError("checkpoint extension lines must not be empty")
        return cls(origin, int(size_text), root, tuple(extensions))


def open_checkpoint(
    signed: str, verifiers: Iterable[note.Verifier], *, origin: str | None = None
) -> Checkpoint:
    """Verify a signed checkpoint and parse it; ``origin`` pins which log it must be from."""
    try:
        opened = note.open_note(signed, verifiers)
    except note.NoteError as e:
        raise CheckpointError(f"checkpoint signature: {e}") from None
    checkpoint = Checkpoint.parse(opened.text)
    if origin is not None and checkpoint.origin != origin:
        raise OtherLogError(
            f"the checkpoint is of the log {checkpoint.origin!r}, not of {origin!r}, the log "
            "expected"
        )
    return checkpoint
