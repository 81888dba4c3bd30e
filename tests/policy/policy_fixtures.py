"""Endpoints with the sovereignty facts the policy tests decide on, built without the config."""

from __future__ import annotations

from typing import Any

from sekisho.policy.compiler import CompiledPolicy, compile_policy
from sekisho.policy.decision import Decision
from sekisho.policy.spec import PolicySpec
from sekisho.routing.catalogue import Catalogue, Endpoint


def endpoint(endpoint_id: str, **facts: Any) -> Endpoint:
    """An endpoint serving model ``m``; ``facts`` override the defaults (a Japanese endpoint)."""
    data: dict[str, Any] = {
        "id": endpoint_id,
        "family": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "models": [{"id": "m", "aliases": ["alias-m"]}],
        "jurisdiction": {"country": "JP", "region": "tokyo"},
        "operator": {"name": f"{endpoint_id} KK", "country": "JP"},
        "data_terms": {"retention_days": 0, "trains_on_data": False},
    }
    for key, value in facts.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Endpoint.model_validate(data)


# A catalogue covering each fact the packs look at.
JP_DOMESTIC = endpoint("jp-domestic", certifications=["ISMAP"])
JP_ONPREM = endpoint("jp-onprem", deployment="on_premises", operator={"name": "Tenant IT"})
# A Japanese subsidiary of a US group: domestic under APPI, not a domestic operator for 機密性3.
JP_SUBSIDIARY = endpoint(
    "jp-subsidiary",
    operator={"name": "Cloud Japan GK", "parent": "Cloud Inc", "parent_country": "US"},
    certifications=["ISMAP"],
)
# A US company running servers in Tokyo: a foreign third party under APPI.
US_IN_TOKYO = endpoint("us-in-tokyo", operator={"name": "Hyperscale Inc", "country": "US"})
US_EAST = endpoint(
    "us-east",
    jurisdiction={"country": "US", "region": "us-east-1"},
    operator={"name": "Model Labs Inc", "country": "US"},
    data_terms={"retention_days": 30, "trains_on_data": True},
)
US_WITH_BASIS = endpoint(
    "us-with-basis",
    jurisdiction={"country": "US", "region": "us-west-2"},
    operator={"name": "Contract Inc", "country": "US"},
    data_terms={"legal_bases": ["appi:equivalent_measures", "gdpr:scc"]},
)
EU_FRANKFURT = endpoint(
    "eu-frankfurt",
    jurisdiction={"country": "DE", "region": "frankfurt"},
    operator={"name": "Rechenzentrum GmbH", "country": "DE"},
    data_terms={"legal_bases": ["appi:designated_country"], "zero_data_retention": True},
    confidential_computing=True,
)

ALL = (JP_DOMESTIC, JP_ONPREM, JP_SUBSIDIARY, US_IN_TOKYO, US_EAST, US_WITH_BASIS, EU_FRANKFURT)

CATALOGUE = Catalogue(ALL)


def compile_for(
    policy: dict[str, Any], *, home: str = "JP", catalogue: Catalogue = CATALOGUE
) -> CompiledPolicy:
    return compile_policy(PolicySpec.model_validate(policy), catalogue, home_country=home)


def decide(
    policy: CompiledPolicy,
    findings: dict[str, int] | None = None,
    *,
    declared: str | None = None,
    model: str = "m",
    catalogue: Catalogue = CATALOGUE,
    key_models: frozenset[str] | None = None,
) -> Decision:
    counts = findings or {}
    level = policy.classify(counts, declared)
    return policy.decide(
        model=model,
        routes=catalogue.routes(model),
        level=level,
        finding_counts=counts,
        key_models=key_models,
    )


def rules_excluding(decision: Decision, endpoint_id: str) -> set[str]:
    return {e.rule for e in decision.exclusions_of(endpoint_id)}
