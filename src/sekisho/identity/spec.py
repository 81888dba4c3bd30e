"""Configuration of identity: OIDC issuers (``auth:``), limits and budgets, shared Redis.

These models are sections of sekisho's YAML config; config.py mounts them:

    auth: AuthSpec                      # top level, optional
    redis: RedisURL                     # top level, optional: limits shared by every process
    limits: GatewayLimitsSpec           # top level, optional: default per key, namespace, zone
    tenants.NAME.limits: LimitsSpec     # per tenant, optional
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, field_validator, model_validator

from sekisho._section import Section

Role = Literal["admin", "auditor", "tenant-admin", "developer", "app"]
# Asymmetric algorithms only: keys come from a public JWKS, so a shared-secret algorithm (HS*)
# would let anyone holding the public key mint tokens (the "algorithm confusion" attack).
Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip


def is_loopback_host(host: str | None) -> bool:
    """``host`` (a URL's host name or address) is this machine: nothing crosses a network."""
    if host is None:
        return False
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _https_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return value
    if parts.scheme == "http" and parts.hostname and is_loopback_host(parts.hostname):
        return value  # a test or sidecar issuer on this machine
    raise ValueError(f"{value!r} must be an https:// URL (plain http is accepted only on loopback)")


def _redis_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"{value!r} is not a Redis URL; write redis://HOST:6379/0, rediss://… or unix://PATH"
        )
    return value


HttpsURL = Annotated[str, AfterValidator(_https_url)]
RedisURL = Annotated[str, AfterValidator(_redis_url)]


class _Spec(Section):
    pass


class OIDCIssuerSpec(_Spec):
    """One identity provider whose tokens sekisho accepts."""

    issuer: HttpsURL = Field(description="Issuer identifier, exactly as in the tokens' `iss` claim")
    audience: str | list[str] = Field(
        description="Accepted `aud` value(s): the client or application id sekisho is known by"
    )
    algorithms: list[Algorithm] = Field(
        default=["RS256"],
        min_length=1,
        description="Signature algorithms accepted; asymmetric only (no HS*, never `none`)",
    )
    jwks_uri: HttpsURL | None = Field(
        default=None,
        description="JWKS URL; absent: read from {issuer}/.well-known/openid-configuration",
    )
    tenant: str | None = Field(
        default=None, description="Fixed sekisho tenant for every token of this issuer"
    )
    tenant_claim: str | None = Field(
        default=None,
        description="Claim (dotted path) whose value names the tenant; see tenant_map",
    )
    tenant_map: dict[str, str] = Field(
        default_factory=dict,
        description="Tenant claim value → sekisho tenant; when set, unmapped values are refused",
    )
    subject_claim: str = Field(
        default="sub", description="Claim that identifies the person or workload (sub, oid, …)"
    )
    role_claims: list[str] = Field(
        default=["roles", "groups"],
        description="Claims (dotted paths, e.g. realm_access.roles) holding role or group names",
    )
    role_map: dict[str, Role] = Field(
        default_factory=dict,
        description="Value found in role_claims → sekisho role "
        "(admin, auditor, tenant-admin, developer, app)",
    )
    default_role: Role | None = Field(
        default=None,
        description="Role for tokens with no mapped value; absent: such tokens are refused (403)",
    )
    leeway_seconds: int = Field(
        default=60, ge=0, le=600, description="Clock skew tolerated on exp, nbf and iat"
    )
    jwks_cache_seconds: int = Field(
        default=3600,
        ge=0,
        le=7 * 86400,
        description="How long fetched signing keys are trusted before refetch",
    )
    jwks_refetch_min_seconds: float = Field(
        default=60.0,
        ge=0,
        le=86400,
        description="Least time between refetches caused by an unknown `kid` (limits abuse)",
    )
    http_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, description="Timeout for discovery and JWKS requests"
    )

    @field_validator("algorithms", mode="before")
    @classmethod
    def _asymmetric(cls, value: object) -> object:
        if isinstance(value, list):
            for alg in value:
                if isinstance(alg, str) and (alg.lower() == "none" or alg.upper().startswith("HS")):
                    raise ValueError(
                        f"algorithm {alg!r} is refused: keys come from a public JWKS, so only "
                        f"asymmetric algorithms are safe ({', '.join(_ALGORITHMS)})"
                    )
        return value

    @model_validator(mode="after")
    def _tenant_source(self) -> OIDCIssuerSpec:
        if (self.tenant is None) == (self.tenant_claim is None):
            raise ValueError("set exactly one of `tenant` (fixed) or `tenant_claim`")
        if self.tenant_map and self.tenant_claim is None:
            raise ValueError("`tenant_map` needs `tenant_claim`")
        if not self.role_map and self.default_role is None:
            raise ValueError("set `role_map`, `default_role` or both: a token must map to a role")
        return self

    @property
    def audiences(self) -> list[str]:
        return [self.audience] if isinstance(self.audience, str) else list(self.audience)


