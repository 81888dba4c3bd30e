"""Load and validate sekisho's YAML configuration.

Every problem names the file, the key path and the reason, and start-up stops on any of them.
Secrets come from the environment: any string may be written ``${NAME}`` or ``${NAME:-default}``;
``$${`` is a literal ``${``.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from sekisho import _yaml as strict_yaml
from sekisho._section import Section
from sekisho.errors import ConfigError, ConfigProblem
from sekisho.identity.spec import (
    DEFAULT_MAX_ACTIVE_KEYS,
    AuthSpec,
    GatewayLimitsSpec,
    LimitsSpec,
    RedisURL,
)
from sekisho.policy.spec import PolicySpec
from sekisho.routing.catalogue import Catalogue, CountryCode, Endpoint
from sekisho.store.spec import KeyProviderSpec, LocalKeysSpec, RetentionSpec
from sekisho.types import Level

if TYPE_CHECKING:
    from sekisho.classify import CustomRule, Scanner
    from sekisho.policy.compiler import CompiledPolicy

# ${NAME} or ${NAME:-default} (the default up to the first "}"); $${ is a literal ${
_ENV = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Section(Section):
    pass


class ServerTLS(_Section):
    """HTTPS on the gateway's own listener, and optionally client certificates (mutual TLS)."""

    cert_file: str = Field(description="PEM certificate (with its chain) the gateway presents")
    key_file: str | None = Field(
        default=None, description="PEM private key of cert_file, if not in cert_file's file"
    )
    key_password: str | None = Field(
        default=None, description="Password of an encrypted key; use ${ENV_VAR}"
    )
    client_ca_file: str | None = Field(
        default=None,
        description="Require a client certificate issued by these CAs on every connection "
        "(mutual TLS; API keys are still required)",
    )
    min_version: Literal["1.2", "1.3"] = Field(
        default="1.2", description="Oldest TLS version clients may connect with"
    )


class ServerConfig(_Section):
    host: str = Field(default="127.0.0.1", description="Address to listen on")

    @field_validator("host")
    @classmethod
    def _listen_address(cls, value: str) -> str:
        """An address that can never be listened on stops the check, not a later start-up."""
        name = value.strip().strip("[]")
        if not name:
            raise ValueError("give an address to listen on (e.g. 127.0.0.1, 0.0.0.0, ::)")
        looks_numeric = all(part.isdigit() for part in name.split(".")) or ":" in name
        if looks_numeric:
            try:
                ipaddress.ip_address(name)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address") from None
        return value

    metrics_token: str | None = Field(
        default=None,
        description="If set (use ${ENV_VAR}), /metrics answers only 'Authorization: Bearer "
        "<token>' (Prometheus: authorization.credentials): its series name tenants and count "
        "their findings by type; /readyz then gives its details (internal hosts, errors) "
        "only with the token, and {ready} alone to other probes",
    )
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=256, description="Gateway processes")
    data_dir: str = Field(default="./data", description="SQLite files, keys and local state")
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        le=1024**3,
        description="Largest request body accepted (at most 1 GiB)",
    )
    max_header_bytes: int = Field(
        default=65536,
        ge=8192,
        le=1024 * 1024,
        description="Largest request line and headers accepted (larger: HTTP 431); raise it "
        "for very large OIDC tokens",
    )
    max_stream_text_chars: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Most text (characters, as delivered) one streamed answer may carry; past "
        "it the stream ends with an error event (HTTP 502 upstream_answer_too_large in the "
        "ledger). The text is kept for the stream's record until it ends, so this bounds each "
        "stream's memory; at most 64 Mi, as large as a whole (unstreamed) answer may be",
    )
    log_level: str = Field(default="info", pattern=r"^(debug|info|warning|error)$")
    shutdown_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="How long in-flight requests and streams may finish",
    )
    keep_alive_seconds: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="How long an idle client connection is kept open for its next request. "
        "Behind a load balancer, set it above the balancer's idle timeout (AWS ALB: 60 s), "
        "or the balancer may send a request on a connection the gateway is closing (a 502)",
    )
    read_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A client must send a request's headers within this time of starting it "
        "(or of connecting), and its body within this time of the headers; else 408 and the "
        "connection is closed (slow or stalled clients hold no connection for ever)",
    )
    write_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="A client that stops reading its answer (the connection's buffers stay "
        "full) for this long has its connection ended: its request's outcome is 499 "
        "client_stalled, and the endpoint slot it held is free again",
    )
    stream_keepalive_seconds: float = Field(
        default=0.0,
        ge=0,
        le=300,
        description="A stream whose first event takes longer than this (a reasoning model "
        "thinking) starts at once with SSE comments (': keep-alive') every this many seconds, "
        "so idle timeouts on the way (AWS ALB, nginx: 60 s) do not cut it; 0: off",
    )
    tls: ServerTLS | None = Field(
        default=None, description="Serve HTTPS (and require client certificates, if set)"
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (CIDR) of load balancers or proxies in front of the "
        "gateway: for connections from them, the client address logged is taken from "
        "X-Forwarded-For",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network (CIDR)") from None
        return value


class HealthConfig(_Section):
    failure_threshold: int = Field(
        default=1, ge=1, le=1000, description="Consecutive failures that mark an endpoint down"
    )
    backoff_initial_seconds: float = Field(default=1.0, gt=0, le=86400)
    backoff_max_seconds: float = Field(default=60.0, gt=0, le=86400)
    probe_interval_seconds: float = Field(
        default=0.0,
        ge=0,
        le=86400,
        description="Active probe (GET /models) interval; 0 disables probes",
    )


class RoutingConfig(_Section):
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Endpoints tried per request (first try plus failovers)",
    )
    health: HealthConfig = HealthConfig()
    shared_slot_lease_seconds: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description=(
            "With redis: how long a slot of an endpoint's max_concurrency stays taken after "
            "its gateway process stops renewing it (a process that died)"
        ),
    )


