"""Compiling a tenant's policy: merging with packs, overriding, validating, digesting, deciding."""

from __future__ import annotations

from typing import Any

import pytest
from policy_fixtures import (
    CATALOGUE,
    JP_DOMESTIC,
    JP_SUBSIDIARY,
    US_IN_TOKYO,
    compile_for,
    decide,
    endpoint,
    rules_excluding,
)
from pydantic import ValidationError

from sekisho.errors import ConfigError
from sekisho.policy.compiler import compile_policy
from sekisho.policy.decision import NO_ELIGIBLE_ENDPOINT
from sekisho.policy.spec import PolicySpec
from sekisho.routing.catalogue import Catalogue
from sekisho.types import Action, Level

# -- merge and override semantics ---------------------------------------------------------------


def test_tenant_rules_only_add_restrictions_to_the_packs() -> None:
    policy = compile_for(
        {"extends": ["jp-appi"], "levels": {"confidential": {"deployments": ["on_premises"]}}}
    )
    d = decide(policy, {"PERSON": 1})
    assert d.eligible_ids == ("jp-onprem",)
    assert "jp-appi/foreign-operator" in rules_excluding(d, "us-in-tokyo")
    assert "tenant/levels.confidential" in rules_excluding(d, "us-in-tokyo")


def test_override_replaces_only_the_fields_it_names_and_records_its_reason() -> None:
    policy = compile_for(
        {
            "extends": ["jp-appi"],
            "overrides": {
                "jp-appi/foreign-operator": {
                    "reason": "contract with equivalent measures only",
                    "foreign_operator": {"bases": ["appi:equivalent_measures"]},
                }
            },
        }
    )
    rule = policy.rule("jp-appi/foreign-operator")
    assert "contract with equivalent measures only" in rule.origin
    assert rule.levels == frozenset({Level.RESTRICTED})  # `when` kept from the pack
    d = decide(policy, {"PERSON": 1})
    assert "us-with-basis" in d.eligible_ids  # records appi:equivalent_measures
    assert "eu-frankfurt" not in d.eligible_ids  # only appi:designated_country: now not enough


def test_override_can_disable_a_pack_rule() -> None:
    policy = compile_for(
        {
            "extends": ["jp-appi"],
            "overrides": {"jp-appi/provider-own-use": {"reason": "no", "disabled": True}},
        }
    )
    assert "jp-appi/provider-own-use" not in {r.id for r in policy.rules}


def test_override_can_change_when_a_rule_applies() -> None:
    policy = compile_for(
        {
            "extends": ["jp-appi"],
            "overrides": {
                "jp-appi/special-care-domestic": {
                    "reason": "our detector for 病歴",
                    "when": {"findings": ["CUSTOM"]},
                }
            },
        }
    )
    assert "us-with-basis" in decide(policy, {"HEALTH_INSURANCE_JP": 1}).eligible_ids
    assert "us-with-basis" not in decide(policy, {"CUSTOM": 1}).eligible_ids


def test_packs_merge_finding_levels_by_the_highest_and_the_tenant_replaces_them() -> None:
    both = compile_for({"extends": ["jp-appi", "jp-mynumber"]})
    assert both.classify({"MY_NUMBER": 1}, None) is Level.RESTRICTED
    reversed_order = compile_for({"extends": ["jp-mynumber", "jp-appi"]})
    assert reversed_order.classify({"MY_NUMBER": 1}, None) is Level.RESTRICTED
    lowered = compile_for(
        {"extends": ["jp-appi"], "classification": {"findings": {"PERSON": "internal"}}}
    )
    assert lowered.classify({"PERSON": 1}, "public") is Level.INTERNAL


def test_default_level_is_the_higher_of_tenant_default_and_policy_default() -> None:
    spec = PolicySpec.model_validate({"classification": {"default": "public"}})
    assert compile_policy(spec, CATALOGUE, home_country="JP").default_level is Level.PUBLIC
    raised = compile_policy(spec, CATALOGUE, home_country="JP", default_classification="機密性2")
    assert raised.default_level is Level.CONFIDENTIAL


def test_per_type_actions_redact_and_pseudonymise_only_the_types_present() -> None:
    policy = compile_for(
        {"classification": {"actions": {"EMAIL": "redact", "PERSON": "pseudonymise"}}}
    )
    d = decide(policy, {"EMAIL": 2, "PERSON": 1})
    assert d.action is Action.REDACT
    assert d.redact_types == frozenset({"EMAIL"})
    assert d.pseudonymise_types == frozenset({"PERSON"})
    only_person = decide(policy, {"PERSON": 1})
    assert only_person.action is Action.PSEUDONYMISE
    assert decide(policy, {}).action is Action.ALLOW


