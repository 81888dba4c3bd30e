"""The configuration of what is kept and under which keys: ``tenants.NAME.retention`` and
``regions.NAME.keys``.

These models are added to the config by the lead (``sekisho.config``); until then the store
reads the two sections with ``retention_of`` and ``key_provider_of``, which accept a model, a
plain mapping (the YAML as written) or nothing (the defaults below).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Discriminator, Field, PrivateAttr, Tag, TypeAdapter, field_validator

from sekisho._section import Section
from sekisho.identity.spec import is_loopback_host
from sekisho.types import Level

Mode = Literal["full", "metadata", "none"]

DEFAULT_MODE: Mode = "metadata"
DEFAULT_DAYS = 30
MAX_DAYS = 36_500  # a hundred years: beyond that a number is a typo, not a retention rule


class _Spec(Section):
    pass


class LevelRetention(_Spec):
    """An override of the tenant's retention for one classification level."""

    mode: Mode | None = Field(
        default=None,
        description="What to keep at this level: full (prompt and output, encrypted), metadata "
        "(no content) or none (nothing beyond the ledger); unset means the tenant's mode",
    )
    days: int | None = Field(
        default=None,
        ge=1,
        le=MAX_DAYS,
        description="Days a record of this level is kept; unset means the tenant's days",
    )


class RetentionSpec(_Spec):
    """``tenants.NAME.retention``: what the store keeps of a request, and for how long.

    Example::

        retention:
          mode: full
          days: 7
          levels:
            restricted: {mode: none}   # never keep restricted prompts
            internal: {days: 30}
          legal_hold: false
    """

    mode: Mode = Field(
        default=DEFAULT_MODE,
        description="full: prompt, output and pseudonym map, encrypted; metadata: request id, "
        "time, classification, endpoint, model, keyed hashes and token counts, no content; "
        "none: nothing beyond the ledger",
    )
    days: int = Field(
        default=DEFAULT_DAYS,
        ge=1,
        le=MAX_DAYS,
        description="Days a record is kept before the sweeper deletes it",
    )
    levels: dict[str, LevelRetention] = Field(
        default_factory=dict,
        description="Per classification level overrides (public, internal, confidential, "
        "restricted, or 機密性1/2/3)",
    )
    _kept: dict[Level, Kept] = PrivateAttr(default_factory=dict)
    legal_hold: bool = Field(
        default=False,
        description="Pause deletion of expired records for this tenant (litigation, "
        "investigation); records are kept until the hold is lifted",
    )

    @field_validator("levels")
    @classmethod
    def _known_levels(cls, value: dict[str, LevelRetention]) -> dict[str, LevelRetention]:
        seen: dict[Level, str] = {}
        for name in value:
            level = Level.parse(name)  # ValueError names the accepted spellings
            if level in seen:
                raise ValueError(
                    f"levels {seen[level]!r} and {name!r} both mean {level.label}; keep one"
                )
            seen[level] = name
        return value

    def for_level(self, level: Level) -> Kept:
        """The rule that applies to a record of this level (worked out once per level: the
        spec is frozen, and this runs for every stored request)."""
        kept = self._kept.get(level)
        if kept is None:
            kept = self._kept[level] = self._work_out(level)
        return kept

    def _work_out(self, level: Level) -> Kept:
        for name, override in self.levels.items():
            if Level.parse(name) == level:
                return Kept(mode=override.mode or self.mode, days=override.days or self.days)
        return Kept(mode=self.mode, days=self.days)


class Kept(_Spec):
    """The effective retention of one record: its mode and how many days it is kept."""

    mode: Mode = Field(description="full, metadata or none")
    days: int = Field(ge=1, description="Days until the record expires")


class LocalKeysSpec(_Spec):
    """``{type: local}``: the region's key-encryption key in a file under the data dir."""

    type: Literal["local"] = Field(default="local", description="A key file on local disk")
    path: str | None = Field(
        default=None,
        description="Key file; default DATA_DIR/keys/region-<REGION>.kek (created on first "
        "start, mode 0600). Keep it on the region's own disk",
    )