class LedgerConfig(_Section):
    """The transparency ledger. Every request's decision and outcome are entries; it cannot be
    switched off, because sekisho serves nothing it cannot record."""

    url: str | None = Field(
        default=None,
        description="Where the log lives: a postgresql:// URL, sqlite:///PATH (four slashes "
        "for an absolute path), or absent for SQLite in data_dir",
    )

    @field_validator("url")
    @classmethod
    def _location(cls, value: str | None) -> str | None:
        from sekisho.ledger.storage import check_url

        return None if value is None else check_url(value)

    origin: str | None = Field(
        default=None,
        description="Log origin and signing key name (default: HOSTNAME/sekisho-ledger)",
    )
    key_file: str | None = Field(
        default=None,
        description="Ed25519 signer key (default: DATA_DIR/keys/ledger.key, made on first start)",
    )
    group_interval_ms: float = Field(
        default=0.0,
        ge=0,
        le=60_000,
        description="Extra wait to gather more entries into one durable write while they keep "
        "arriving (0: a commit takes what arrived while the previous one ran)",
    )
    group_size: int = Field(
        default=256, ge=1, le=100_000, description="Most entries per durable write"
    )
    deadline_ms: float = Field(
        default=1000.0,
        gt=0,
        le=300_000,
        description="An entry not durable within this is refused: the request gets HTTP 503",
    )
    checkpoint_interval_ms: float = Field(
        default=1000.0,
        gt=0,
        le=3_600_000,
        description="How often a new signed checkpoint is published",
    )


class RegionConfig(_Section):
    country: CountryCode = Field(description="Country the region's stores and keys are in")
    store: str = Field(
        default="sqlite",
        description="'sqlite' (a file under data_dir), sqlite:///PATH (a file of its own, "
        "e.g. on a volume in the region; four slashes for an absolute path) or a "
        "postgresql:// URL",
    )
    keys: KeyProviderSpec = Field(
        default_factory=LocalKeysSpec,
        description="Key-encryption key provider of the region: local file or Vault Transit",
    )


