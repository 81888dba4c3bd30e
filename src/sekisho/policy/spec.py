"""The policy language: what a tenant writes under ``policy:`` in the YAML config.

These models only check the *shape* of a policy (types, spellings, levels, contradictions inside
one rule). Whatever needs the catalogue or the packs to judge (unknown endpoint ids, unknown pack
or rule ids) is checked by :func:`sekisho.policy.compiler.compile_policy`. The JSON Schema for
editors is generated from these models, so every field carries a ``description``.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from sekisho._section import Section
from sekisho.routing.catalogue import (
    Certification,
    CountryCode,
    Deployment,
    LegalBasis,
    country_code,
)
from sekisho.types import UNINSPECTED_TYPES, Level

_FINDING_TYPE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_RULE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_QUALIFIED_RULE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}/[a-z0-9][a-z0-9._/-]{0,126}$")

# Finding types the classifier reports (sekisho.classify.findings.TYPES) and the kinds of content it
# cannot read. A closed set: a tenant's own dictionaries and patterns report CUSTOM, so a name
# outside it could never be found, and a rule on it (a misspelt MY_NUMBR) would never apply.
KNOWN_FINDING_TYPES: frozenset[str] = frozenset(
    {
        "MY_NUMBER",
        "CORPORATE_NUMBER",
        "PHONE_JP",
        "PHONE_INTL",
        "POSTAL_CODE_JP",
        "PASSPORT_JP",
        "DRIVER_LICENSE_JP",
        "RESIDENCE_CARD_JP",
        "HEALTH_INSURANCE_JP",
        "BANK_ACCOUNT_JP",
        "ADDRESS_JP",
        "DATE_OF_BIRTH",
        "EMAIL",
        "CREDIT_CARD",
        "IP_ADDRESS",
        "IBAN",
        "PERSON",
        "SECRET",
        "CONFIDENTIAL_LABEL",
        "CUSTOM",
        *UNINSPECTED_TYPES,  # content sekisho cannot read: a level, never an action
    }
)


def _level_name(value: str) -> str:
    """Accept any level name or alias (機密性1/2/3); keep the canonical lower-case name."""
    return Level.parse(value).label


def _finding_type(value: str) -> str:
    if value in KNOWN_FINDING_TYPES:
        return value
    known = ", ".join(sorted(KNOWN_FINDING_TYPES))
    if not _FINDING_TYPE.match(value):
        raise ValueError(
            f"{value!r} is not a finding type name (UPPER_SNAKE_CASE, e.g. MY_NUMBER); "
            f"the classifier reports: {known}"
        )
    close = difflib.get_close_matches(value, sorted(KNOWN_FINDING_TYPES), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ValueError(
        f"{value!r} is not a finding type the classifier reports, so it would never be found; "
        f"{hint}known: {known} (a tenant's own dictionaries and patterns report CUSTOM)"
    )


def _jurisdiction_ref(value: str) -> str:
    country, sep, region = value.strip().partition("/")
    code = country.strip().upper()
    if not re.match(r"^[A-Z]{2}$", code):
        raise ValueError(
            f"{value!r} is not a jurisdiction: write a country code (JP) or country/region "
            "(JP/tokyo)"
        )
    code = country_code(code)  # a real one, as everywhere else a country is named (UK: GB)
    if sep and not region.strip():
        raise ValueError(f"{value!r} has an empty region after '/'")
    return f"{code}/{region.strip().lower()}" if sep else code


LevelName = Annotated[str, AfterValidator(_level_name)]
FindingType = Annotated[str, AfterValidator(_finding_type)]
JurisdictionRef = Annotated[
    str,
    AfterValidator(_jurisdiction_ref),
    Field(description="A country code (JP) or a country and region (JP/tokyo)"),
]
TransformAction = Literal["redact", "pseudonymise"]
RuleAction = Literal["allow", "redact", "pseudonymise", "block"]


class _Spec(Section):
    pass


def _no_overlap(allow: list[str] | None, deny: list[str], what: str) -> None:
    if allow is None:
        return
    both = sorted({a.lower() for a in allow} & {d.lower() for d in deny})
    if both:
        raise ValueError(f"{what} {both} are both allowed and denied; keep each in one list")


class NameList(_Spec):
    """An allow list and a deny list. Absent ``allow`` means "any not denied"."""

    allow: list[str] | None = Field(
        default=None,
        description="Only these are eligible (absent: any; empty list: none). Case-insensitive.",
    )
    deny: list[str] = Field(default_factory=list, description="Never eligible. Case-insensitive.")

    @model_validator(mode="after")
    def _disjoint(self) -> NameList:
        _no_overlap(self.allow, self.deny, "names")
        return self


class TransferCondition(_Spec):
    """A cross-border transfer allowed only with a recorded legal basis (APPI Art. 28, GDPR Ch. V).

    An endpoint is *abroad* when the checked country (data centre's, or operator's incorporation)
    is neither in ``home`` nor in ``adequate_countries``. Such an endpoint is eligible only if its
    ``data_terms.legal_bases`` records one of ``bases``; an empty ``bases`` forbids it outright.
    """

    home: list[CountryCode] | None = Field(
        default=None,
        description="Countries that count as home (absent: the tenant's home_country)",
    )
    adequate_countries: list[CountryCode] = Field(
        default_factory=list,
        description="Countries treated as home without a recorded basis (e.g. adequacy decisions)",
    )
    bases: list[LegalBasis] = Field(
        default_factory=list,
        description="Legal bases of which the endpoint must record at least one (empty: forbidden)",
    )


class Constraints(_Spec):
    """Conditions an endpoint must meet. Every field left out imposes nothing."""

    jurisdictions: list[JurisdictionRef] | None = Field(
        default=None,
        description="Data centre must be in one of these (JP or JP/tokyo); empty: none",
    )
    operators: NameList | None = Field(
        default=None, description="Operator names (own or parent's) allowed and denied"
    )
    operator_countries: list[CountryCode] | None = Field(
        default=None,
        description="Operator's country of incorporation (and its parent's) must be in this list",
    )
    domestic_operator_only: bool = Field(
        default=False,
        description="Operator and its parent must be incorporated in the tenant's home country",
    )
    certifications: list[Certification] = Field(
        default_factory=list, description="Endpoint must hold every one of these"
    )
    certifications_any_of: list[Certification] = Field(
        default_factory=list,
        description="Endpoint must hold at least one of these (e.g. ISMAP or ISMAP-LIU)",
    )
    max_retention_days: int | None = Field(
        default=None,
        ge=0,
        le=36_500,
        description="Provider may keep prompts/outputs at most this many days",
    )
    no_training: bool = Field(
        default=False, description="Provider must not use customer data to train models"
    )
    zero_data_retention: bool = Field(
        default=False, description="Provider must contractually keep nothing after the response"
    )
    confidential_computing: bool = Field(
        default=False, description="Endpoint must process prompts in attested TEEs"
    )
    deployments: list[Deployment] | None = Field(
        default=None, description="Allowed deployment kinds: on_premises, private_cloud, ..."
    )
    foreign_data_centre: TransferCondition | None = Field(
        default=None,
        description="A data centre abroad is eligible only with one of these legal bases",
    )
    foreign_operator: TransferCondition | None = Field(
        default=None,
        description="An operator incorporated abroad is eligible only with one of these bases "
        "(APPI: a foreign operator with servers in Japan is still a foreign third party)",
    )
    endpoints: NameList | None = Field(
        default=None, description="Endpoint ids allowed and denied (explicit exceptions)"
    )
    action: RuleAction | None = Field(
        default=None,
        description="What to do with a request this rule applies to: allow (the default), "
        "redact or pseudonymise every finding, or block",
    )
    any_of: list[Constraints] | None = Field(
        default=None,
        description="Alternatives: the endpoint must meet at least one of these (besides the "
        "fields above), e.g. on_premises OR a domestic operator",
    )

    @field_validator("certifications_any_of")
    @classmethod
    def _some_choice(cls, value: list[str]) -> list[str]:
        # Only an explicit empty list gets here (absent is the default, not validated).
        if not value:
            raise ValueError(
                "certifications_any_of is empty: no endpoint holds one of none; list the "
                "certifications to choose from, or leave it out to impose nothing"
            )
        return value

    @field_validator("any_of")
    @classmethod
    def _alternatives(cls, value: list[Constraints] | None) -> list[Constraints] | None:
        if value is not None:
            if not value:
                raise ValueError("any_of needs at least one alternative")
            if any(alt.action is not None for alt in value):
                raise ValueError("an any_of alternative cannot carry an action; set it on the rule")
            for i, alt in enumerate(value):
                # Every endpoint meets an alternative that asks nothing, so the others would
                # never count: an indentation slip, not a policy.
                if not alt.model_dump(exclude_defaults=True):
                    raise ValueError(
                        f"any_of[{i}] imposes nothing, so every endpoint would meet any_of; "
                        "give it conditions or remove it"
                    )
        return value


class When(_Spec):
    """When a rule applies: at any of ``levels`` OR when any of ``findings`` is present."""

    levels: list[LevelName] = Field(
        default_factory=list,
        description="Classification levels (names or 機密性 aliases) at which the rule applies",
    )
    min_level: LevelName | None = Field(
        default=None, description="The rule applies at this level and every level above it"
    )
    findings: list[FindingType] = Field(
        default_factory=list,
        description="The rule applies when the request contains any of these finding types",
    )


class RuleSpec(Constraints):
    """A named rule: conditions that apply at some levels or when some findings are present."""

    id: str = Field(
        description="Stable id, unique within its pack or tenant (e.g. foreign-operator)"
    )
    title: str = Field(default="", description="One line saying what the rule does")
    obligation: str = Field(default="", description="The obligation this rule implements")
    source: str = Field(default="", description="Where the obligation comes from (law, article)")
    when: When | None = Field(
        default=None, description="When the rule applies (absent: to every request)"
    )

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _RULE_ID.match(value):
            raise ValueError(f"rule id {value!r} must be lower-case letters, digits, . _ -")
        return value


class RuleOverride(Constraints):
    """A tenant's change to a pack rule: disable it, or replace the fields given here."""

    reason: str = Field(
        min_length=1, description="Why the tenant departs from the pack (shown in explanations)"
    )
    disabled: bool = Field(default=False, description="Drop the rule entirely")
    when: When | None = Field(default=None, description="Replace when the rule applies")

    @field_validator("reason")
    @classmethod
    def _reason_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("reason is blank: say why the tenant departs from the pack")
        return value

    @model_validator(mode="after")
    def _disable_or_change(self) -> RuleOverride:
        # Disabling drops the rule whatever else is written: an allow list beside it would read
        # as a narrowing but loosen the rule entirely.
        changed = sorted(self.model_fields_set - {"reason", "disabled"})
        # A condition written without a value (`endpoints:` whose list a YAML slip lost) would
        # drop the pack's condition: a loosening no one wrote on purpose.
        emptied = [name for name in changed if name != "when" and getattr(self, name) is None]
        if emptied:
            raise ValueError(
                f"{', '.join(emptied)} is empty (null), which would remove the pack's condition; "
                "give it a value, or write disabled: true to drop the rule"
            )
        if self.disabled and changed:
            raise ValueError(
                f"both disables the rule and changes {', '.join(changed)}; either drop "
                "disabled: true to keep the rule with these changes, or drop the changes"
            )
        return self


