from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from sekisho.store import Exchange, RetentionSpec
from sekisho.types import Level


@dataclass
class Region:
    country: str
    store: str = "sqlite"
    keys: Any = None


@dataclass
class Tenant:
    home_region: str
    retention: Any = None


@dataclass
class Sink:
    """Audit sink that remembers what it was told (stands in for the ledger in these tests)."""

    events: list[tuple[str, str, str, dict[str, object]]] = field(default_factory=list)
    fail: bool = False

    async def admin(
        self, actor: str, action: str, target: str, details: Mapping[str, object]
    ) -> None:
        if self.fail:
            raise RuntimeError("ledger unavailable")
        self.events.append((actor, action, target, dict(details)))

    def actions(self) -> list[str]:
        return [e[1] for e in self.events]


FULL_7 = RetentionSpec(mode="full", days=7)


def exchange(
    tenant: str = "demo",
    *,
    retention: RetentionSpec | None = None,
    level: Level = Level.INTERNAL,
    prompt: str = "山田太郎さんの電話は090-1234-5678です",
    output: str | None = "承知しました",
    identifiers: tuple[tuple[str, str], ...] = (
        ("PHONE_JP", "090-1234-5678"),
        ("PERSON", "山田太郎"),
    ),
    created_at: datetime | None = None,
    request_id: str = "req-1",
    pseudonym_map: dict[str, str] | None = None,
) -> Exchange:
    return Exchange(
        request_id=request_id,
        tenant=tenant,
        created_at=created_at or datetime.now(UTC),
        level=level,
        retention=retention or RetentionSpec(mode="full", days=7),
        endpoint_id="sim-domestic-tokyo",
        model="gpt-4o",
        prompt=orjson.dumps([{"role": "user", "content": prompt}]),
        output=output.encode() if output is not None else None,
        identifiers=identifiers,
        pseudonym_map=pseudonym_map,
        prompt_tokens=12,
        completion_tokens=5,
    )