def test_level_action_applies_to_every_finding_without_its_own_action() -> None:
    policy = compile_for(
        {
            "levels": {"confidential": {"action": "redact"}},
            "classification": {
                "findings": {"EMAIL": "confidential", "PHONE_JP": "confidential"},
                "actions": {"PHONE_JP": "pseudonymise"},
            },
        }
    )
    d = decide(policy, {"EMAIL": 1, "PHONE_JP": 1})
    assert d.redact_types == frozenset({"EMAIL"})
    assert d.pseudonymise_types == frozenset({"PHONE_JP"})


def test_block_action_excludes_every_candidate_and_names_the_rule() -> None:
    policy = compile_for({"levels": {"機密性3": {"action": "block"}}})
    d = decide(policy, declared="restricted")
    assert d.action is Action.BLOCK and d.rule == "tenant/levels.restricted"
    assert d.eligible == ()
    assert {e.endpoint_id for e in d.excluded} == {ep.id for ep in CATALOGUE.endpoints}
    message = d.refusal_message()
    assert "restricted" in message and "tenant/levels.restricted" in message


# -- preference and model lists -----------------------------------------------------------------


def test_preferred_endpoints_come_first_then_domestic_then_catalogue_order() -> None:
    policy = compile_for({"prefer": {"endpoints": ["eu-frankfurt", "us-east"], "domestic": True}})
    assert decide(policy, declared="public").eligible_ids == (
        "eu-frankfurt",
        "us-east",
        "jp-domestic",
        "jp-onprem",
        "jp-subsidiary",
        "us-in-tokyo",
        "us-with-basis",
    )


def test_a_japanese_subsidiary_of_a_foreign_group_is_not_preferred_as_domestic() -> None:
    """prefer.domestic counts as domestic_operator_only does: the operator's parent too. The
    example config's Japan region of a global cloud took half the traffic meant for the
    domestic operator."""
    catalogue = Catalogue([JP_SUBSIDIARY, US_IN_TOKYO, JP_DOMESTIC])
    policy = compile_for({"prefer": {"domestic": True}}, catalogue=catalogue)
    d = decide(policy, declared="public", catalogue=catalogue)
    assert d.eligible_ids == ("jp-domestic", "jp-subsidiary", "us-in-tokyo")


def test_tenant_model_allow_list_excludes_other_models() -> None:
    other = endpoint("jp-other", models=[{"id": "other"}])
    catalogue = Catalogue([*CATALOGUE.endpoints, other])
    policy = compile_for({"models": ["alias-m"]}, catalogue=catalogue)
    # "m" and "alias-m" name the same model: allowed by either of its names
    assert decide(policy, model="m", catalogue=catalogue).eligible_ids
    assert decide(policy, model="alias-m", catalogue=catalogue).eligible_ids
    d = decide(policy, model="other", catalogue=catalogue)
    assert d.eligible == ()
    assert [(e.endpoint_id, e.rule, e.fact) for e in d.excluded] == [
        ("jp-other", "tenant/models", "model=other")
    ]


def test_key_model_allow_list_excludes_models_the_key_may_not_use() -> None:
    d = decide(compile_for({}), key_models=frozenset({"other"}))
    assert d.eligible == ()
    assert d.rule == NO_ELIGIBLE_ENDPOINT
    assert all(e.rule == "key/models" for e in d.excluded)


# -- classification, failing closed -------------------------------------------------------------


@pytest.mark.parametrize("declared", ["secret", "", "機密性4", "topsecret"])
def test_unparseable_declared_classification_counts_as_restricted(declared: str) -> None:
    assert compile_for({}).classify({}, declared) is Level.RESTRICTED


def test_classifier_failure_counts_as_restricted() -> None:
    assert compile_for({}).classify({}, "public", failed=True) is Level.RESTRICTED


def test_level_is_the_highest_of_declared_default_and_findings() -> None:
    policy = compile_for(
        {"classification": {"default": "public", "findings": {"EMAIL": "internal"}}}
    )
    assert policy.classify({}, None) is Level.PUBLIC
    assert policy.classify({"EMAIL": 1}, None) is Level.INTERNAL
    assert policy.classify({"EMAIL": 1}, "機密性2") is Level.CONFIDENTIAL
    assert policy.classify({"EMAIL": 0}, None) is Level.PUBLIC
    explained = policy.explain_level({"EMAIL": 1}, "public")
    assert explained.source.startswith("finding EMAIL")


