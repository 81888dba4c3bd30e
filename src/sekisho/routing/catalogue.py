"""The endpoint catalogue: every model endpoint sekisho may send to, and its sovereignty facts.

These facts (where the compute is, who operates it, what the operator does with the data, which
certifications it holds) are what the policy decides on, what the ledger records and what
``GET /admin/v1/endpoints`` and ``sekisho policy explain`` show, so each is modelled explicitly
and validated at start-up.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sekisho._section import Section
from sekisho.errors import hide_url_passwords

_COUNTRY = re.compile(r"^[A-Z]{2}$")
# ISO 3166-1 alpha-2, officially assigned (249 codes, 2024), plus EU (the Union as a
# jurisdiction, as regulations name it). A country decides where data may go: a typo (XX, UK
# for GB) must stop start-up, not make a tenant's home a country no rule knows.
_ISO_3166 = frozenset(
    """  # one string, split: 250 quoted codes would fill 30 lines
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW
    EU
    """.split()  # noqa: SIM905
)


def _country(value: str) -> str:
    code = value.strip().upper()
    if not _COUNTRY.match(code) or code not in _ISO_3166:
        hint = " (the United Kingdom is GB)" if code == "UK" else ""
        raise ValueError(
            f"{value!r} is not an ISO 3166-1 alpha-2 country code (e.g. JP, US, DE){hint}"
        )
    return code


CountryCode = Annotated[str, AfterValidator(_country)]
country_code = _country  # the check of CountryCode, for a code inside another value

# Certifications we know how to name in reports and policies. Spelled as operators and
# procurement write them; a typo stops start-up instead of silently failing a policy check.
KNOWN_CERTIFICATIONS: frozenset[str] = frozenset(
    {
        "ISMAP",  # 政府情報システムのためのセキュリティ評価制度
        "ISMAP-LIU",  # ISMAP for Low-Impact Use
        "ISO27001",
        "ISO27017",
        "ISO27018",
        "ISO27701",
        "ISO42001",
        "SOC1",
        "SOC2",
        "SOC3",
        "PCI-DSS",
        "CSA-STAR",
        "C5",  # Germany, BSI Cloud Computing Compliance Criteria Catalogue
        "FEDRAMP",
        "HDS",  # France, Hébergeur de Données de Santé
        "SECNUMCLOUD",
        "PRIVACYMARK",  # プライバシーマーク
        "JIS-Q-15001",
        "FISC",  # a provider's statement against FISC 安全対策基準 (FISC certifies nothing)
    }
)

_CERT_SPELLINGS = {c.replace("-", "").replace(" ", ""): c for c in KNOWN_CERTIFICATIONS}


def _certification(value: str) -> str:
    key = re.sub(r"[\s\-/_]|IEC", "", value.upper())
    key = key.replace("ISO/", "ISO")
    if key in _CERT_SPELLINGS:
        return _CERT_SPELLINGS[key]
    accepted = ", ".join(sorted(KNOWN_CERTIFICATIONS))
    raise ValueError(f"unknown certification {value!r}; known: {accepted}")


Certification = Annotated[str, AfterValidator(_certification)]

# Bases on which personal data may be provided to this endpoint's operator abroad.
# appi:* follow APPI Art. 28 (外国にある第三者への提供の制限); gdpr:* follow GDPR Chapter V.
LegalBasis = Literal[
    "appi:consent",  # 本人の同意 (Art. 28(1))
    # 相当措置を継続的に講ずる体制: a contract or certification (Art. 28(1))
    "appi:equivalent_measures",
    # PPC-designated country (EEA, UK); jp-appi reads it from the endpoint's countries instead
    "appi:designated_country",
    "gdpr:adequacy",  # Art. 45 adequacy decision
    "gdpr:scc",  # Art. 46 standard contractual clauses
    "gdpr:bcr",  # Art. 47 binding corporate rules
    "gdpr:consent",  # Art. 49(1)(a)
]


class _Facts(Section):
    pass


class Jurisdiction(_Facts):
    """Where the endpoint's compute and its copies of the data physically are."""

    country: CountryCode = Field(description="ISO 3166-1 alpha-2 code of the data centre's country")
    region: str = Field(min_length=1, description="Region or data-centre name, e.g. 'tokyo'")

    @property
    def label(self) -> str:
        """``JP/tokyo``: as x-sekisho-jurisdiction and every metric's ``jurisdiction`` say it."""
        return f"{self.country}/{self.region}"


