from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sekisho.ledger import DecisionRecord, Ledger, OutcomeRecord, Signer, keyed_hash

ORIGIN = "ledger.test.example/log"
TENANT_KEY = b"tenant-key-0123456789abcdef"
_ids = itertools.count()


def decision(request_id: str, **changes: object) -> DecisionRecord:
    fields: dict[str, object] = {
        "time": datetime.now(UTC),
        "request_id": request_id,
        "tenant": "acme",
        "principal": "p-1",
        "classification": "internal",
        "findings": {"email": 1},
        "policy_digest": "sha256:0f",
        "action": "allow",
        "endpoint": "tokyo-1",
        "jurisdiction_country": "JP",
        "jurisdiction_region": "tokyo",
        "operator_name": "Example GPU KK",
        "operator_country": "JP",
        "model": "m-1",
        "storage_region": "jp-east",
        "prompt_hash": keyed_hash(TENANT_KEY, request_id.encode()),
    }
    fields.update(changes)
    return DecisionRecord(**fields)  # type: ignore[arg-type]


def outcome(request_id: str, status: int = 200) -> OutcomeRecord:
    return OutcomeRecord(
        time=datetime.now(UTC),
        request_id=request_id,
        status=status,
        prompt_tokens=10,
        completion_tokens=20,
        output_hash=keyed_hash(TENANT_KEY, b"output " + request_id.encode()),
        error_code=None,
        duration_ms=42,
    )


def new_request_id() -> str:
    return f"req-{next(_ids)}"


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
async def ledger(data_dir: Path, signer: Signer) -> AsyncIterator[Ledger]:
    opened = await Ledger.open(
        str(data_dir),
        signer,
        origin=ORIGIN,
        group_interval=0.002,
        group_size=256,
        deadline=2.0,
        checkpoint_interval=0.05,
    )
    try:
        yield opened
    finally:
        await opened.close()