class ClassificationSpec(_Spec):
    """How findings map to a classification level and what to do with each finding type."""

    obligation: str = Field(default="", description="The obligation this section implements")
    source: str = Field(default="", description="Where the obligation comes from")

    default: LevelName | None = Field(
        default=None,
        description="Level of a request with no findings and no declared level "
        "(the higher of this and the tenant's default_classification)",
    )
    findings: dict[FindingType, LevelName] = Field(
        default_factory=dict, description="Finding type → the level a request containing it has"
    )
    actions: dict[FindingType, TransformAction] = Field(
        default_factory=dict,
        description="Finding type → redact or pseudonymise before the request goes upstream",
    )

    @field_validator("actions")
    @classmethod
    def _readable_only(cls, actions: dict[str, str]) -> dict[str, str]:
        unreadable = sorted(set(actions) & set(UNINSPECTED_TYPES))
        if unreadable:
            raise ValueError(
                f"{', '.join(unreadable)}: sekisho cannot read that content, so it cannot "
                "redact or pseudonymise it; give it a level under classification.findings "
                "(e.g. restricted keeps it on domestic endpoints)"
            )
        return actions


class StorageSpec(_Spec):
    """What happens to findings before a prompt or output is stored."""

    obligation: str = Field(default="", description="The obligation this section implements")
    source: str = Field(default="", description="Where the obligation comes from")

    pseudonymise: list[FindingType] = Field(
        default_factory=list,
        description="Finding types replaced by pseudonyms before storage (e.g. MY_NUMBER)",
    )

    @field_validator("pseudonymise")
    @classmethod
    def _readable_only(cls, kinds: list[str]) -> list[str]:
        unreadable = sorted(set(kinds) & set(UNINSPECTED_TYPES))
        if unreadable:
            raise ValueError(
                f"{', '.join(unreadable)}: sekisho cannot read that content, so it cannot "
                "pseudonymise it; a tenant that must not keep it sets retention to metadata"
            )
        return kinds


