"""The configuration examples in docs/identity.md are valid configuration."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter

from sekisho.identity import AuthSpec, GatewayLimitsSpec, LimitsSpec
from sekisho.identity.spec import RedisURL

DOC = Path(__file__).parents[2] / "docs" / "identity.md"
EXAMPLE = re.compile(r"<!-- example: (\w+) -->\n```yaml\n(.*?)```", re.S)


def examples() -> dict[str, Any]:
    return {name: yaml.safe_load(body) for name, body in EXAMPLE.findall(DOC.read_text())}


def test_every_example_is_found() -> None:
    assert set(examples()) == {"entra", "okta", "keycloak", "limits"}


@pytest.mark.parametrize("name", ["entra", "okta", "keycloak"])
def test_identity_provider_examples_validate(name: str) -> None:
    spec = AuthSpec.model_validate(examples()[name]["auth"])
    assert spec.oidc and spec.oidc[0].role_map


def test_limits_example_validates() -> None:
    doc = examples()["limits"]
    TypeAdapter(RedisURL).validate_python(doc["redis"])
    GatewayLimitsSpec.model_validate(doc["limits"])
    for tenant in doc["tenants"].values():
        LimitsSpec.model_validate(tenant["limits"])
