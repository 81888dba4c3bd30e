"""The built-in packs, one test per obligation they implement."""

from __future__ import annotations

import pytest
from policy_fixtures import CATALOGUE, compile_for, decide, endpoint, rules_excluding

from sekisho.policy.packs import available_packs, load_pack
from sekisho.routing.catalogue import Catalogue
from sekisho.types import Action, Level

APPI = compile_for({"extends": ["jp-appi"]})


def test_every_builtin_pack_loads_and_documents_each_rule() -> None:
    assert available_packs() == ("eu-gdpr", "jp-appi", "jp-gov-genai", "jp-mynumber")
    for name in available_packs():
        pack = load_pack(name)
        assert pack.rules, name
        for rule in pack.rules:
            assert rule.obligation.strip() and rule.source.strip(), f"{name}/{rule.id}"


# -- jp-appi ------------------------------------------------------------------------------------


def test_appi_personal_data_makes_a_request_confidential() -> None:
    assert APPI.classify({"PERSON": 1}, None) is Level.CONFIDENTIAL
    assert APPI.classify({"PASSPORT_JP": 1}, "public") is Level.CONFIDENTIAL


def test_appi_personal_data_may_go_to_a_japanese_operator_in_japan() -> None:
    d = decide(APPI, {"PERSON": 1})
    assert "jp-domestic" in d.eligible_ids
    assert d.action is Action.ALLOW


def test_appi_foreign_data_centre_without_a_recorded_basis_is_excluded() -> None:
    d = decide(APPI, {"PHONE_JP": 1})
    assert "us-east" not in d.eligible_ids
    facts = {e.fact for e in d.exclusions_of("us-east") if e.rule == "jp-appi/foreign-data-centre"}
    assert any(f.startswith("jurisdiction.country=US") for f in facts)


def test_appi_foreign_operator_with_servers_in_japan_is_still_a_foreign_third_party() -> None:
    d = decide(APPI, {"PERSON": 1})
    assert "us-in-tokyo" not in d.eligible_ids
    (exclusion,) = d.exclusions_of("us-in-tokyo")
    assert exclusion.rule == "jp-appi/foreign-operator"
    assert exclusion.fact.startswith("operator.country=US")


def test_appi_japanese_subsidiary_of_a_foreign_group_is_a_domestic_recipient() -> None:
    assert "jp-subsidiary" in decide(APPI, {"PERSON": 1}).eligible_ids


def test_appi_transfer_abroad_is_allowed_where_the_endpoint_records_an_art28_basis() -> None:
    d = decide(APPI, {"EMAIL": 1})
    assert "us-with-basis" in d.eligible_ids  # appi:equivalent_measures
    assert "eu-frankfurt" in d.eligible_ids  # in Germany: a PPC-designated country


def test_appi_designated_country_follows_where_the_recipient_is_not_a_recorded_claim() -> None:
    # The PPC designates the EEA and the UK (平成31年個人情報保護委員会告示第1号): a recipient
    # there needs no recorded basis, and claiming the designation elsewhere is no basis at all.
    claims_designation = endpoint(
        "us-claims-designation",
        jurisdiction={"country": "US", "region": "us-east-1"},
        operator={"name": "Claims Inc", "country": "US"},
        data_terms={"legal_bases": ["appi:designated_country"]},
    )
    in_ireland = endpoint(
        "ie-dublin",
        jurisdiction={"country": "IE", "region": "dublin"},
        operator={"name": "Dublin Compute Ltd", "country": "IE"},
    )
    in_britain = endpoint(
        "gb-london",
        jurisdiction={"country": "GB", "region": "london"},
        operator={"name": "London Compute Ltd", "country": "GB"},
    )
    catalogue = Catalogue([claims_designation, in_ireland, in_britain])
    policy = compile_for({"extends": ["jp-appi"]}, catalogue=catalogue)
    d = decide(policy, {"PERSON": 1}, catalogue=catalogue)
    assert d.eligible_ids == ("ie-dublin", "gb-london")
    assert rules_excluding(d, "us-claims-designation") == {
        "jp-appi/foreign-data-centre",
        "jp-appi/foreign-operator",
    }


def test_appi_provider_that_trains_on_prompts_is_not_an_entrustee() -> None:
    trains = endpoint("jp-trains", data_terms={"trains_on_data": True})
    catalogue = Catalogue([trains])
    policy = compile_for({"extends": ["jp-appi"]}, catalogue=catalogue)
    d = decide(policy, {"PERSON": 1}, catalogue=catalogue)
    assert d.eligible == ()
    assert rules_excluding(d, "jp-trains") == {"jp-appi/provider-own-use"}
    assert d.exclusions_of("jp-trains")[0].fact == "data_terms.trains_on_data=true"


def test_appi_special_care_data_stays_domestic_even_with_a_transfer_basis() -> None:
    d = decide(APPI, {"HEALTH_INSURANCE_JP": 1})
    assert set(d.eligible_ids) == {"jp-domestic", "jp-onprem"}
    assert "jp-appi/special-care-domestic" in rules_excluding(d, "us-with-basis")
    assert "jp-appi/special-care-domestic" in rules_excluding(d, "jp-subsidiary")