class Operator(_Facts):
    """Who runs the compute. Under APPI the operator's country counts, not only the data
    centre's."""

    name: str = Field(min_length=1, description="Legal name of the operating company")
    country: CountryCode = Field(description="Country of incorporation (ISO 3166-1 alpha-2)")
    parent: str | None = Field(default=None, description="Ultimate parent company, if any")
    parent_country: CountryCode | None = Field(
        default=None, description="Parent's country of incorporation"
    )

    @property
    def countries(self) -> frozenset[str]:
        """Every country whose law reaches the operator (own and parent's incorporation)."""
        if self.parent_country:
            return frozenset({self.country, self.parent_country})
        return frozenset({self.country})


class DataTerms(_Facts):
    """What the provider contractually does with prompts and outputs."""

    retention_days: int = Field(
        ge=0,
        le=36_500,
        description="Days the provider keeps prompts/outputs (e.g. abuse monitoring); 0 = none",
    )
    trains_on_data: bool = Field(description="Provider may use customer data to train models")
    zero_data_retention: bool = Field(
        default=False, description="Contractual zero data retention (nothing kept after response)"
    )
    legal_bases: tuple[LegalBasis, ...] = Field(
        default=(),
        description="Recorded legal bases for cross-border provision (APPI Art. 28, GDPR Ch. V)",
    )

    @model_validator(mode="after")
    def _zdr_means_no_retention(self) -> DataTerms:
        if self.zero_data_retention and self.retention_days:
            raise ValueError("zero_data_retention is true but retention_days is not 0")
        return self


class ModelEntry(_Facts):
    """One model an endpoint serves."""

    id: str = Field(min_length=1, description="Model name sent upstream")
    aliases: tuple[str, ...] = Field(
        default=(), description="Other names clients may use for it, e.g. 'gpt-4o'"
    )
    kind: Literal["chat", "embedding"] = "chat"
    deployment: str | None = Field(
        default=None, description="Azure OpenAI deployment name (azure_openai only)"
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Request parameters sent with every request for this model unless the "
        "client sets them itself, e.g. {chat_template_kwargs: {enable_thinking: false}} for "
        "Qwen3 on vLLM, or top_k",
    )

    @field_validator("params")
    @classmethod
    def _not_the_request_itself(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(set(value) & _RESERVED_PARAMS)
        if reserved:
            raise ValueError(
                f"params may not set {', '.join(reserved)}: they are the request itself"
            )
        return value

    @property
    def public_names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)

    def __hash__(self) -> int:  # params is a dict; the rest identifies the entry
        return hash((self.id, self.aliases, self.kind, self.deployment))


# What a model's params may not set: the request itself, and what sekisho decides about it.
_RESERVED_PARAMS = frozenset(
    {"model", "messages", "input", "stream", "stream_options", "tools", "functions", "user"}
)


class Timeouts(_Facts):
    connect: float = Field(default=5.0, gt=0, le=300, description="Seconds to open a connection")
    first_byte: float = Field(
        default=60.0, gt=0, le=3600, description="Seconds until response headers"
    )
    total: float = Field(
        default=600.0, gt=0, le=86400, description="Seconds for the whole exchange"
    )


Deployment = Literal["on_premises", "private_cloud", "public_cloud"]