# -- digest -------------------------------------------------------------------------------------


def test_same_policy_has_the_same_digest() -> None:
    spec: dict[str, Any] = {"extends": ["jp-appi"], "levels": {"機密性2": {"no_training": True}}}
    same: dict[str, Any] = {
        "levels": {"confidential": {"no_training": True}},
        "extends": ["jp-appi"],
    }
    assert compile_for(spec).digest == compile_for(spec).digest == compile_for(same).digest
    assert compile_for(spec).digest.startswith("sha256:")


@pytest.mark.parametrize(
    "change",
    [
        {"extends": ["jp-appi", "jp-mynumber"]},
        {"extends": ["jp-appi"], "levels": {"confidential": {"no_training": False}}},
        {"extends": ["jp-appi"], "levels": {"restricted": {"no_training": True}}},
        {
            "extends": ["jp-appi"],
            "levels": {"confidential": {"no_training": True}},
            "models": ["m"],
        },
        {
            "extends": ["jp-appi"],
            "levels": {"confidential": {"no_training": True}},
            "prefer": {"domestic": True},
        },
        {
            "extends": ["jp-appi"],
            "levels": {"confidential": {"no_training": True}},
            "classification": {"actions": {"EMAIL": "redact"}},
        },
    ],
)
def test_any_change_to_the_policy_changes_its_digest(change: dict[str, Any]) -> None:
    base = compile_for({"extends": ["jp-appi"], "levels": {"confidential": {"no_training": True}}})
    assert compile_for(change).digest != base.digest


def test_digest_depends_on_the_home_country() -> None:
    assert compile_for({}, home="JP").digest != compile_for({}, home="DE").digest


# -- invalid policies ---------------------------------------------------------------------------