_VAULT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")


class VaultKeysSpec(_Spec):
    """``{type: vault, ...}``: the region's key-encryption key in HashiCorp Vault Transit."""

    type: Literal["vault"] = Field(description="HashiCorp Vault Transit secrets engine")
    address: str = Field(
        description="Vault address, e.g. https://vault.tokyo.example.jp:8200 (in the region); "
        "plain http:// only on loopback (a Vault agent on this host)",
        pattern=r"^https?://[^\s/]+(:\d+)?/?$",
    )
    ca_file: str | None = Field(
        default=None,
        description="PEM file of the CA(s) to trust for Vault's certificate (an internal CA); "
        "replaces the system's trust store for Vault. Default: the system's trust store",
    )
    mount: str = Field(default="transit", description="Mount path of the Transit engine")
    key_name: str = Field(description="Name of the Transit key (type aes256-gcm96)")
    token: str = Field(
        description="Vault token with encrypt and decrypt on the key (and rotate for "
        "`sekisho keys rotate`); write ${VAULT_TOKEN}, never the token itself",
        min_length=1,
    )
    namespace: str | None = Field(default=None, description="Vault Enterprise namespace")
    timeout_seconds: float = Field(
        default=5.0, gt=0, le=120, description="Timeout of one call to Vault"
    )

    @field_validator("address")
    @classmethod
    def _https_only(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(parts.hostname)):
            return value
        raise ValueError(
            f"{value!r} must be an https:// address: over plain http the Vault token and every "
            "data key cross the network in clear (http:// is accepted only on loopback, for a "
            "Vault agent on this host). For an internal CA, set ca_file"
        )

    @field_validator("mount", "key_name")
    @classmethod
    def _path_segment(cls, value: str) -> str:
        if not _VAULT_NAME.match(value) or ".." in value:
            raise ValueError(f"{value!r} is not a Vault path segment (letters, digits, _ . - /)")
        return value.strip("/")

    def __repr_args__(self) -> Any:  # never print the token
        for key, value in super().__repr_args__():
            yield key, ("***" if key == "token" else value)


_VAULT_ONLY = frozenset(
    {"address", "mount", "key_name", "token", "namespace", "timeout_seconds", "ca_file"}
)


def _key_type(value: Any) -> str | None:
    """Which provider a ``keys`` mapping describes: its ``type``; without one, a local file
    (``type`` defaults to local, as the JSON Schema says), unless it has Vault's keys."""
    if not isinstance(value, Mapping):
        return getattr(value, "type", None)
    kind = value.get("type")
    if kind is None:
        return None if _VAULT_ONLY & set(value) else "local"
    return kind if kind in ("local", "vault") else None


KeyProviderSpec = Annotated[
    Annotated[LocalKeysSpec, Tag("local")] | Annotated[VaultKeysSpec, Tag("vault")],
    Discriminator(
        _key_type,
        custom_error_type="key_provider_type",
        custom_error_message="set type: local (a key file, the default) or type: vault "
        "(HashiCorp Vault Transit; it needs address, key_name and token)",
    ),
]

_KEY_PROVIDER: TypeAdapter[LocalKeysSpec | VaultKeysSpec] = TypeAdapter(KeyProviderSpec)


def retention_of(tenant: object) -> RetentionSpec:
    """A tenant's retention: its ``retention`` attribute as a model or mapping, else defaults."""
    value = (
        tenant
        if isinstance(tenant, RetentionSpec | Mapping)
        else getattr(tenant, "retention", None)
    )
    if value is None:
        return RetentionSpec()
    if isinstance(value, RetentionSpec):
        return value
    return RetentionSpec.model_validate(value)


def key_provider_of(region: object) -> LocalKeysSpec | VaultKeysSpec:
    """A region's key provider: its ``keys`` attribute as a model or mapping, else local."""
    value = getattr(region, "keys", None)
    if value is None:
        return LocalKeysSpec()
    if isinstance(value, LocalKeysSpec | VaultKeysSpec):
        return value
    return _KEY_PROVIDER.validate_python(value)