def test_appi_rules_apply_to_restricted_requests_without_findings_failing_closed() -> None:
    d = decide(APPI, declared="not-a-level")
    assert d.level is Level.RESTRICTED
    assert "us-in-tokyo" not in d.eligible_ids
    assert "us-east" not in d.eligible_ids


def test_appi_does_not_restrict_requests_without_personal_data() -> None:
    d = decide(APPI, {"CORPORATE_NUMBER": 1})
    assert d.eligible_ids == tuple(ep.id for ep in CATALOGUE.endpoints)


# -- jp-mynumber --------------------------------------------------------------------------------

MYNUMBER = compile_for({"extends": ["jp-appi", "jp-mynumber"]})


def test_my_number_makes_a_request_restricted() -> None:
    assert MYNUMBER.classify({"MY_NUMBER": 1}, "public") is Level.RESTRICTED


def test_my_number_reaches_no_model_endpoint_unless_explicitly_allowed() -> None:
    d = decide(MYNUMBER, {"MY_NUMBER": 1})
    assert d.eligible == ()
    assert d.denied and d.action is Action.BLOCK
    for ep in CATALOGUE.endpoints:
        assert "jp-mynumber/no-model-endpoint" in rules_excluding(d, ep.id)


def test_my_number_reaches_only_the_endpoints_a_tenant_entrusted() -> None:
    policy = compile_for(
        {
            "extends": ["jp-appi", "jp-mynumber"],
            "overrides": {
                "jp-mynumber/no-model-endpoint": {
                    "reason": "on-premises model entrusted with 個人番号関係事務",
                    "endpoints": {"allow": ["jp-onprem", "us-east"]},
                }
            },
        }
    )
    d = decide(policy, {"MY_NUMBER": 1})
    # us-east is allowed by the override but jp-appi still keeps the number away from it.
    assert d.eligible_ids == ("jp-onprem",)
    assert "jp-appi/foreign-operator" in rules_excluding(d, "us-east")


def test_my_number_is_pseudonymised_before_storage() -> None:
    d = decide(MYNUMBER, {"MY_NUMBER": 1, "PERSON": 1})
    assert d.store_pseudonymised_types == frozenset({"MY_NUMBER"})
    assert decide(MYNUMBER, {"PERSON": 1}).store_pseudonymised_types == frozenset()


# -- jp-gov-genai -------------------------------------------------------------------------------

GOV = compile_for({"extends": ["jp-gov-genai"]})


@pytest.mark.parametrize("declared", ["機密性2", "confidential", "internal"])
def test_gov_kimitsu2_goes_only_to_ismap_listed_services_or_the_body_s_own_servers(
    declared: str,
) -> None:
    d = decide(GOV, declared=declared)
    # ISMAP lists cloud services; the body's own (on-premises) servers are not one
    assert set(d.eligible_ids) == {"jp-domestic", "jp-onprem", "jp-subsidiary"}
    assert any(
        e.rule == "jp-gov-genai/kimitsu2-ismap" and "needs ISMAP" in e.fact
        for e in d.exclusions_of("eu-frankfurt")
    )


# A Japanese operator's public cloud in Japan that is not on the ISMAP list.
JP_UNLISTED = endpoint("jp-unlisted", operator={"name": "Unlisted Cloud KK"})


def test_gov_kimitsu3_cloud_of_a_domestic_operator_still_needs_ismap() -> None:
    catalogue = Catalogue([*CATALOGUE.endpoints, JP_UNLISTED])
    gov = compile_for({"extends": ["jp-gov-genai"]}, catalogue=catalogue)
    d = decide(gov, declared="機密性3", catalogue=catalogue)
    assert "jp-unlisted" not in d.eligible_ids
    (exclusion,) = d.exclusions_of("jp-unlisted")
    assert exclusion.rule == "jp-gov-genai/kimitsu3-on-premises-or-domestic"
    assert "needs ISMAP" in exclusion.fact


def test_gov_a_higher_level_never_reaches_an_endpoint_a_lower_level_may_not() -> None:
    catalogue = Catalogue([*CATALOGUE.endpoints, JP_UNLISTED])
    gov = compile_for({"extends": ["jp-gov-genai"]}, catalogue=catalogue)
    eligible = [
        set(decide(gov, declared=level, catalogue=catalogue).eligible_ids)
        for level in ("機密性1", "機密性2", "機密性3")
    ]
    assert eligible[2] <= eligible[1] <= eligible[0]


def test_gov_kimitsu3_goes_only_on_premises_or_to_a_domestic_operator_in_japan() -> None:
    d = decide(GOV, declared="機密性3")
    assert set(d.eligible_ids) == {"jp-domestic", "jp-onprem"}
    # the subsidiary's parent is American: not a domestic operator for 機密性3
    (exclusion,) = d.exclusions_of("jp-subsidiary")
    assert exclusion.rule == "jp-gov-genai/kimitsu3-on-premises-or-domestic"
    assert "operator.parent_country=US" in exclusion.fact