class Preference(_Spec):
    """The order of eligible endpoints. Ties keep catalogue order."""

    endpoints: list[str] = Field(
        default_factory=list, description="Endpoint ids first, in this order"
    )
    domestic: bool = Field(
        default=False,
        description="Then endpoints whose data centre and operator are in the home country",
    )


class PolicySpec(_Spec):
    """A tenant's sovereignty policy (``tenants.NAME.policy`` in the config)."""

    extends: list[str] = Field(
        default_factory=list,
        description="Built-in packs, applied in order: jp-appi, jp-mynumber, jp-gov-genai, eu-gdpr",
    )
    levels: dict[str, Constraints] = Field(
        default_factory=dict,
        description="Per classification level (public, internal, confidential, restricted or "
        "機密性1/2/3): conditions an endpoint must meet for a request at exactly that level",
    )
    rules: list[RuleSpec] = Field(
        default_factory=list, description="The tenant's own named rules (same shape as packs)"
    )
    overrides: dict[str, RuleOverride] = Field(
        default_factory=dict,
        description="Changes to pack rules, keyed by qualified id (e.g. jp-mynumber/no-model)",
    )
    classification: ClassificationSpec = Field(
        default_factory=ClassificationSpec, description="Findings → level and per-type actions"
    )
    storage: StorageSpec = Field(
        default_factory=StorageSpec, description="Transformations applied before storage"
    )
    models: list[str] | None = Field(
        default=None, description="Model names the tenant may use (absent: every model)"
    )
    prefer: Preference = Field(
        default_factory=Preference, description="Order in which eligible endpoints are tried"
    )

    @field_validator("extends")
    @classmethod
    def _unique_packs(cls, value: list[str]) -> list[str]:
        seen = [v for i, v in enumerate(value) if v in value[:i]]
        if seen:
            raise ValueError(f"pack(s) {sorted(set(seen))} listed twice in extends")
        return value

    @field_validator("levels", mode="before")
    @classmethod
    def _level_keys(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        # Keys stay as written (error messages quote them); the compiler parses them again.
        origin: dict[Level, str] = {}
        for key in value:
            level = Level.parse(str(key))
            if level in origin:
                raise ValueError(
                    f"levels {origin[level]!r} and {key!r} are the same level ({level.label}); "
                    "write its rules once"
                )
            origin[level] = str(key)
        return value

    @field_validator("overrides")
    @classmethod
    def _override_ids(cls, value: dict[str, RuleOverride]) -> dict[str, RuleOverride]:
        for key in value:
            if not _QUALIFIED_RULE_ID.match(key):
                raise ValueError(f"override key {key!r} must be a pack rule id like jp-appi/x")
        return value

    @model_validator(mode="after")
    def _unique_rule_ids(self) -> PolicySpec:
        ids = [r.id for r in self.rules]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"rule id(s) {twice} used twice in rules")
        return self