class CustomRuleConfig(_Section):
    """A tenant's own detector: project code names, customer lists, internal identifiers."""

    name: str = Field(description="Rule name; findings have type CUSTOM and this subtype")
    terms: list[str] = Field(default_factory=list, description="Terms, matched with normalisation")
    pattern: str | None = Field(default=None, description="A regular expression instead of terms")
    score: float = Field(default=0.9, gt=0, le=1)


class OutputInspection(_Section):
    """What happens when a model's answer contains findings (scanned while streaming too)."""

    action: str = Field(
        default="none",
        pattern=r"^(none|mask|cut)$",
        description="none: only record; mask: replace findings with [TYPE]; cut: stop the answer",
    )
    types: list[str] = Field(
        default_factory=lambda: ["SECRET", "MY_NUMBER", "CREDIT_CARD"],
        description="Finding types the action applies to",
    )


class DetectionConfig(_Section):
    """How this tenant's prompts and answers are inspected."""

    custom: list[CustomRuleConfig] = Field(default_factory=list)
    labels: list[str] = Field(
        default_factory=list, description="Extra confidentiality markers (e.g. 【部外秘】)"
    )
    min_score: float = Field(default=0.5, ge=0, le=1, description="Findings below are dropped")
    output: OutputInspection = Field(default_factory=OutputInspection)


class TenantConfig(_Section):
    home_region: str = Field(description="Region whose store keeps this tenant's data")
    default_classification: str = Field(
        default="internal",
        description="Level when nothing else says (public … restricted, 機密性1-3)",
    )
    policy: PolicySpec = Field(default_factory=PolicySpec)
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    retention: RetentionSpec = Field(
        default_factory=RetentionSpec, description="What is kept of requests, and how long"
    )
    limits: LimitsSpec | None = Field(default=None, description="Rate limits and token budgets")
    provider_features: list[
        Literal[
            "store",
            "web_search",
            "audio_output",
            "file_search",
            "code_interpreter",
            "mcp",
            "image_generation",
        ]
    ] = Field(
        default_factory=list,
        description="Provider-side features this tenant's requests may ask for: store (the "
        "provider keeps the completion; for the Responses API also previous_response_id, "
        "conversations and background runs), web_search (the provider searches the web with "
        "words from the prompt), audio_output (a spoken answer, which sekisho cannot inspect or "
        "re-identify), and the Responses API's hosted tools file_search, code_interpreter, mcp "
        "(a third-party MCP server) and image_generation. Requests asking for one that is not "
        "listed get HTTP 400",
    )

    @field_validator("default_classification")
    @classmethod
    def _level(cls, value: str) -> str:
        Level.parse(value)
        return value


class ConfigModel(_Section):
    """The whole configuration file."""

    version: int = Field(default=1, ge=1, le=1, description="Configuration format version")
    server: ServerConfig = ServerConfig()
    routing: RoutingConfig = RoutingConfig()
    ledger: LedgerConfig = LedgerConfig()
    auth: AuthSpec | None = Field(
        default=None, description="OIDC issuers accepted besides API keys"
    )
    redis: RedisURL | None = Field(
        default=None,
        description=(
            "Redis for limits and endpoint concurrency caps shared by several gateway processes"
        ),
    )
    limits: GatewayLimitsSpec = Field(default_factory=GatewayLimitsSpec)
    regions: dict[str, RegionConfig] = Field(min_length=1)
    endpoints: list[Endpoint] = Field(min_length=1)
    tenants: dict[str, TenantConfig] = Field(min_length=1)


class Tenant:
    """A tenant as the rest of sekisho sees it."""

    __slots__ = (
        "default_classification",
        "detection",
        "home_country",
        "home_region",
        "limits",
        "max_active_keys",
        "max_concurrent_requests",
        "name",
        "policy",
        "provider_features",
        "retention",
        "source_file",
    )

    def __init__(self, name: str, spec: TenantConfig, home_country: str, source_file: str) -> None:
        self.name = name
        self.home_region = spec.home_region
        self.home_country = home_country
        self.default_classification = spec.default_classification
        self.policy = spec.policy
        self.detection = spec.detection
        self.retention = spec.retention
        self.limits = spec.limits
        self.max_active_keys = (
            spec.limits.max_active_keys if spec.limits is not None else DEFAULT_MAX_ACTIVE_KEYS
        )
        self.max_concurrent_requests = (
            spec.limits.max_concurrent_requests if spec.limits is not None else None
        )
        self.provider_features = frozenset(spec.provider_features)
        self.source_file = source_file


