"""Identity configuration: what validates and what is refused, with the reason."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from sekisho.identity import AuthSpec, GatewayLimitsSpec, LimitsSpec

BASE: dict[str, Any] = {
    "issuer": "https://login.example.com/t/v2.0",
    "audience": "api://sekisho",
    "tenant": "acme",
    "default_role": "app",
}


def issuer(**changes: Any) -> dict[str, Any]:
    return {"oidc": [{**BASE, **changes}]}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"algorithms": ["HS256"]}, "'HS256' is refused"),
        ({"algorithms": ["none"]}, "'none' is refused"),
        ({"algorithms": []}, "at least 1"),
        ({"issuer": "http://login.example.com"}, "must be an https:// URL"),
        ({"jwks_uri": "ftp://x/keys"}, "must be an https:// URL"),
        ({"tenant_claim": "tid"}, "exactly one of `tenant`"),
        ({"tenant": None}, "exactly one of `tenant`"),
        ({"default_role": None}, "must map to a role"),
        ({"role_map": {"g": "root"}}, "'admin', 'auditor', 'tenant-admin', 'developer' or 'app'"),
        ({"leeway": 5}, "Extra inputs are not permitted"),
    ],
)
def test_bad_issuer_config_is_refused_with_reason(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        AuthSpec.model_validate(issuer(**changes))
    assert reason in str(info.value)


def test_plain_http_is_allowed_on_loopback_only() -> None:
    AuthSpec.model_validate(issuer(issuer="http://127.0.0.1:8080/realms/x"))
    AuthSpec.model_validate(issuer(issuer="http://localhost/realms/x"))


def test_an_issuer_may_be_configured_once() -> None:
    with pytest.raises(ValidationError, match="configured twice"):
        AuthSpec.model_validate({"oidc": [BASE, BASE]})


def test_every_field_is_described() -> None:
    for model in (AuthSpec, GatewayLimitsSpec, LimitsSpec):
        schema = model.model_json_schema()
        for name, defn in [*schema.get("$defs", {}).items(), (model.__name__, schema)]:
            for field, prop in defn.get("properties", {}).items():
                assert prop.get("description"), f"{name}.{field} has no description"


def test_limits_validate() -> None:
    spec = LimitsSpec.model_validate(
        {
            "requests_per_minute": 60,
            "tokens_per_month": 10_000_000,
            "per_key": {"requests_per_minute": 10},
        }
    )
    assert spec.per_key is not None and spec.per_key.requests_per_minute == 10
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        LimitsSpec.model_validate({"tokens_per_day": 0})
    with pytest.raises(ValidationError, match="unknown time zone"):
        GatewayLimitsSpec.model_validate({"timezone": "Mars/Olympus"})
    assert GatewayLimitsSpec.model_validate({"timezone": "Asia/Tokyo"}).namespace == "default"
