"""The transparency ledger: an RFC 9162 Merkle log of every decision, signed C2SP checkpoints,
and C2SP tlog-proof receipts anyone can verify offline. See docs/ledger.md."""

from sekisho.ledger.audit import AuditReport, audit
from sekisho.ledger.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from sekisho.ledger.keys import KeyFileError, create_signing_key, load_signer
from sekisho.ledger.log import LEDGER_REFUSALS, Appended, Ledger, LedgerUnavailable
from sekisho.ledger.note import NoteError, Signer, Verifier
from sekisho.ledger.proof import KeptCheckpoints, ReceiptError, TlogProof, verify_receipt
from sekisho.ledger.records import (
    AdminRecord,
    DecisionRecord,
    OutcomeRecord,
    Record,
    RecordError,
    keyed_hash,
    parse_record,
)
from sekisho.ledger.storage import Storage, StorageError, open_storage

__all__ = [
    "LEDGER_REFUSALS",
    "AdminRecord",
    "Appended",
    "AuditReport",
    "Checkpoint",
    "CheckpointError",
    "DecisionRecord",
    "KeptCheckpoints",
    "KeyFileError",
    "Ledger",
    "LedgerUnavailable",
    "NoteError",
    "OutcomeRecord",
    "ReceiptError",
    "Record",
    "RecordError",
    "Signer",
    "Storage",
    "StorageError",
    "TlogProof",
    "Verifier",
    "audit",
    "create_signing_key",
    "keyed_hash",
    "load_signer",
    "open_checkpoint",
    "open_storage",
    "parse_record",
    "verify_receipt",
]