class Config:
    """A validated configuration: the model as written plus the objects built from it."""

    def __init__(self, model: ConfigModel, source_file: str) -> None:
        self.model = model
        self.source_file = source_file
        self.server = model.server
        self.routing = model.routing
        self.ledger = model.ledger
        self.regions = model.regions
        self.catalogue = Catalogue(model.endpoints)
        self.tenants = {
            name: Tenant(name, t, model.regions[t.home_region].country, source_file)
            for name, t in model.tenants.items()
        }
        self.policies: dict[str, CompiledPolicy] = {}
        # The model as the file wrote it, before any command-line flag (what a reload's file
        # is compared with to tell what changed in it)
        self.file_model = model

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir)

    def with_server(self, **changes: object) -> Config:
        """The same configuration with server settings overridden (command-line flags)."""
        update = {k: v for k, v in changes.items() if v is not None}
        server = ServerConfig.model_validate({**self.server.model_dump(), **update})
        copy = Config(self.model.model_copy(update={"server": server}), self.source_file)
        copy.policies = self.policies
        copy.file_model = self.file_model
        return copy


def load_config(path: str | os.PathLike[str], *, env: dict[str, str] | None = None) -> Config:
    """Read, expand and validate a config file; raise ConfigError listing every problem."""
    return config_from_bytes(read_config_file(path), str(path), env=env)


def read_config_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a config file; ConfigError (naming it) if it cannot be read."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        where = os.path.abspath(path)
        shown = f" ({where})" if where != file else ""
        hint = ""
        if isinstance(exc, FileNotFoundError):
            hint = (
                "; name the file with --config FILE (or SEKISHO_CONFIG), e.g. a copy of "
                "examples/sekisho.yaml"
            )
        raise ConfigError(
            [ConfigProblem(file, "", f"cannot read{shown}: {exc.strerror}{hint}")]
        ) from None
    return data


def config_from_bytes(
    data: bytes, file: str = "<config>", *, env: dict[str, str] | None = None
) -> Config:
    """Decode, expand and validate a config file's bytes (``file`` names it in problems)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [
                ConfigProblem(
                    file,
                    f"line {line}",
                    f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); save "
                    "the file as UTF-8 (a Shift_JIS or CP932 file must be converted: "
                    "iconv -f CP932 -t UTF-8)",
                )
            ]
        ) from None
    return parse_config(text.removeprefix("\ufeff"), file, env=env)


def parse_config(text: str, file: str = "<config>", *, env: dict[str, str] | None = None) -> Config:
    try:
        raw = strict_yaml.load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"line {mark.line + 1}, column {mark.column + 1}"
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            [ConfigProblem(file, where, f"not valid YAML: {reason}{_yaml_hint(text, mark)}")]
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem(file, "", "must be a YAML mapping at the top level")])
    # Every problem at once, not one stage at a time: a missing ${VAR} does not hide a typo
    # further down. A value whose variable is missing is not judged again (it is empty).
    problems: list[ConfigProblem] = []
    secrets: dict[str, str] = {}  # a value taken from the environment -> its variable
    expanded = _expand(
        raw, env if env is not None else dict(os.environ), file, "", problems, secrets
    )
    unset = {_ID_LABEL.sub("", p.path) for p in problems}

    def new(found: list[ConfigProblem]) -> list[ConfigProblem]:
        return [p for p in found if _ID_LABEL.sub("", p.path) not in unset]

    try:
        model = ConfigModel.model_validate(expanded)
    except ValidationError as exc:
        problems += new(_problems_from(exc, expanded, file, _ScalarTexts(text)))
        # The checks that need a whole model (stores, policies) still run on the file with
        # the faulty values taken out, so their problems come in this report too.
        repaired = _without_faults(expanded, exc)
        if repaired is None:
            raise ConfigError(_unquoted(problems, secrets)) from None
        model = repaired
    seen = {_ID_LABEL.sub("", p.path) for p in problems}
    later, config = _checked(model, file)
    problems += [p for p in new(later) if _ID_LABEL.sub("", p.path) not in seen]
    if problems or config is None:
        raise ConfigError(_unquoted(problems, secrets))
    return config


# A value from the environment this long or longer may be a secret: a problem that quotes it
# names its variable instead. Shorter ones (a port, a country code) are left as they are.
_SECRET_MIN = 8


def _unquoted(problems: list[ConfigProblem], secrets: dict[str, str]) -> list[ConfigProblem]:
    """``problems`` with each value taken from the environment written as its reference
    (``${NAME}``): a secret referenced in the wrong place (a country, an id) is reported to a
    terminal, a CI log or the gateway's log without its value."""
    if not secrets:
        return problems
    values = sorted(secrets, key=len, reverse=True)

    def hidden(text: str) -> str:
        for value in values:
            if value in text:
                text = text.replace(value, f"${{{secrets[value]}}}")
        return text

    return [ConfigProblem(p.file, hidden(p.path), hidden(p.reason)) for p in problems]


