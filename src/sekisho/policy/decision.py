"""A policy decision: which endpoints may see a request, in which order, and what is done first."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sekisho.routing.catalogue import Route
from sekisho.types import Action, Level

# Rule id of a refusal that no single rule made: every candidate was excluded by some rule.
NO_ELIGIBLE_ENDPOINT = "sekisho/no-eligible-endpoint"


@dataclass(frozen=True, slots=True)
class Exclusion:
    """Why one candidate endpoint may not see the request."""

    endpoint_id: str
    rule: str  # stable rule id, e.g. "jp-appi/foreign-operator"
    fact: str  # the endpoint fact that failed the rule, e.g. "operator.country=US"

    def __str__(self) -> str:
        return f"{self.endpoint_id}: {self.rule} ({self.fact})"


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer for one request. Routing may only ever use ``eligible``, in order."""

    eligible: tuple[Route, ...]
    action: Action
    excluded: tuple[Exclusion, ...]
    level: Level
    policy_digest: str
    finding_types: Mapping[str, int]
    redact_types: frozenset[str]
    pseudonymise_types: frozenset[str]
    rule: str | None  # the rule that blocked, when action is BLOCK
    # Finding types to replace by pseudonyms before the prompt or output is stored (番号法).
    store_pseudonymised_types: frozenset[str] = frozenset()
    model: str = ""
    # Why the request is at its level, e.g. "by finding MY_NUMBER (pack jp-mynumber)".
    level_reason: str = ""

    @property
    def denied(self) -> bool:
        """True when nothing may be sent upstream: the HTTP layer answers 403."""
        return self.action is Action.BLOCK or not self.eligible

    @property
    def eligible_ids(self) -> tuple[str, ...]:
        return tuple(route.endpoint.id for route in self.eligible)

    def exclusions_of(self, endpoint_id: str) -> tuple[Exclusion, ...]:
        return tuple(e for e in self.excluded if e.endpoint_id == endpoint_id)

    @property
    def blocked_by_rule(self) -> bool:
        """Refused by a rule whose action is block (not for want of an eligible endpoint)."""
        return self.action is Action.BLOCK and bool(self.rule) and self.rule != NO_ELIGIBLE_ENDPOINT

    def refusal_message(self) -> str:
        """Explain a refusal to the client: the level, the rule, each endpoint's reasons.

        Built only from level names, finding *type* names, rule ids and endpoint facts, so it can
        never carry a value found in the request.
        """
        head = f"Request classified {self.level.described}"
        if self.level_reason:
            head += f" {self.level_reason}"
        kinds = ", ".join(
            f"{name}×{count}" for name, count in sorted(self.finding_types.items()) if count
        )
        if kinds:
            head += f"; found: {kinds}"
        model = f" for model {self.model!r}" if self.model else ""
        if self.blocked_by_rule:
            body = f"It is blocked{model} by sovereignty policy rule {self.rule}."
        elif self.eligible:
            body = f"It is not refused{model}: {len(self.eligible)} endpoint(s) are eligible."
        elif not self.excluded:
            body = f"It has no candidate endpoint{model}."
        else:
            reasons: dict[str, list[str]] = {}
            for ex in self.excluded:
                reasons.setdefault(ex.endpoint_id, []).append(f"{ex.rule} ({ex.fact})")
            listed = "; ".join(f"{ep}: {', '.join(why)}" for ep, why in reasons.items())
            body = (
                f"It may not be sent to any endpoint{model} under the sovereignty policy. {listed}."
            )
        return f"{head}. {body} Policy {self.policy_digest}."