def test_gov_services_that_train_on_inputs_are_excluded_at_every_level() -> None:
    public_by_default = compile_for(
        {"extends": ["jp-gov-genai"], "classification": {"default": "機密性1"}}
    )
    d = decide(public_by_default, declared="機密性1")
    assert d.level is Level.PUBLIC
    assert "us-east" not in d.eligible_ids
    assert rules_excluding(d, "us-east") == {"jp-gov-genai/no-training"}


def test_gov_confidential_label_makes_a_request_kimitsu2() -> None:
    assert GOV.classify({"CONFIDENTIAL_LABEL": 1}, "機密性1") is Level.CONFIDENTIAL


# -- eu-gdpr ------------------------------------------------------------------------------------

GDPR = compile_for({"extends": ["eu-gdpr"]}, home="DE")


def test_gdpr_personal_data_may_stay_in_the_eea() -> None:
    assert "eu-frankfurt" in decide(GDPR, {"EMAIL": 1}).eligible_ids


def test_gdpr_adequate_country_needs_no_transfer_tool() -> None:
    assert "jp-domestic" in decide(GDPR, {"EMAIL": 1}).eligible_ids


def test_gdpr_third_country_needs_scc_bcr_or_adequacy() -> None:
    d = decide(GDPR, {"IBAN": 1})
    assert "us-with-basis" in d.eligible_ids  # records gdpr:scc
    assert "eu-gdpr/transfer-data-centre" in rules_excluding(d, "us-east")


def test_gdpr_recipient_established_outside_the_eea_is_a_transfer_wherever_its_servers_are() -> (
    None
):
    d = decide(GDPR, {"PERSON": 1})
    assert rules_excluding(d, "us-in-tokyo") == {"eu-gdpr/transfer-operator"}


def test_gdpr_provider_that_trains_on_prompts_is_not_a_processor() -> None:
    d = decide(GDPR, {"PERSON": 1})
    assert "eu-gdpr/processor-own-use" in rules_excluding(d, "us-east")


def test_gdpr_consent_derogation_is_not_accepted_by_default() -> None:
    consent = endpoint(
        "us-consent",
        jurisdiction={"country": "US", "region": "x"},
        operator={"name": "C Inc", "country": "US"},
        data_terms={"legal_bases": ["gdpr:consent"]},
    )
    catalogue = Catalogue([consent])
    policy = compile_for({"extends": ["eu-gdpr"]}, home="DE", catalogue=catalogue)
    assert decide(policy, {"PERSON": 1}, catalogue=catalogue).eligible == ()


@pytest.mark.parametrize(
    "kind",
    ["MY_NUMBER", "PASSPORT_JP", "DRIVER_LICENSE_JP", "RESIDENCE_CARD_JP",
     "HEALTH_INSURANCE_JP", "BANK_ACCOUNT_JP"],
)  # fmt: skip
def test_gdpr_an_identification_number_is_personal_data(kind: str) -> None:
    """Art. 4(1) names "an identification number": a My Number went to a US endpoint with no
    transfer tool under this pack."""
    d = decide(GDPR, {kind: 1})
    assert d.level is Level.CONFIDENTIAL
    assert "eu-gdpr/transfer-data-centre" in rules_excluding(d, "us-east")


def test_an_endpoint_whose_data_centre_is_declared_in_the_eu_is_at_home_for_both_packs() -> None:
    """EU is accepted as a jurisdiction (a provider's EU data boundary names no member state),
    yet eu-gdpr took an endpoint in EU for a third country (jurisdiction.country=EU, legal
    bases recorded: none) and jp-appi for a country the PPC does not designate: every member
    state is in the EEA, and the PPC designates each of them."""
    in_eu = endpoint(
        "eu-boundary",
        jurisdiction={"country": "EU", "region": "eu-data-boundary"},
        operator={"name": "Rechenzentrum GmbH", "country": "DE"},
    )
    catalogue = Catalogue([in_eu])
    gdpr = compile_for({"extends": ["eu-gdpr"]}, home="DE", catalogue=catalogue)
    assert decide(gdpr, {"EMAIL": 1}, catalogue=catalogue).eligible_ids == ("eu-boundary",)
    appi = compile_for({"extends": ["jp-appi"]}, home="JP", catalogue=catalogue)
    assert decide(appi, {"PERSON": 1}, catalogue=catalogue).eligible_ids == ("eu-boundary",)


@pytest.mark.parametrize("pack", ["eu-gdpr", "jp-appi"])
def test_a_phone_number_abroad_is_personal_data_under_both_packs(pack: str) -> None:
    """+49 30 12345678 is a person's number as 090-1234-5678 is: PHONE_INTL makes a request
    confidential and keeps it from an endpoint abroad with no transfer basis."""
    policy = compile_for({"extends": [pack]}, home="DE" if pack == "eu-gdpr" else "JP")
    d = decide(policy, {"PHONE_INTL": 1})
    assert d.level is Level.CONFIDENTIAL
    assert f"{pack}/foreign-data-centre" in rules_excluding(d, "us-east") or (
        f"{pack}/transfer-data-centre" in rules_excluding(d, "us-east")
    )