def _without_faults(data: dict[str, Any], exc: ValidationError) -> ConfigModel | None:
    """The model of ``data`` with each faulty value removed (its default applies), if that
    validates within a few rounds; None where a fault cannot be removed (a required value, a
    list item)."""
    current: Any = copy.deepcopy(data)
    errors = exc.errors()
    for _ in range(3):
        for err in errors:
            loc = _real_loc(err["loc"], current, err["type"])
            if (
                not loc
                or not isinstance(loc[-1], str)
                or loc[-1] == _KEY
                or err["type"] == "missing"
            ):
                return None
            node = current
            for part in loc[:-1]:
                try:
                    node = node[part]
                except (KeyError, IndexError, TypeError):
                    return None
            if not isinstance(node, dict) or loc[-1] not in node:
                return None
            del node[loc[-1]]
        try:
            return ConfigModel.model_validate(current)
        except ValidationError as again:
            errors = again.errors()
    return None


def _checked(model: ConfigModel, file: str) -> tuple[list[ConfigProblem], Config | None]:
    """The cross checks and the policies' compilation of a model: the problems, and the
    config with its policies compiled when there are none."""
    found = _cross_checks(model, file)
    try:
        config = Config(model, file)
        _compile_policies(config)
    except ConfigError as exc:
        return found + exc.problems, None
    except Exception:
        if found:  # a model missing what compilation assumes: reported once it is fixed
            return found, None
        raise
    return found, None if found else config


def scanner_for(tenant: Tenant) -> Scanner:
    """The classifier configured for one tenant."""
    from sekisho.classify import Scanner

    rules, labels = _detection_rules(tenant, f"tenants.{tenant.name}.detection")
    return Scanner(rules, min_score=tenant.detection.min_score, labels=tuple(labels))


def _detection_rules(tenant: Tenant, where: str) -> tuple[list[CustomRule], list[str]]:
    from sekisho.classify import rules_from_config

    d = tenant.detection
    section = {
        "custom": [r.model_dump(exclude_none=True) for r in d.custom],
        "labels": list(d.labels),
    }
    return rules_from_config(section, where)


def json_schema() -> dict[str, Any]:
    schema: dict[str, Any] = _with_env_references(ConfigModel.model_json_schema())
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sekisho configuration"
    return schema


# A string holding ${NAME} or ${NAME:-default}: the loader expands it before the value is
# checked, so the schema takes it wherever a value with a type or constraint is expected.
_ENV_REFERENCE = {
    "type": "string",
    "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}",
    "description": "${NAME} or ${NAME:-default}: taken from the environment when loaded",
}
_DOCUMENTATION = ("title", "description", "default", "examples")


