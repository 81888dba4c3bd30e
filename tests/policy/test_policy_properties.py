"""Properties of every decision, over random catalogues, random policies and random requests.

The oracle below re-reads each rule's resolved constraints and checks them against the endpoint's
facts directly, independently of the compiler's precomputed bit masks.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from sekisho.errors import ConfigError
from sekisho.policy.compiler import CompiledPolicy, compile_policy
from sekisho.policy.packs import available_packs
from sekisho.policy.spec import KNOWN_FINDING_TYPES, Constraints, PolicySpec
from sekisho.routing.catalogue import Catalogue, Endpoint
from sekisho.types import UNINSPECTED_TYPES, Action, Level

COUNTRIES = ["JP", "US", "DE", "GB", "SG"]
OPERATORS = ["Alpha KK", "Beta Inc", "Gamma GmbH", "Delta Ltd"]
CERTS = ["ISMAP", "ISO27001", "SOC2", "C5"]
BASES = ["appi:consent", "appi:equivalent_measures", "appi:designated_country", "gdpr:scc"]
DEPLOYMENTS = ["on_premises", "private_cloud", "public_cloud"]
TYPES = sorted(KNOWN_FINDING_TYPES)
READABLE_TYPES = sorted(KNOWN_FINDING_TYPES - set(UNINSPECTED_TYPES))
LEVELS = ["public", "internal", "confidential", "restricted", "機密性1", "機密性2", "機密性3"]


@st.composite
def endpoints(draw: st.DrawFn, index: int) -> Endpoint:
    retention = draw(st.sampled_from([0, 0, 7, 30]))
    parent = draw(st.sampled_from([None, *OPERATORS]))
    data: dict[str, Any] = {
        "id": f"ep{index}",
        "family": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "models": [{"id": draw(st.sampled_from(["m", "m", "m", "n"]))}],
        "jurisdiction": {
            "country": draw(st.sampled_from(COUNTRIES)),
            "region": draw(st.sampled_from(["a", "b"])),
        },
        "operator": {
            "name": draw(st.sampled_from(OPERATORS)),
            "country": draw(st.sampled_from(COUNTRIES)),
            "parent": parent,
            "parent_country": draw(st.sampled_from(COUNTRIES)) if parent else None,
        },
        "data_terms": {
            "retention_days": retention,
            "trains_on_data": draw(st.booleans()),
            "zero_data_retention": retention == 0 and draw(st.booleans()),
            "legal_bases": draw(st.lists(st.sampled_from(BASES), unique=True, max_size=2)),
        },
        "certifications": draw(st.lists(st.sampled_from(CERTS), unique=True, max_size=3)),
        "deployment": draw(st.sampled_from(DEPLOYMENTS)),
        "confidential_computing": draw(st.booleans()),
    }
    return Endpoint.model_validate(data)


@st.composite
def catalogues(draw: st.DrawFn) -> Catalogue:
    size = draw(st.integers(min_value=1, max_value=8))
    return Catalogue([draw(endpoints(i)) for i in range(size)])


def _sublist(values: list[str], max_size: int = 3) -> st.SearchStrategy[list[str]]:
    if not values:
        return st.just([])
    return st.lists(st.sampled_from(values), unique=True, max_size=max_size)


@st.composite
def _allow_deny(draw: st.DrawFn, names: list[str]) -> dict[str, Any]:
    mode = draw(st.sampled_from(["allow", "deny", "both"]))
    allow = draw(_sublist(names)) if mode != "deny" else None
    rest = [n for n in names if allow is None or n not in allow]
    deny = (
        draw(st.lists(st.sampled_from(rest), unique=True, min_size=1))
        if rest and mode != "allow"
        else []
    )
    return {"allow": allow, "deny": deny}


FIELDS = [
    "jurisdictions",
    "operators",
    "operator_countries",
    "domestic_operator_only",
    "certifications",
    "certifications_any_of",
    "max_retention_days",
    "no_training",
    "zero_data_retention",
    "confidential_computing",
    "deployments",
    "foreign_data_centre",
    "foreign_operator",
    "endpoints",
    "any_of",
    "action",
]


@st.composite
def constraints(draw: st.DrawFn, catalogue: Catalogue, depth: int = 0) -> dict[str, Any]:
    """One or two conditions, so that a single wrong check is not hidden behind many others."""
    ids = sorted(catalogue.by_id)
    names = sorted({ep.operator.name for ep in catalogue.endpoints})
    fields = draw(
        st.lists(st.sampled_from(FIELDS[:-2] if depth else FIELDS), min_size=1, max_size=2)
    )
    c: dict[str, Any] = {}
    for name in fields:
        if name == "jurisdictions":
            # a region no endpoint is in is a config error (a typo), not a constraint
            regions = sorted(
                {
                    f"{ep.jurisdiction.country}/{ep.jurisdiction.region}"
                    for ep in catalogue.endpoints
                }
            )
            c[name] = draw(_sublist([*COUNTRIES, *regions], 4))
        elif name == "operators":
            c[name] = draw(_allow_deny(names))
        elif name == "operator_countries":
            c[name] = draw(_sublist(COUNTRIES, 4))
        elif name == "certifications":
            c[name] = draw(_sublist(CERTS, 2))
        elif name == "certifications_any_of":  # empty is a config error: one of none
            c[name] = draw(st.lists(st.sampled_from(CERTS), unique=True, min_size=1, max_size=2))
        elif name == "max_retention_days":
            c[name] = draw(st.sampled_from([0, 7, 30]))
        elif name == "deployments":
            c[name] = draw(_sublist(DEPLOYMENTS))
        elif name in ("foreign_data_centre", "foreign_operator"):
            c[name] = {
                "home": draw(st.none() | _sublist(COUNTRIES, 2)),
                "adequate_countries": draw(_sublist(COUNTRIES, 2)),
                "bases": draw(_sublist(BASES)),
            }
        elif name == "endpoints":
            c[name] = draw(_allow_deny(ids))
        elif name == "any_of":
            # an alternative that asks nothing is a config error (it would make any_of vacuous)
            asks = constraints(catalogue, depth=1).filter(
                lambda alt: bool(Constraints.model_validate(alt).model_dump(exclude_defaults=True))
            )
            c[name] = draw(st.lists(asks, min_size=1, max_size=3))
        elif name == "action":
            c[name] = draw(st.sampled_from(["allow", "redact", "pseudonymise", "block"]))
        else:
            c[name] = True
    return c


@st.composite
def policies(draw: st.DrawFn, catalogue: Catalogue) -> dict[str, Any]:
    levels = draw(
        st.lists(st.sampled_from(["public", "internal", "機密性2", "機密性3"]), unique=True)
    )
    rules = []
    for i in range(draw(st.integers(0, 2))):
        rule = {"id": f"r{i}", **draw(constraints(catalogue))}
        if draw(st.integers(0, 2)) == 0:
            rule["when"] = {
                "levels": draw(_sublist(LEVELS[:4], 2)),
                "findings": draw(_sublist(TYPES, 2)),
                "min_level": draw(st.sampled_from(LEVELS[:4])),
            }
        rules.append(rule)
    return {
        "extends": draw(
            st.lists(st.sampled_from(list(available_packs())), unique=True, max_size=1)
        ),
        "levels": {level: draw(constraints(catalogue)) for level in levels},
        "rules": rules,
        "classification": {
            "default": draw(st.sampled_from(LEVELS[:4])),
            "findings": draw(st.dictionaries(st.sampled_from(TYPES), st.sampled_from(LEVELS))),
            "actions": draw(  # content sekisho cannot read takes a level, never an action
                st.dictionaries(
                    st.sampled_from(READABLE_TYPES), st.sampled_from(["redact", "pseudonymise"])
                )
            ),
        },
        "prefer": {
            "endpoints": draw(_sublist(sorted(catalogue.by_id))),
            "domestic": draw(st.booleans()),
        },
    }


def _satisfies(c: dict[str, Any], ep: Endpoint, home: str) -> bool:
    """The oracle: does ``ep`` meet constraints ``c`` (a rule's resolved, canonical form)?"""
    j, op, terms = ep.jurisdiction, ep.operator, ep.data_terms
    names = {op.name.lower()} | ({op.parent.lower()} if op.parent else set())
    if c["jurisdictions"] is not None and not (
        j.country in c["jurisdictions"] or f"{j.country}/{j.region.lower()}" in c["jurisdictions"]
    ):
        return False
    if c["operators"] is not None:
        allow, deny = c["operators"]["allow"], c["operators"]["deny"]
        if names & {d.lower() for d in deny}:
            return False
        if allow is not None and not names & {a.lower() for a in allow}:
            return False
    unknown_parent = bool(op.parent) and op.parent_country is None  # not known to be allowed
    if c["operator_countries"] is not None and (
        unknown_parent or not op.countries <= set(c["operator_countries"])
    ):
        return False
    if c["domestic_operator_only"] and (unknown_parent or op.countries != {home}):
        return False
    if not set(c["certifications"]) <= set(ep.certifications):
        return False
    if c["certifications_any_of"] and not set(c["certifications_any_of"]) & set(ep.certifications):
        return False
    if c["max_retention_days"] is not None and terms.retention_days > c["max_retention_days"]:
        return False
    if c["no_training"] and terms.trains_on_data:
        return False
    if c["zero_data_retention"] and not terms.zero_data_retention:
        return False
    if c["confidential_computing"] and not ep.confidential_computing:
        return False
    if c["deployments"] is not None and ep.deployment not in c["deployments"]:
        return False
    for key, country in (("foreign_data_centre", j.country), ("foreign_operator", op.country)):
        t = c[key]
        if t is not None:
            at_home = set(t["home"] if t["home"] is not None else [home])
            ok = country in at_home | set(t["adequate_countries"])
            if not ok and not set(t["bases"]) & set(terms.legal_bases):
                return False
    if c["endpoints"] is not None:
        if ep.id in c["endpoints"]["deny"]:
            return False
        if c["endpoints"]["allow"] is not None and ep.id not in c["endpoints"]["allow"]:
            return False
    return c["any_of"] is None or any(_satisfies(alt, ep, home) for alt in c["any_of"])


def _applies(rule: dict[str, Any], level: Level, kinds: set[str]) -> bool:
    return level.label in rule["levels"] or bool(set(rule["findings"]) & kinds)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_decision_keeps_the_eligible_set_exactly_the_endpoints_meeting_every_rule(
    data: st.DataObject,
) -> None:
    catalogue = data.draw(catalogues())
    home = data.draw(st.sampled_from(COUNTRIES))
    spec = data.draw(policies(catalogue))
    try:
        policy: CompiledPolicy = compile_policy(
            PolicySpec.model_validate(spec), catalogue, home_country=home
        )
    except ConfigError:
        reject()  # contradictory by construction (e.g. domestic only but home not allowed)
    model = data.draw(st.sampled_from(["m", "m", "n"]))
    findings = data.draw(st.dictionaries(st.sampled_from(TYPES), st.integers(0, 3), max_size=4))
    declared = data.draw(st.none() | st.sampled_from([*LEVELS, "nonsense"]))
    key_models = data.draw(st.none() | st.frozensets(st.sampled_from(["m", "n"])))
    level = policy.classify(findings, declared)
    routes = catalogue.routes(model)
    decision = policy.decide(
        model=model, routes=routes, level=level, finding_counts=findings, key_models=key_models
    )

    kinds = {k for k, n in findings.items() if n > 0}
    applicable = [r for r in policy.canonical["rules"] if _applies(r, level, kinds)]
    candidate_ids = [r.endpoint.id for r in routes]
    eligible_ids = list(decision.eligible_ids)
    excluded_ids = {e.endpoint_id for e in decision.excluded}

    assert len(eligible_ids) == len(set(eligible_ids)), "no endpoint twice"
    assert set(eligible_ids) | excluded_ids == set(candidate_ids)
    assert not set(eligible_ids) & excluded_ids
    blocked = any(r["constraints"]["action"] == "block" for r in applicable)
    for route in routes:
        ep = route.endpoint
        meets = all(_satisfies(r["constraints"], ep, home) for r in applicable)
        meets = meets and (key_models is None or bool(key_models & {model, route.model.id}))
        assert (ep.id in eligible_ids) == (meets and not blocked), ep.id
        if ep.id in excluded_ids and not blocked:
            for exclusion in decision.exclusions_of(ep.id):
                if exclusion.rule.startswith("key/"):
                    continue
                rule = next(r for r in applicable if r["id"] == exclusion.rule)
                assert not _satisfies(rule["constraints"], ep, home), "no false reason"
    if decision.denied:
        assert decision.action is Action.BLOCK
        message = decision.refusal_message()
        assert level.label in message and policy.digest in message
    else:
        assert level is not None and decision.eligible
    again = policy.decide(
        model=model, routes=routes, level=level, finding_counts=findings, key_models=key_models
    )
    assert again == decision