class PackSpec(_Spec):
    """A built-in policy pack (a YAML data file in ``sekisho/policy/packs``)."""

    name: str = Field(description="The name tenants write in extends")
    title: str = Field(description="What the pack is for")
    description: str = Field(default="", description="Scope and limits of the pack")
    rules: list[RuleSpec] = Field(default_factory=list)
    classification: ClassificationSpec = Field(default_factory=ClassificationSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)

    @model_validator(mode="after")
    def _documented(self) -> PackSpec:
        undocumented = [r.id for r in self.rules if not (r.obligation and r.source)]
        if undocumented:
            raise ValueError(f"pack rules {undocumented} lack an obligation and a source")
        return self


class PolicyTestExpectation(_Spec):
    """What a policy test case expects. Give at least one field."""

    eligible: list[str] | None = Field(
        default=None, description="Eligible endpoint ids, in preference order"
    )
    action: RuleAction | None = Field(default=None, description="Expected action")
    level: LevelName | None = Field(default=None, description="Expected classification level")
    excluded: dict[str, str] = Field(
        default_factory=dict, description="Endpoint id → a rule id expected among its exclusions"
    )

    @model_validator(mode="after")
    def _something_expected(self) -> PolicyTestExpectation:
        if (
            self.eligible is None
            and self.action is None
            and self.level is None
            and not (self.excluded)
        ):
            raise ValueError("expect needs at least one of eligible, action, level, excluded")
        return self


class PolicyTestCase(_Spec):
    """Given a tenant, a model and a request's classification or text, expect a decision."""

    name: str = Field(min_length=1, description="What the case checks, in words")
    tenant: str = Field(description="Tenant name in the config")
    model: str = Field(description="Requested model name")
    classification: str | None = Field(
        default=None,
        description="Declared level, as in the x-sekisho-classification header (parsed "
        "leniently: an unknown value counts as restricted, as in the gateway)",
    )
    text: str | None = Field(default=None, description="Prompt text to classify")
    findings: dict[FindingType, int] = Field(
        default_factory=dict, description="Finding counts to assume instead of (or with) text"
    )
    key_models: list[str] | None = Field(
        default=None, description="The API key's own model allow list, if any"
    )
    expect: PolicyTestExpectation


class PolicyTestFile(_Spec):
    """A file of policy test cases for ``sekisho policy test``."""

    cases: list[PolicyTestCase] = Field(min_length=1, description="The test cases")