class AuthSpec(_Spec):
    """How callers prove who they are, besides sekisho's own API keys."""

    oidc: list[OIDCIssuerSpec] = Field(
        default_factory=list, description="Identity providers whose bearer JWTs are accepted"
    )

    @model_validator(mode="after")
    def _unique(self) -> AuthSpec:
        seen: set[str] = set()
        for spec in self.oidc:
            if spec.issuer in seen:
                raise ValueError(f"issuer {spec.issuer} is configured twice")
            seen.add(spec.issuer)
        return self


_MOST = 10**15  # a rate or budget above this is a typo, not a limit


class Quota(_Spec):
    """Rates and budgets; an absent value means no limit of that kind."""

    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=_MOST,
        description="Requests admitted per minute (refilled continuously)",
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=_MOST,
        description="Tokens (prompt + completion) per minute, refilled continuously",
    )
    tokens_per_day: int | None = Field(
        default=None,
        ge=1,
        le=_MOST,
        description="Token budget per calendar day (the tenant's limits.timezone)",
    )
    tokens_per_month: int | None = Field(
        default=None,
        ge=1,
        le=_MOST,
        description="Token budget per calendar month (the tenant's limits.timezone)",
    )

    @property
    def unlimited(self) -> bool:
        return all(
            v is None
            for v in (
                self.requests_per_minute,
                self.tokens_per_minute,
                self.tokens_per_day,
                self.tokens_per_month,
            )
        )


# Active keys a tenant may hold when its operator set no number: more than an organisation's
# applications and people need, few enough that a tenant-admin cannot fill the key store.
DEFAULT_MAX_ACTIVE_KEYS = 1000


class LimitsSpec(Quota):
    """``tenants.NAME.limits``: the tenant's total, and optionally its keys' default."""

    max_active_keys: int = Field(
        default=DEFAULT_MAX_ACTIVE_KEYS,
        ge=1,
        le=1_000_000,
        description="Most API keys of this tenant active at once (app, developer and "
        "tenant-admin keys; not yet expired or revoked): a key past it, created or rotated "
        "with an overlap over the admin API (the operator's admin keys included), is refused "
        "with HTTP 403 tenant_key_limit; `sekisho keys create` on the gateway's host is not",
    )
    max_concurrent_requests: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Most model requests of this tenant in flight at once, from its key's "
        "check to its answer's last byte (per gateway process; with redis: across every "
        "process and instance): one more is refused at once with HTTP 429 "
        "tenant_concurrency_limit and Retry-After. Below an endpoint's max_concurrency, it "
        "keeps that endpoint's other slots for the other tenants. Absent: no limit",
    )

    per_key: Quota | None = Field(
        default=None,
        description="Limits for each key (or OIDC subject) of this tenant; beats limits.per_key",
    )
    timezone: str | None = Field(
        default=None,
        description=(
            "Zone whose midnight starts this tenant's days and months (e.g. Europe/Berlin for "
            "a tenant abroad): its budgets and usage days; absent: limits.timezone"
        ),
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return value if value is None else _known_zone(value)


class GatewayLimitsSpec(_Spec):
    """Top-level ``limits:``."""

    per_key: Quota = Field(
        default_factory=Quota,
        description="Limits for each key (or OIDC subject) of any tenant without its own per_key",
    )
    namespace: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Redis key namespace (sekisho:<namespace>:…), to share one Redis safely",
    )
    timezone: str = Field(
        default="UTC", description="Zone whose midnight starts a day and a month (e.g. Asia/Tokyo)"
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _known_zone(value)


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r} (use an IANA name like Asia/Tokyo or Europe/Berlin)"
        ) from None
    return value
