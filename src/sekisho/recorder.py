"""The pipeline's record steps (5 commit, 8 record) written to the transparency ledger.

Kept apart from ``ledger/`` because it translates the pipeline's types into ledger records:
the ledger knows nothing of calls and decisions, and the pipeline nothing of Merkle trees.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

import orjson

from sekisho.ledger import AdminRecord, DecisionRecord, Ledger, OutcomeRecord, keyed_hash
from sekisho.ledger.records import now
from sekisho.pipeline import Call, Outcome
from sekisho.policy.decision import Decision


class LedgerRecorder:
    """Decision entry before dispatch, outcome entry before the response completes."""

    def __init__(self, ledger: Ledger, tenant_key: Callable[[str], bytes]) -> None:
        self.ledger = ledger
        self._tenant_key = tenant_key

    def principal_id(self, tenant: str, subject: str) -> str:
        """A stable pseudonym for the caller: the same key always maps to the same id, and the
        id reveals nothing without the tenant's key."""
        digest = hmac.new(self._tenant_key(tenant), subject.encode(), hashlib.sha256).hexdigest()
        return "p_" + digest[:20]

    async def decision(self, call: Call, decision: Decision, tenant_region: str) -> str | None:
        first = decision.eligible[0].endpoint if decision.eligible else None
        key = self._tenant_key(call.principal.tenant)
        prompt = orjson.dumps(
            call.body.get("messages") if call.kind == "chat" else call.body.get("input"),
            option=orjson.OPT_SORT_KEYS,
        )
        record = DecisionRecord(
            time=now(),
            request_id=call.request_id,
            tenant=call.principal.tenant,
            principal=self.principal_id(call.principal.tenant, call.principal.subject),
            classification=decision.level.label,
            findings=dict(decision.finding_types),
            policy_digest=decision.policy_digest,
            action=str(decision.action),
            endpoint=first.id if first else None,
            jurisdiction_country=first.jurisdiction.country if first else None,
            jurisdiction_region=first.jurisdiction.region if first else None,
            operator_name=first.operator.name if first else None,
            operator_country=first.operator.country if first else None,
            model=call.model,
            storage_region=tenant_region,
            prompt_hash=keyed_hash(key, prompt),
            eligible=decision.eligible_ids,
        )
        appended = await self.ledger.append(record)
        return appended.header()

    async def outcome(self, call: Call, decision: Decision, outcome: Outcome) -> None:
        key = self._tenant_key(call.principal.tenant)
        output_hash = None
        if outcome.output_texts:
            output_hash = keyed_hash(key, "\x00".join(outcome.output_texts).encode())
        record = OutcomeRecord(
            time=now(),
            request_id=call.request_id,
            status=outcome.status,
            prompt_tokens=outcome.prompt_tokens or None,
            completion_tokens=outcome.completion_tokens or None,
            output_hash=output_hash,
            error_code=outcome.error_code,
            duration_ms=int((time.perf_counter() - call.started) * 1000),
            endpoint=outcome.route.endpoint.id if outcome.route else None,
        )
        await self.ledger.append(record)

    async def admin(self, actor: str, action: str, target: str,
                    details: dict[str, str | int | bool | None]) -> None:
        await self.ledger.append(AdminRecord(time=now(), actor=actor, action=action,
                                             target=target, details=details))
