"""The tenant configuration example in docs/classification.md works as documented, in the
gateway's own config loader too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sekisho.classify import Scanner, rules_from_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "classification.md"


def _yaml_example() -> dict[str, object]:
    block = re.search(r"```yaml\n(.*?)```", DOC.read_text("utf-8"), re.S)
    assert block is not None, "docs/classification.md lost its YAML example"
    loaded = yaml.safe_load(block.group(1))
    assert isinstance(loaded, dict)
    return loaded


def test_documented_tenant_rules_find_code_names_customer_ids_and_labels() -> None:
    rules, labels = rules_from_config(_yaml_example()["detection"])  # type: ignore[arg-type]
    scanner = Scanner(custom=rules, labels=labels)
    text = "ＢＬＵＥＦＩＮの件、CUST-004211 様。【取引先限り】"
    found = [(f.type, f.subtype, text[f.start : f.end]) for f in scanner.scan(text)]
    assert found == [
        ("CUSTOM", "project-codenames", "ＢＬＵＥＦＩＮ"),
        ("CUSTOM", "customer-ids", "CUST-004211"),
        ("CONFIDENTIAL_LABEL", None, "【取引先限り】"),
    ]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"custom": [{"name": "x", "pattern": "("}]}, r"classification\.custom\[0\]: .*valid"),
        ({"custom": [{"name": "x"}]}, r"custom\[0\]: .*exactly one of"),
        ({"custom": [{"name": "x", "terms": "abc"}]}, r"custom\[0\]\.terms: expected a list"),
        ({"custom": [{"name": "a", "terms": ["x"]}, {"name": "a", "terms": ["y"]}]}, "unique"),
        ({"custom": [], "rules": []}, "unknown key"),
        ({"labels": "社外秘"}, r"labels: expected a list"),
    ],
)
def test_config_errors_name_the_key_and_the_reason(
    section: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        rules_from_config(section)


def test_documented_example_is_valid_in_a_tenant_of_the_gateway_config() -> None:
    from sekisho.config import parse_config, scanner_for

    example = Path(__file__).resolve().parents[2] / "examples" / "sekisho.yaml"
    raw = yaml.safe_load(example.read_text("utf-8"))
    raw["tenants"]["demo"]["detection"] = _yaml_example()["detection"]
    config = parse_config(yaml.safe_dump(raw, allow_unicode=True), "x.yaml", env={})
    scanner = scanner_for(config.tenants["demo"])
    assert [f.subtype for f in scanner.scan("CUST-004211")] == ["customer-ids"]
