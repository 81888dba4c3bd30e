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


def test_the_admin_api_table_names_the_permissions_each_route_asks_for() -> None:
    """The table said keys routes need `keys.manage` or `keys.own` and tenants `tenants.read`
    after tenant-admins (`keys.tenant`, `tenant.own`, `usage.tenant`) were admitted: an
    operator reading it could not tell a tenant-admin reaches them."""
    from sekisho.api.admin import PREFIX, ROUTES

    section = DOC.read_text().split("## Admin API", 1)[1]
    rows = re.findall(r"^\| `(GET|POST) +([^|]*)\| ([^|]*)\|$", section, re.M)
    assert rows
    for route in ROUTES:
        want = {str(p) for p in route.permissions or ()}
        path = PREFIX + route.path
        found = [need for method, paths, need in rows if method == route.method
                 and any(path.endswith(p)
                         for p in re.findall(r"`?(/[^`\[ ]+)", paths))]  # fmt: skip
        assert found, f"{route.method} {path} is not in the table"
        named = set(re.findall(r"`([a-z]+\.[a-z]+)`", found[0]))
        assert named == want, (route.method, path, named, want)