class TLS(_Facts):
    """How sekisho checks an https endpoint's certificate, and how it proves its own identity
    to the endpoint (mutual TLS). Files are PEM, read at start-up; a path is taken as written
    (relative to the working directory). Certificate checks cannot be switched off: an
    endpoint with a private CA (社内認証局) gets that CA in ``ca_file``."""

    ca_file: str | None = Field(
        default=None,
        description="CA certificates to trust for this endpoint, in place of the system's trust "
        "store (a private CA; pins the endpoint to certificates that CA issued)",
    )
    client_cert: str | None = Field(
        default=None,
        description="Client certificate (and its chain) for mutual TLS; may hold the key too",
    )
    client_key: str | None = Field(
        default=None, description="Private key of client_cert, if not in client_cert's file"
    )
    client_key_password: str | None = Field(
        default=None, description="Password of an encrypted client key; use ${ENV_VAR}"
    )
    min_version: Literal["1.2", "1.3"] = Field(
        default="1.2", description="Oldest TLS version accepted from the endpoint"
    )

    @model_validator(mode="after")
    def _key_needs_cert(self) -> TLS:
        if self.client_cert is None and (self.client_key or self.client_key_password):
            raise ValueError("client_key and client_key_password need client_cert")
        return self


ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


class UpstreamAuth(_Facts):
    """Access tokens in place of a static key: the OAuth 2.0 client-credentials grant (RFC 6749
    section 4.4). ``azure_entra`` is that grant at Microsoft Entra ID for Azure OpenAI
    resources whose key authentication is switched off (``disableLocalAuth``): give
    ``tenant_id`` and the token URL and scope are Entra's. Tokens are fetched when first needed,
    kept until shortly before they expire, and sent as ``Authorization: Bearer``."""

    type: Literal["oauth2_client_credentials", "azure_entra"] = Field(
        description="oauth2_client_credentials (any OAuth 2.0 server) or azure_entra"
    )
    client_id: str = Field(min_length=1, description="The gateway's client (application) id")
    client_secret: str | None = Field(
        default=None, min_length=1, description="Its secret; use ${ENV_VAR}"
    )
    client_assertion_file: str | None = Field(
        default=None,
        description="Instead of a secret: a file holding a signed JWT that proves the gateway's "
        "identity, read again for every token (workload identity federation: AKS writes it to "
        "$AZURE_FEDERATED_TOKEN_FILE and renews it)",
    )
    tenant_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9.-]{1,100}$",
        description="azure_entra: the directory (tenant) id or domain",
    )
    token_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Token endpoint (azure_entra: derived from tenant_id unless given, e.g. "
        "for a sovereign cloud's authority)",
    )
    scope: str | None = Field(
        default=None,
        description=f"Scope to ask for (azure_entra: {ENTRA_SCOPE})",
    )
    ca_file: str | None = Field(
        default=None,
        description="CA certificates for the token endpoint in place of the system trust store",
    )

    @model_validator(mode="after")
    def _complete(self) -> UpstreamAuth:
        if (self.client_secret is None) == (self.client_assertion_file is None):
            raise ValueError("give client_secret or client_assertion_file (one of them)")
        if self.token_url is not None:
            parts = urlsplit(self.token_url)
            if parts.scheme != "https" and parts.hostname not in _LOOPBACK:
                raise ValueError(
                    "token_url must be https: the client secret or assertion travels in the "
                    "request (http is accepted only on loopback)"
                )
        if self.type == "azure_entra":
            if self.token_url is None and self.tenant_id is None:
                raise ValueError("azure_entra needs tenant_id (or token_url)")
        elif self.token_url is None:
            raise ValueError("oauth2_client_credentials needs token_url")
        elif self.tenant_id is not None:
            raise ValueError("tenant_id applies to azure_entra only")
        return self

    @property
    def url(self) -> str:
        if self.token_url is not None:
            return self.token_url
        return f"https://login.microsoftonline.com/{self.tenant_id}/oauth2/v2.0/token"

    @property
    def scopes(self) -> str | None:
        if self.scope is not None:
            return self.scope
        return ENTRA_SCOPE if self.type == "azure_entra" else None


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Framing and connection headers the HTTP client sets, and the body's type and encoding.
# Host may be given: the name a server behind an address (or an ingress) answers to.
_RESERVED_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "proxy-connection",
        "content-type",
        "accept-encoding",
    }
)


def _credential_header(fields: dict[str, Any]) -> tuple[str, str] | None:
    """The header (lower case) an endpoint's own credential goes in, and the key it comes
    from; None if it has none."""
    if fields.get("auth") is not None:
        return "authorization", "auth"
    for key in ("api_key", "api_key_file"):
        if fields.get(key):
            header = "api-key" if fields.get("family") == "azure_openai" else "authorization"
            return header, key
    return None