def _with_env_references(node: Any) -> Any:
    """``node`` (a JSON Schema) with every number, boolean, enumeration and constrained
    string also accepting a ``${…}`` reference, as the loader does."""
    if isinstance(node, list):
        return [_with_env_references(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "$defs", "patternProperties"):
            out[key] = {k: _with_env_references(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "prefixItems"):
            out[key] = _with_env_references(value)
        else:
            out[key] = value
    kind = out.get("type")
    constrained = (
        kind in ("integer", "number", "boolean")
        or "enum" in out
        or "const" in out
        or (kind == "string" and ({"pattern", "format", "minLength", "maxLength"} & set(out)))
    )
    if not constrained:
        return out
    outer = {k: out.pop(k) for k in _DOCUMENTATION if k in out}
    return {**outer, "anyOf": [out, _ENV_REFERENCE]}


def _expand(
    node: Any,
    env: dict[str, str],
    file: str,
    path: str,
    out: list[ConfigProblem],
    secrets: dict[str, str],
) -> Any:
    """``node`` with every ${NAME} expanded; each value taken from the environment (8
    characters or more) goes into ``secrets`` with its variable's name."""
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name is None:  # $${: the text ${, written so it is not a reference
                return "${"
            if env.get(name):
                if len(env[name]) >= _SECRET_MIN:
                    secrets[env[name]] = name
                return env[name]
            if default is not None:
                return default
            if name in env:  # set, but to nothing: a secret that did not arrive
                out.append(
                    ConfigProblem(
                        file,
                        path,
                        f"environment variable {name} is set but empty (referenced as "
                        f"${{{name}}}); give it a value, or a default: ${{{name}:-…}}",
                    )
                )
                return ""
            out.append(
                ConfigProblem(
                    file,
                    path,
                    f"environment variable {name} is not set (referenced as ${{{name}}})",
                )
            )
            return ""

        return _ENV.sub(sub, node)
    if isinstance(node, dict):
        return {
            k: _expand(v, env, file, _join(path, _key_text(k)), out, secrets)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [
            _expand(v, env, file, f"{path}{_item_label(i, v)}", out, secrets)
            for i, v in enumerate(node)
        ]
    return node


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# "endpoints[0](sim-tokyo).base_url" names the same key as "endpoints[0].base_url"
_ID_LABEL = re.compile(r"(?<=\])\([^)]*\)")


_KEY = "[key]"  # pydantic's last location item of a problem with a mapping's key itself
_STRING_TYPES = ("string_type", "literal_error", "enum")


def _problems_from(
    exc: ValidationError, raw: Any, file: str, texts: _ScalarTexts
) -> list[ConfigProblem]:
    """One problem per key path, named as the file writes it: pydantic's union members
    (``vault``, ``str``, ``list[str]``) are not keys, the alternatives of a union are one
    problem, and a list too short only because an item of it was refused is no problem of
    its own."""
    errors = [(err, _real_loc(err["loc"], raw, err["type"])) for err in exc.errors()]
    found: dict[str, list[str]] = {}
    for err, loc in errors:
        if (err["type"] == "too_short" or err["type"].endswith("_type")) and any(
            len(other) > len(loc) and other[: len(loc)] == loc for _, other in errors
        ):
            continue  # a list's own problem is its item's; a union's other member was meant
        msg = err["msg"]
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `sekisho config schema` lists every key)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] in _STRING_TYPES and _read_as(value) is not None:
            msg = _quote_it(loc, value, texts)
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        said = found.setdefault(_render(loc, raw, texts), [])
        if msg not in said:
            said.append(msg)
    return [ConfigProblem(file, path, _one_of(said)) for path, said in found.items()]


def _one_of(messages: list[str]) -> str:
    """The messages of a union's alternatives at one key, as one."""
    hints = [m for m in messages if m.startswith("YAML read this")]
    if hints:
        return hints[0]
    prefix = "Input should be "
    if len(messages) > 1 and all(m.startswith(prefix) for m in messages):
        return prefix + " or ".join(m[len(prefix) :] for m in messages)
    return "; ".join(messages)


def _real_loc(loc: tuple[Any, ...], raw: Any, kind: str) -> tuple[Any, ...]:
    """``loc`` (of a problem of type ``kind``) without what is not a key of the file: a
    union member's name or tag, a validator's name."""
    real: list[Any] = []
    node = raw
    for n, item in enumerate(loc):
        last = n == len(loc) - 1
        if isinstance(node, list) and isinstance(item, int) and not isinstance(item, bool):
            real.append(item)
            node = node[item] if item < len(node) else None
        elif isinstance(node, dict) and item in node:
            real.append(item)
            node = node[item]
        elif item == _KEY or (isinstance(node, dict) and last and kind == "missing"):
            real.append(item)  # the key itself, or a missing key
            node = None
        # else: not a key of the file (a union member, on a value or a mapping)
    return tuple(real)


def _render(loc: tuple[Any, ...], raw: Any, texts: _ScalarTexts) -> str:
    """The key path of a real location: ``endpoints[0](sim-tokyo).jurisdiction.country``."""
    path = ""
    node = raw
    for n, item in enumerate(loc):
        if item == _KEY:
            continue
        if isinstance(node, list):
            path += _item_label(item, node[item] if item < len(node) else None)
            node = node[item] if item < len(node) else None
            continue
        key = item if isinstance(item, str) else texts.get((*loc[: n + 1], _KEY), _key_text(item))
        path = _join(path, key)
        node = node.get(item) if isinstance(node, dict) else None
    return path


def _item_label(index: int, item: Any) -> str:
    if isinstance(item, dict) and isinstance(item.get("id"), str):
        return f"[{index}]({item['id']})"
    return f"[{index}]"


def _key_text(key: Any) -> str:
    if isinstance(key, bool):
        return str(key).lower()
    return str(key)


def _read_as(value: Any) -> str | None:
    """What YAML made of a value written where text is expected, if not text."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, int | float):
        return "a number"
    return None


def _quote_it(loc: tuple[Any, ...], value: Any, texts: _ScalarTexts) -> str:
    """YAML 1.1 reads NO (Norway) as false, 2024-10-21 as a date and 1.3 as a number: say so,
    and how to write it as text."""
    written = texts.get(loc, _key_text(value))
    shown = written.replace("\\", "\\\\").replace('"', '\\"')
    if loc and loc[-1] == _KEY:
        return f'YAML read this key as {_read_as(value)} ({written}); quote it: "{shown}":'
    key = loc[-1] if loc and isinstance(loc[-1], str) else None
    example = f'{key}: "{shown}"' if key else f'"{shown}"'
    return f"YAML read this as {_read_as(value)} ({written}); quote it: {example}"


class _ScalarTexts:
    """The text as written of each scalar YAML did not read as a string (a boolean, number or
    date), by location; a mapping key's location ends in ``[key]``. Worked out only when a
    problem needs it, from the file's node tree (aliases not followed again)."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._texts: dict[tuple[Any, ...], str] | None = None

    def get(self, loc: tuple[Any, ...], default: str) -> str:
        if self._texts is None:
            self._texts = {}
            try:
                root = yaml.compose(self._text, Loader=strict_yaml.StrictLoader)
            except yaml.YAMLError:
                root = None
            if root is not None:
                self._walk(root, (), set())
        return self._texts.get(loc, default)

    def _walk(self, node: yaml.Node, loc: tuple[Any, ...], seen: set[int]) -> None:
        assert self._texts is not None
        if id(node) in seen:  # an alias: its text is where the anchor is
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue
                key = _scalar(key_node)
                if key_node.tag != _STR_TAG:
                    self._texts[(*loc, key, _KEY)] = key_node.value
                self._walk(value_node, (*loc, key), seen)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, (*loc, i), seen)
        elif isinstance(node, yaml.ScalarNode) and node.tag != _STR_TAG:
            self._texts[loc] = node.value


