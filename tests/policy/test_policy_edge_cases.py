"""Edge cases of the policy language a tenant author meets: each fails closed or is refused at
load with the file, the key path and the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sekisho.config import load_config
from sekisho.errors import ConfigError

_ENDPOINTS = [
    {
        "id": "tokyo",
        "family": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "models": [{"id": "m"}],
        "jurisdiction": {"country": "JP", "region": "tokyo"},
        "operator": {"name": "Tokyo KK", "country": "JP"},
        "data_terms": {"retention_days": 0, "trains_on_data": False},
    }
]


def _load(tmp_path: Path, policy: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Load a config whose one tenant has ``policy``; return its problems (file, path, reason)."""
    config = {
        "version": 1,
        "regions": {"jp": {"country": "JP"}},
        "endpoints": _ENDPOINTS,
        "tenants": {"acme": {"home_region": "jp", "policy": policy}},
    }
    path = tmp_path / "sekisho.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [(p.file, p.path, p.reason) for p in caught.value.problems]


@pytest.mark.parametrize(
    ("policy", "key"),
    [
        (
            {"rules": [{"id": "r", "when": {"findings": ["MY_NUMBR"]}, "action": "block"}]},
            "rules[0](r).when.findings[0]",
        ),
        ({"classification": {"findings": {"MY_NUMBR": "restricted"}}}, "classification.findings"),
        ({"classification": {"actions": {"MY_NUMBR": "redact"}}}, "classification.actions"),
        ({"storage": {"pseudonymise": ["MY_NUMBR"]}}, "storage.pseudonymise[0]"),
    ],
)
def test_a_finding_type_the_classifier_never_emits_is_refused_with_a_suggestion(
    tmp_path: Path, policy: dict[str, Any], key: str
) -> None:
    # A misspelt type would never be found: a block rule on it would never block.
    ((file, path, reason),) = _load(tmp_path, policy)
    assert file.endswith("sekisho.yaml")
    assert path.startswith(f"tenants.acme.policy.{key}")
    assert "'MY_NUMBR' is not a finding type the classifier reports" in reason
    assert "did you mean MY_NUMBER?" in reason


def test_every_type_the_classifier_reports_may_be_named_in_a_policy() -> None:
    from sekisho.classify.findings import TYPES
    from sekisho.policy.spec import KNOWN_FINDING_TYPES
    from sekisho.types import UNINSPECTED_TYPES

    assert frozenset(TYPES) | frozenset(UNINSPECTED_TYPES) == KNOWN_FINDING_TYPES


def test_an_override_that_both_disables_a_rule_and_changes_it_is_refused(tmp_path: Path) -> None:
    # Ambiguous: the tenant wrote an allow list, but disabling drops the rule altogether and
    # every endpoint would receive My Numbers.
    policy = {
        "extends": ["jp-mynumber"],
        "overrides": {
            "jp-mynumber/no-model-endpoint": {
                "reason": "entrusted on-premises model",
                "disabled": True,
                "endpoints": {"allow": ["tokyo"]},
            }
        },
    }
    ((file, path, reason),) = _load(tmp_path, policy)
    assert file.endswith("sekisho.yaml")
    assert path == "tenants.acme.policy.overrides.jp-mynumber/no-model-endpoint"
    assert "both disables the rule and changes endpoints" in reason


def test_an_override_with_a_blank_reason_is_refused(tmp_path: Path) -> None:
    policy = {
        "extends": ["jp-mynumber"],
        "overrides": {"jp-mynumber/no-model-endpoint": {"reason": "  ", "disabled": True}},
    }
    ((_, path, reason),) = _load(tmp_path, policy)
    assert path.startswith("tenants.acme.policy.overrides.jp-mynumber/no-model-endpoint")
    assert "reason" in reason


def test_an_override_that_empties_a_condition_is_refused_not_read_as_no_condition(
    tmp_path: Path,
) -> None:
    # `endpoints:` with its allow list lost to a YAML slip is null: read as "no condition", it
    # made the My Number rule impose nothing and every endpoint received My Numbers.
    policy = yaml.safe_load(
        """
        extends: [jp-mynumber]
        overrides:
          jp-mynumber/no-model-endpoint:
            reason: entrusted on-premises model
            endpoints:
        """
    )
    ((file, path, reason),) = _load(tmp_path, policy)
    assert file.endswith("sekisho.yaml")
    assert path == "tenants.acme.policy.overrides.jp-mynumber/no-model-endpoint"
    assert "endpoints is empty (null)" in reason
    assert "disabled: true" in reason


@pytest.mark.parametrize("empty", [{}, {"deployments": None}, {"certifications": []}])
def test_an_any_of_alternative_that_imposes_nothing_is_refused(
    tmp_path: Path, empty: dict[str, Any]
) -> None:
    # One empty alternative makes every endpoint meet any_of: the others would never count.
    policy = {"rules": [{"id": "r", "any_of": [{"deployments": ["on_premises"]}, empty]}]}
    ((_, path, reason),) = _load(tmp_path, policy)
    assert path.startswith("tenants.acme.policy.rules[0](r).any_of")
    assert "any_of[1] imposes nothing" in reason


def test_an_empty_certifications_any_of_is_refused_not_read_as_no_condition(
    tmp_path: Path,
) -> None:
    # Every other empty list of what an endpoint must be allows none (jurisdictions: [],
    # deployments: [], endpoints.allow: []); "at least one of none" imposed nothing.
    policy = {"levels": {"restricted": {"certifications_any_of": []}}}
    ((file, path, reason),) = _load(tmp_path, policy)
    assert file.endswith("sekisho.yaml")
    assert path.startswith("tenants.acme.policy.levels.restricted")
    assert "certifications_any_of is empty" in reason


@pytest.mark.parametrize(
    ("written", "level"),
    [("機密性２", "confidential"), ("機密性３", "restricted"), ("ＰＵＢＬＩＣ", "public")],
)
def test_a_level_written_with_full_width_characters_is_that_level(written: str, level: str) -> None:
    # A Japanese input method writes 機密性２ as readily as 機密性2: it is the same level, not an
    # unreadable one (which a declaration would turn into restricted, and a config refuses).
    from policy_fixtures import compile_for

    from sekisho.types import Level

    assert Level.parse(written).label == level
    policy = compile_for({"levels": {written: {"jurisdictions": ["JP"]}}})
    assert policy.classify({}, written) is max(Level.parse(level), Level.INTERNAL)


def test_a_tenant_rule_is_named_by_index_and_id_in_every_config_error(tmp_path: Path) -> None:
    # The spec's errors said rules[1](no-us), the compiler's rules[1]: one key path per rule.
    policy = {
        "rules": [
            {"id": "ok", "when": {"findings": ["SECRET"]}, "action": "block"},
            {"id": "no-us", "operators": {"deny": ["Nobody Inc"]}},
        ]
    }
    ((_, path, reason),) = _load(tmp_path, policy)
    assert path == "tenants.acme.policy.rules[1](no-us).operators.deny[0]"
    assert "no endpoint is operated by 'Nobody Inc'" in reason
