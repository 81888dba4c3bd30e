"""docs/policies.md stays true: its examples load, its test cases pass, every pack rule is in it."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest
import yaml
from docs_examples import DOC, examples, write_example

from sekisho.config import load_config
from sekisho.policy.cli import cmd_test
from sekisho.policy.compiler import compile_policy
from sekisho.policy.packs import available_packs, load_pack
from sekisho.policy.spec import PolicySpec


def test_example_config_loads_with_every_tenant_policy_compiled(tmp_path: Path) -> None:
    config = load_config(write_example("config", tmp_path))
    assert set(config.tenants) == {"demo", "kasumigaseki", "berlin"}


def test_example_policy_test_cases_all_pass(tmp_path: Path) -> None:
    config = write_example("config", tmp_path)
    cases = write_example("policy-tests", tmp_path)
    out = io.StringIO()
    code = cmd_test(argparse.Namespace(file=str(cases), config=str(config)), out)
    assert code == 0, out.getvalue()
    assert "0 failed" in out.getvalue()


@pytest.mark.parametrize("text", examples("policy"))
def test_example_policies_are_valid_against_the_example_catalogue(
    text: str, tmp_path: Path
) -> None:
    config = load_config(write_example("config", tmp_path))
    spec = PolicySpec.model_validate(yaml.safe_load(text))
    compile_policy(spec, config.catalogue, home_country="JP")


def test_every_pack_rule_is_documented_with_its_source() -> None:
    doc = DOC.read_text(encoding="utf-8")
    for name in available_packs():
        assert f"`{name}`" in doc
        for rule in load_pack(name).rules:
            assert f"`{name}/{rule.id}`" in doc, f"{name}/{rule.id} missing from docs"