_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _scalar(node: yaml.ScalarNode) -> Any:
    if node.tag == _STR_TAG:
        return node.value
    try:
        return strict_yaml.StrictLoader("").construct_object(node)
    except yaml.YAMLError:
        return node.value


def _yaml_hint(text: str, mark: Any) -> str:
    """A hint for YAML's own errors that a ${VAR} causes: ``{port: ${PORT}}`` is not valid
    YAML (a ``{`` inside a flow mapping), ``{port: "${PORT}"}`` is."""
    if mark is None:
        return ""
    lines = text.splitlines()
    line = lines[mark.line] if mark.line < len(lines) else ""
    if "${" in line:
        return (
            ' (a ${VAR} inside a {…} or […] must be quoted: {port: "${PORT}"}; or write the '
            "mapping one key a line)"
        )
    return ""


def _cross_checks(model: ConfigModel, file: str) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    seen: dict[str, int] = {}
    for i, ep in enumerate(model.endpoints):
        if ep.id in seen:
            problems.append(
                ConfigProblem(
                    file,
                    f"endpoints[{i}].id",
                    f"{ep.id!r} already used by endpoints[{seen[ep.id]}]",
                )
            )
        seen.setdefault(ep.id, i)
        if ep.api_key_file is not None:
            from sekisho.providers.keyfile import KeyFileUnusable, read_key_file

            try:
                read_key_file(ep.api_key_file)
            except KeyFileUnusable as exc:
                problems.append(
                    ConfigProblem(file, f"endpoints[{i}]({ep.id}).api_key_file", str(exc))
                )
        if ep.tls is not None:
            from sekisho.tls import TLSSettingError, client_context

            try:
                client_context(ep.tls)
            except TLSSettingError as exc:
                where = f"endpoints[{i}]({ep.id}).tls.{exc.field}"
                problems.append(ConfigProblem(file, where, exc.reason))
    if model.server.tls is not None:
        from sekisho.tls import TLSSettingError, server_context

        try:
            server_context(model.server.tls)
        except TLSSettingError as exc:
            problems.append(ConfigProblem(file, f"server.tls.{exc.field}", exc.reason))
    for name, tenant in model.tenants.items():
        if tenant.home_region not in model.regions:
            known = ", ".join(sorted(model.regions))
            problems.append(
                ConfigProblem(
                    file,
                    f"tenants.{name}.home_region",
                    f"unknown region {tenant.home_region!r}; declared regions: {known}",
                )
            )
    known_tenants = ", ".join(sorted(model.tenants))
    for i, issuer in enumerate(model.auth.oidc if model.auth is not None else []):
        named = [("tenant", issuer.tenant)] if issuer.tenant is not None else []
        named += [(f"tenant_map.{claim}", t) for claim, t in issuer.tenant_map.items()]
        for key, tenant_name in named:
            if tenant_name not in model.tenants:
                problems.append(
                    ConfigProblem(
                        file,
                        f"auth.oidc[{i}].{key}",
                        f"unknown tenant {tenant_name!r}; declared tenants: {known_tenants}",
                    )
                )
    from sekisho.store import validate_regions

    problems.extend(validate_regions(model.regions, Path(model.server.data_dir), file))
    return problems