class Endpoint(_Facts):
    """A model endpoint and its sovereignty facts."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$", description="Stable identifier")
    family: Literal["openai", "azure_openai"] = Field(description="API family of the adapter")
    base_url: str = Field(pattern=r"^https?://", description="e.g. https://host/v1")
    api_key: str | None = Field(default=None, description="Upstream credential; use ${ENV_VAR}")
    api_key_file: str | None = Field(
        default=None,
        description="A file holding the upstream key (a mounted secret), instead of api_key: "
        "read at start and again on every reload (SIGHUP), so a rotated key needs no restart",
    )
    auth: UpstreamAuth | None = Field(
        default=None,
        description="Access tokens from an OAuth 2.0 / Entra ID token endpoint instead of api_key",
    )
    api_version: str | None = Field(default=None, description="azure_openai: api-version")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra upstream headers")
    proxy: str | None = Field(
        default=None,
        description="HTTP proxy to reach this endpoint through (egress proxy), "
        "http://[user:password@]host:port (credentials from ${ENV_VAR}); https goes through a "
        "CONNECT tunnel, TLS end to end with the endpoint",
    )
    models: tuple[ModelEntry, ...] = Field(min_length=1)
    jurisdiction: Jurisdiction
    operator: Operator
    data_terms: DataTerms
    certifications: tuple[Certification, ...] = ()
    deployment: Deployment = Field(
        default="public_cloud", description="on_premises, private_cloud or public_cloud"
    )
    confidential_computing: bool = Field(
        default=False, description="Prompts processed in attested TEEs (e.g. H100 CC mode)"
    )
    stream_usage: bool | None = Field(
        default=None,
        description="Ask for token usage on streamed answers (stream_options.include_usage), so "
        "streams count against token limits; false for a server that rejects stream_options "
        "(default: on, and for azure_openai from api_version 2024-09-01, the first to accept it)",
    )
    responses_api: bool = Field(
        default=False,
        description="The endpoint serves OpenAI's Responses API (POST /v1/responses: OpenAI, "
        "Azure OpenAI's v1 API, recent vLLM, SGLang, Ollama, LM Studio); only such endpoints "
        "are routed /v1/responses requests",
    )
    completions_api: bool = Field(
        default=False,
        description="The endpoint serves the legacy completions API (POST /v1/completions: "
        "vLLM, SGLang, Ollama, LM Studio, llama.cpp; code-completion and fill-in-the-middle "
        "tools use it); only such endpoints are routed /v1/completions requests",
    )
    weight: float = Field(default=1.0, gt=0, le=1_000_000, description="Relative share of traffic")
    max_concurrency: int | None = Field(
        default=None, gt=0, le=1_000_000, description="In-flight request cap"
    )
    timeouts: Timeouts = Timeouts()
    tls: TLS | None = Field(
        default=None, description="https only: trusted CAs, client certificate, TLS version"
    )
    simulated: bool = Field(
        default=False,
        description="A sekisho simulator, not a real model: config check and serve warn, and "
        "the admin API's endpoint list says so",
    )

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            raise ValueError("proxy port must be a number from 1 to 65535") from None
        if parts.scheme != "http" or not parts.hostname or port is None:
            raise ValueError("proxy must be http://host:port (an HTTP proxy; https is tunnelled)")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("proxy must have no path, query or fragment")
        return value

    @property
    def asks_stream_usage(self) -> bool:
        if self.stream_usage is not None:
            return self.stream_usage
        if self.family == "azure_openai":  # older API versions refuse stream_options
            return (self.api_version or "") >= "2024-09-01"
        return True

    @field_validator("headers")
    @classmethod
    def _sendable_headers(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        """Headers every request can carry: refused here, not by every request at run time
        (a bad name, a CR or LF), and none the gateway sends itself, which would go twice."""
        credential = _credential_header(info.data)
        for name, text in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(
                    f"header name {name!r} is not a valid HTTP header name (letters, digits "
                    "and !#$%&'*+-.^_`|~; no spaces or ':')"
                )
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"header {name!r} has a CR, LF or NUL in its value")
            lower = name.lower()
            if lower in _RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the gateway; it cannot be configured")
            if credential is not None and lower == credential[0]:
                raise ValueError(
                    f"header {name!r} is the credential header the gateway sends from "
                    f"{credential[1]}: give the credential there only"
                )
        return value

    @field_validator("base_url")
    @classmethod
    def _reachable_url(cls, value: str) -> str:
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018  (raises for a port outside 0..65535)
        except ValueError:
            raise ValueError(f"{value!r} has a port outside 1-65535") from None
        if not parts.hostname:
            raise ValueError(f"{value!r} names no host")
        if parts.username is not None or parts.password is not None:
            # The HTTP client refuses such a URL, and its error quoted the URL, password and
            # all, to the client, the log and /readyz: refused here, without the password.
            raise ValueError(
                f"{hide_url_passwords(value)!r} has a user or password in it: give the "
                "endpoint's credential as api_key (or api_key_file, auth, headers)"
            )
        return value

    @model_validator(mode="after")
    def _family_rules(self) -> Endpoint:
        if sum(x is not None and x != "" for x in (self.api_key, self.api_key_file, self.auth)) > 1:
            raise ValueError("give one of api_key, api_key_file and auth")
        if self.tls is not None and not self.base_url.lower().startswith("https://"):
            raise ValueError("tls settings apply to https:// endpoints; base_url is http://")
        if self.family == "azure_openai":
            if not self.api_version:
                raise ValueError("azure_openai endpoints need api_version (e.g. 2024-10-21)")
            missing = [m.id for m in self.models if not m.deployment]
            if missing:
                raise ValueError(f"azure_openai models need a deployment name: {missing}")
        names: set[str] = set()
        for m in self.models:
            for n in m.public_names:
                if n in names:
                    raise ValueError(f"model name {n!r} appears twice on endpoint {self.id!r}")
                names.add(n)
        return self

    @property
    def domestic_operator_of(self) -> str:
        return self.operator.country


class Route:
    """One way to serve a requested model: an endpoint and the model entry it would use."""

    __slots__ = ("endpoint", "model")

    def __init__(self, endpoint: Endpoint, model: ModelEntry) -> None:
        self.endpoint = endpoint
        self.model = model

    def __repr__(self) -> str:
        return f"Route({self.endpoint.id!r}, {self.model.id!r})"


# The facts of an endpoint that policies decide on (``Catalogue.facts_digest``).
_FACT_FIELDS = {
    "id", "models", "jurisdiction", "operator", "data_terms", "certifications", "deployment",
    "confidential_computing",
}  # fmt: skip


class Catalogue:
    """All endpoints, indexed by the public model names they serve."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self.by_id: dict[str, Endpoint] = {}
        self._routes: dict[str, list[Route]] = {}
        self._kinds: dict[str, str] = {}
        for ep in self.endpoints:
            if ep.id in self.by_id:
                raise ValueError(f"endpoint id {ep.id!r} is declared twice")
            self.by_id[ep.id] = ep
            for m in ep.models:
                for name in m.public_names:
                    self._routes.setdefault(name, []).append(Route(ep, m))
                    self._kinds.setdefault(name, m.kind)

    @functools.cached_property
    def facts_digest(self) -> str:
        """``sha256:…`` of every endpoint's sovereignty facts, in catalogue order: what a
        policy decides on (where it runs, who operates it and its parent, data terms,
        certifications, deployment, confidential computing) and the models it serves; not
        credentials, addresses, weights or timeouts. Part of every policy's digest, so an
        endpoint moved to another country, or given other terms, changes the digest the
        ledger's decisions carry."""
        facts = [ep.model_dump(mode="json", include=_FACT_FIELDS) for ep in self.endpoints]
        text = json.dumps(facts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()

    def routes(self, model: str) -> tuple[Route, ...]:
        """Every route serving ``model`` (an id or alias), in catalogue order."""
        return tuple(self._routes.get(model, ()))

    def kind(self, model: str) -> str | None:
        return self._kinds.get(model)

    @property
    def model_names(self) -> list[str]:
        return sorted(self._routes)