def _problems(policy: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        compile_policy(
            PolicySpec.model_validate(policy),
            CATALOGUE,
            home_country="JP",
            source="sekisho.yaml",
            path="tenants.acme.policy",
        )
    assert all(p.file == "sekisho.yaml" for p in caught.value.problems)
    return [(p.path, p.reason) for p in caught.value.problems]


def test_unknown_pack_is_refused_naming_the_known_ones() -> None:
    ((path, reason),) = _problems({"extends": ["jp-api"]})
    assert path == "tenants.acme.policy.extends[0]"
    assert "jp-appi" in reason


def test_unknown_endpoint_ids_are_refused_with_their_key_path() -> None:
    problems = _problems(
        {
            "levels": {"機密性2": {"endpoints": {"deny": ["nope"]}}},
            "prefer": {"endpoints": ["gone"]},
        }
    )
    paths = {p for p, _ in problems}
    assert paths == {
        "tenants.acme.policy.levels.機密性2.endpoints.deny[0]",
        "tenants.acme.policy.prefer.endpoints[0]",
    }


def test_unknown_operator_and_model_are_refused() -> None:
    problems = _problems(
        {"models": ["gpt-9"], "rules": [{"id": "x", "operators": {"deny": ["Evil"]}}]}
    )
    assert {p for p, _ in problems} == {
        "tenants.acme.policy.models[0]",
        "tenants.acme.policy.rules[0](x).operators.deny[0]",
    }


def test_override_of_an_unknown_rule_or_unextended_pack_is_refused() -> None:
    problems = _problems(
        {
            "extends": ["jp-appi"],
            "overrides": {
                "jp-appi/no-such-rule": {"reason": "x", "disabled": True},
                "eu-gdpr/transfer-operator": {"reason": "x", "disabled": True},
            },
        }
    )
    reasons = dict(problems)
    assert (
        "jp-appi/foreign-operator" in reasons["tenants.acme.policy.overrides.jp-appi/no-such-rule"]
    )
    assert (
        "extends does not list"
        in reasons["tenants.acme.policy.overrides.eu-gdpr/transfer-operator"]
    )


def test_contradictory_operator_rules_are_refused() -> None:
    ((path, reason),) = _problems(
        {"levels": {"restricted": {"domestic_operator_only": True, "operator_countries": ["US"]}}}
    )
    assert path == "tenants.acme.policy.levels.restricted.operator_countries"
    assert "domestic_operator_only" in reason


def test_a_region_no_endpoint_is_in_is_named_like_an_unknown_endpoint() -> None:
    """`JP/tokio` quietly allowed nothing at that level: every request at it was refused."""
    problems = _problems(
        {"levels": {"restricted": {"jurisdictions": ["JP", "JP/tokio", "DE/Frankfurt"]}}}
    )
    assert problems == [
        (
            "tenants.acme.policy.levels.restricted.jurisdictions[1]",
            "no endpoint is in JP/tokio; jurisdictions in the catalogue: DE/frankfurt, "
            "JP/tokyo, US/us-east-1, US/us-west-2",
        )
    ]


def test_rule_that_applies_to_nothing_is_refused() -> None:
    ((path, _),) = _problems({"rules": [{"id": "empty", "when": {}, "no_training": True}]})
    assert path == "tenants.acme.policy.rules[0](empty).when"


@pytest.mark.parametrize(
    ("policy", "words"),
    [
        ({"levels": {"機密性2": {}, "confidential": {}}}, "same level"),
        ({"levels": {"secret": {}}}, "unknown classification level"),
        ({"levels": {"public": {"certifications": ["ISMAPP"]}}}, "unknown certification"),
        ({"levels": {"public": {"operators": {"allow": ["A"], "deny": ["a"]}}}}, "both allowed"),
        ({"levels": {"public": {"jurisdictions": ["Japan"]}}}, "not a jurisdiction"),
        ({"levels": {"public": {"jurisdictions": ["UK"]}}}, "the United Kingdom is GB"),
        ({"levels": {"public": {"jurisdictions": ["XX/tokyo"]}}}, "not an ISO 3166-1 alpha-2"),
        ({"classification": {"findings": {"my_number": "restricted"}}}, "finding type"),
        ({"extends": ["jp-appi", "jp-appi"]}, "twice"),
        ({"overrides": {"jp-appi/x": {"disabled": True}}}, "reason"),
        ({"levels": {"public": {"max_retention_days": -1}}}, "greater than or equal"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_malformed_policy_is_refused_by_the_spec(policy: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        PolicySpec.model_validate(policy)
    assert words in str(caught.value)


def test_japanese_level_aliases_are_accepted_as_level_keys() -> None:
    spec = PolicySpec.model_validate({"levels": {"機密性1": {}, "機密性2": {}, "機密性3": {}}})
    policy = compile_policy(spec, CATALOGUE, home_country="JP")
    assert [r.id for r in policy.rules] == [
        "tenant/levels.public",
        "tenant/levels.confidential",
        "tenant/levels.restricted",
    ]


# -- memoisation --------------------------------------------------------------------------------


def test_memoised_decision_carries_each_request_s_own_finding_counts() -> None:
    policy = compile_for({"extends": ["jp-appi"]})
    first = decide(policy, {"PERSON": 1})
    second = decide(policy, {"PERSON": 7})
    assert first.eligible == second.eligible
    assert dict(first.finding_types) == {"PERSON": 1}
    assert dict(second.finding_types) == {"PERSON": 7}


# -- each condition, on its own -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "excluded", "fact"),
    [
        ({"jurisdictions": ["JP", "DE/frankfurt"]}, {"us-east", "us-with-basis"}, "jurisdiction="),
        ({"jurisdictions": ["SG"]}, {ep.id for ep in CATALOGUE.endpoints}, "jurisdiction="),
        ({"operators": {"deny": ["Cloud Inc"]}}, {"jp-subsidiary"}, "operator.parent=Cloud Inc"),
        (
            {"operators": {"allow": ["Tenant IT", "Rechenzentrum GmbH"]}},
            {"jp-domestic", "jp-subsidiary", "us-in-tokyo", "us-east", "us-with-basis"},
            "operator=",
        ),
        (
            {"operator_countries": ["JP", "DE"]},
            {"jp-subsidiary", "us-in-tokyo", "us-east", "us-with-basis"},
            "operator.",
        ),
        (
            {"domestic_operator_only": True},
            {"jp-subsidiary", "us-in-tokyo", "us-east", "us-with-basis", "eu-frankfurt"},
            "operator.",
        ),
        (
            {"certifications": ["ISMAP"]},
            {"jp-onprem", "us-in-tokyo", "us-east", "us-with-basis", "eu-frankfurt"},
            "needs ISMAP",
        ),
        (
            {"certifications_any_of": ["ISMAP", "ISMAP-LIU"]},
            {"jp-onprem", "us-in-tokyo", "us-east", "us-with-basis", "eu-frankfurt"},
            "needs one of ISMAP, ISMAP-LIU",
        ),
        ({"max_retention_days": 29}, {"us-east"}, "data_terms.retention_days=30"),
        ({"no_training": True}, {"us-east"}, "data_terms.trains_on_data=true"),
        (
            {"zero_data_retention": True},
            {ep.id for ep in CATALOGUE.endpoints} - {"eu-frankfurt"},
            "data_terms.zero_data_retention=false",
        ),
        (
            {"confidential_computing": True},
            {ep.id for ep in CATALOGUE.endpoints} - {"eu-frankfurt"},
            "confidential_computing=false",
        ),
        (
            {"deployments": ["on_premises"]},
            {ep.id for ep in CATALOGUE.endpoints} - {"jp-onprem"},
            "deployment=public_cloud",
        ),
        ({"endpoints": {"deny": ["us-east"]}}, {"us-east"}, "endpoint.id=us-east (denied)"),
        (
            {"endpoints": {"allow": ["jp-onprem"]}},
            {ep.id for ep in CATALOGUE.endpoints} - {"jp-onprem"},
            "(not explicitly allowed)",
        ),
        (
            {"any_of": [{"deployments": ["on_premises"]}, {"confidential_computing": True}]},
            {ep.id for ep in CATALOGUE.endpoints} - {"jp-onprem", "eu-frankfurt"},
            "(deployment=public_cloud) | (confidential_computing=false)",
        ),
    ],
)
def test_each_condition_excludes_exactly_the_endpoints_lacking_its_fact(
    condition: dict[str, Any], excluded: set[str], fact: str
) -> None:
    d = decide(compile_for({"levels": {"internal": condition}}))
    assert {e.endpoint_id for e in d.excluded} == excluded
    assert all(e.rule == "tenant/levels.internal" and fact in e.fact for e in d.excluded)
    assert set(d.eligible_ids) == {ep.id for ep in CATALOGUE.endpoints} - excluded


def test_conditions_apply_only_at_their_own_level() -> None:
    policy = compile_for({"levels": {"restricted": {"deployments": ["on_premises"]}}})
    assert len(decide(policy, declared="confidential").eligible) == len(CATALOGUE.endpoints)
    assert decide(policy, declared="restricted").eligible_ids == ("jp-onprem",)


def test_rule_applies_at_its_levels_or_when_its_findings_are_present() -> None:
    policy = compile_for(
        {
            "rules": [
                {
                    "id": "secrets-stay-on-premises",
                    "when": {"levels": ["restricted"], "findings": ["SECRET"]},
                    "deployments": ["on_premises"],
                }
            ]
        }
    )
    assert len(decide(policy).eligible) == len(CATALOGUE.endpoints)
    assert decide(policy, {"SECRET": 1}).eligible_ids == ("jp-onprem",)
    assert decide(policy, declared="機密性3").eligible_ids == ("jp-onprem",)


def test_refusal_message_names_level_types_and_every_endpoint_s_reason_but_no_values() -> None:
    d = decide(compile_for({"extends": ["jp-appi", "jp-mynumber"]}), {"MY_NUMBER": 1, "EMAIL": 2})
    message = d.refusal_message()
    assert message.startswith(
        "Request classified restricted (機密性3); found: EMAIL×2, MY_NUMBER×1."
    )
    for ep in CATALOGUE.endpoints:
        assert (
            f"{ep.id}: jp-mynumber/no-model-endpoint" in message or f"{ep.id}: jp-appi/" in message
        )
    assert d.policy_digest in message
    assert "@" not in message  # only type names, rule ids and endpoint facts


@pytest.mark.parametrize(
    "constraint", [{"domestic_operator_only": True}, {"operator_countries": ["JP"]}]
)
def test_an_operator_whose_parents_country_is_not_given_is_not_domestic(
    constraint: dict[str, Any],
) -> None:
    """A parent named without its country passed 'operator and parent incorporated at home'
    (an audit sent 機密性3 requests to such an endpoint): unknown is not allowed."""
    mystery = endpoint("mystery", operator={"name": "Mystery KK", "parent": "Mystery Holdings"})
    known = endpoint(
        "known", operator={"name": "Known KK", "parent": "Known HD", "parent_country": "JP"}
    )
    catalogue = Catalogue(endpoints=[mystery, known])
    policy = compile_for(
        {"classification": {"default": "internal"}, "levels": {"internal": constraint}},
        catalogue=catalogue,
    )
    decision = decide(policy, catalogue=catalogue)
    assert list(decision.eligible_ids) == ["known"]
    [why] = [e.fact for e in decision.exclusions_of("mystery")]
    assert "operator.parent_country=unknown" in why