def _compile_policies(config: Config) -> None:
    """Compile every tenant's policy now, so a bad policy stops start-up with its key path."""
    from sekisho.classify import TYPES
    from sekisho.policy.compiler import compile_policy

    problems: list[ConfigProblem] = []
    compiled = {}
    for name, tenant in config.tenants.items():
        try:
            compiled[name] = compile_policy(
                tenant.policy,
                config.catalogue,
                home_country=tenant.home_country,
                source=config.source_file,
                path=f"tenants.{name}.policy",
                default_classification=tenant.default_classification,
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
    for name, tenant in config.tenants.items():
        where = f"tenants.{name}.detection"
        try:
            _detection_rules(tenant, where)
        except ValueError as exc:
            # The classifier's message starts with the key path it was given, made longer
            path, sep, reason = str(exc).partition(": ")
            if not (sep and path.startswith(where)):
                path, reason = where, str(exc)
            problems.append(ConfigProblem(config.source_file, path, reason))
        unknown = sorted(set(tenant.detection.output.types) - set(TYPES))
        if unknown:
            problems.append(
                ConfigProblem(
                    config.source_file,
                    f"tenants.{name}.detection.output.types",
                    f"unknown finding type(s) {', '.join(unknown)}; known: {', '.join(TYPES)}",
                )
            )
    if problems:
        raise ConfigError(problems)
    config.policies = compiled
