"""The admin API under ``/admin/v1``: tenants, keys, policy reload, usage; OpenAPI from one table.

Every route names the permissions it needs (any one suffices); the OpenAPI document served at
``/admin/v1/openapi.json`` is generated from the same table, so it cannot drift from the code.
Every action is recorded through an AdminAuditSink *before* it takes effect (as Vault audits a
request before serving it): when the record cannot be written, the action is refused. The
outcome goes to a structured log line.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sekisho.api import http
from sekisho.errors import (
    ConfigError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    SekishoError,
    ServiceUnavailable,
)
from sekisho.identity import Authenticator, KeyInfo, KeyStore, Permission, Principal
from sekisho.identity.keys import MAX_LIFETIME_SECONDS, TenantKeyLimit, new_key_id, shown_time
from sekisho.identity.limits import Limiter
from sekisho.identity.roles import (
    GATEWAY_WIDE,
    TENANT_ROLES,
    allows,
    allows_beyond_tenant,
    may_grant,
    permissions_of,
    require,
)
from sekisho.identity.usage import UsageStore
from sekisho.logs import mask_values
from sekisho.routing import Health
from sekisho.routing.catalogue import Endpoint

log = logging.getLogger("sekisho.admin")

PREFIX = "/admin/v1"
_MAX_BODY = 64 * 1024
P = Permission


class AdminAuditSink(Protocol):
    """Where admin actions are recorded (the lead connects it to the ledger)."""

    async def admin(
        self, actor: str, action: str, target: str, details: Mapping[str, Any]
    ) -> None: ...


class LogAuditSink:
    """Records admin actions as log lines only; for deployments without a ledger."""

    async def admin(self, actor: str, action: str, target: str, details: Mapping[str, Any]) -> None:
        log.info("admin audit", extra={"actor": actor, "action": action, "target": target,
                                       "details": dict(details)})  # fmt: skip


# -- request and response bodies (their JSON Schemas go into the OpenAPI document) -------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateKey(_Body):
    tenant: str | None = Field(
        default=None, description="Tenant of the key; developers may omit it (their own tenant)"
    )
    role: Literal["admin", "auditor", "tenant-admin", "developer", "app"] = Field(
        default="app", description="Role the key acts with"
    )
    name: str = Field(default="", max_length=200, description="Label for people")
    models: list[str] | None = Field(
        default=None, min_length=1,
        description="Models the key may use (absent: all allowed); names are not empty and "
        "have no comma",
    )  # fmt: skip
    expires_in_seconds: float | None = Field(
        default=None, gt=0, le=MAX_LIFETIME_SECONDS, allow_inf_nan=False,
        description="Lifetime, at most 100 years (3153600000 s); absent: the key does not expire",
    )  # fmt: skip

    @field_validator("models")
    @classmethod
    def _model_names(cls, models: list[str] | None) -> list[str] | None:
        for name in models or ():
            if not name or "," in name:
                raise ValueError(f"{name!r} is not a model name (one is not empty, without commas)")
        return models


class RotateKey(_Body):
    overlap_seconds: float = Field(
        default=86400, ge=0, le=90 * 86400,
        description="How long the old key keeps working next to its successor",
    )  # fmt: skip


class KeyView(BaseModel):
    key_id: str = Field(description="Public id of the key (part of the key itself)")
    tenant: str = Field(description="Tenant the key acts for")
    role: str = Field(description="Role of the key")
    name: str = Field(description="Label")
    models: list[str] | None = Field(description="Models the key may use; null: all allowed")
    state: Literal["active", "expired", "revoked"] = Field(description="State now")
    created_at: str = Field(description="Creation time (UTC, ISO 8601)")
    expires_at: str | None = Field(description="Expiry (UTC, ISO 8601), null: none")
    revoked_at: str | None = Field(description="Revocation time, null: not revoked")
    owner: str | None = Field(description="Subject of whoever created the key")
    rotated_from: str | None = Field(description="Key this key succeeded")
    successor: str | None = Field(description="Key that replaced this key")


class KeyCreated(BaseModel):
    key: str = Field(description="The secret API key; shown only in this response")
    info: KeyView = Field(description="The stored description of the key")


class KeyList(BaseModel):
    data: list[KeyView] = Field(description="Keys visible to the caller")


class TenantView(BaseModel):
    name: str = Field(description="Tenant name")
    settings: dict[str, Any] = Field(description="The tenant's settings (scalar values)")
    limits: dict[str, Any] | None = Field(description="Tenant-wide limits, null: none")
    key_limits: dict[str, Any] | None = Field(description="Limits of each key, null: none")


class TenantList(BaseModel):
    data: list[TenantView] = Field(description="Configured tenants")


class EndpointView(BaseModel):
    id: str = Field(description="Endpoint id")
    family: str = Field(description="API family (openai, azure_openai)")
    models: list[str] = Field(description="Model names clients may use for it, aliases included")
    jurisdiction: str = Field(description="Country and region of its compute (ISO 3166-1/region)")
    operator: dict[str, Any] = Field(description="Who runs it: name, country, parent")
    data_terms: dict[str, Any] = Field(description="Provider-side retention and training terms")
    certifications: list[str] = Field(description="Certifications declared for it")
    deployment: str = Field(description="on_premises, private_cloud or public_cloud")
    confidential_computing: bool = Field(description="Prompts processed in attested TEEs")
    weight: float = Field(description="Share of traffic among equally preferred endpoints")
    credential: str = Field(
        description="How sekisho authenticates: api_key, api_key_file, token (auth type) or none; "
        "never the secret"
    )
    max_concurrency: int | None = Field(
        description="In-flight cap (all workers together; with redis: all instances too)"
    )
    simulated: bool = Field(description="A sekisho simulator: its answers are made up")
    health: dict[str, Any] = Field(
        description="This process's view: up, consecutive_failures, down_for_seconds, "
        "in_flight, waiting, last_error; with redis: also slots_in_use_shared (all processes "
        "and instances, as last seen)"
    )


class EndpointList(BaseModel):
    data: list[EndpointView] = Field(description="The endpoint catalogue, with health")


class UsageRowView(BaseModel):
    tenant: str = Field(description="Tenant")
    key_id: str = Field(description="API key id or OIDC subject pseudonym")
    model: str = Field(description="Model name as requested")
    requests: int = Field(description="Requests settled")
    prompt_tokens: int = Field(description="Prompt tokens")
    completion_tokens: int = Field(description="Completion tokens")
    total_tokens: int = Field(description="prompt_tokens + completion_tokens")


class UsageReport(BaseModel):
    since: str = Field(description="First day included (ISO date)")
    until: str = Field(description="Last day included (ISO date)")
    data: list[UsageRowView] = Field(description="One row per tenant, key and model")


class WhoAmI(BaseModel):
    tenant: str = Field(description="Tenant the caller acts for")
    subject: str = Field(description="Who the caller is")
    key_id: str = Field(description="Key id or OIDC pseudonym")
    roles: list[str] = Field(description="Roles held")
    permissions: list[str] = Field(description="Permissions those roles grant")
    auth: str = Field(description="api_key or oidc")


class ReloadResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    reloaded: bool = Field(description="Whether a new policy is in force")
    policies: dict[str, str] = Field(
        default_factory=dict, description="Each tenant's policy digest now in force"
    )
    changed: list[str] = Field(default_factory=list, description="Tenants whose policy changed")
    certificates: dict[str, str] = Field(
        default_factory=dict,
        description="Expiry (ISO 8601) of each certificate the gateway presents, read again "
        "from its file: the listener's (listener) and endpoint client certificates "
        "(endpoint/ID); new connections use them",
    )


# -- routing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    description: str
    format: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # below /admin/v1, with {name} placeholders
    operation: str  # stable name; also the audit action
    summary: str
    permissions: tuple[Permission, ...] | None  # any one suffices; None: public
    handler: str  # AdminAPI method name
    response: type[BaseModel] | None
    body: type[BaseModel] | None = None
    query: tuple[Query, ...] = ()
    status: int = 200
    pattern: re.Pattern[str] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path)
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))

    @property
    def params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)


_USAGE_QUERY = (
    Query("tenant", "Only this tenant"),
    Query("key_id", "Only this key"),
    Query("model", "Only this model"),
    Query("since", "First day (ISO date; default: first of this month)", "date"),
    Query("until", "Last day (ISO date; default: today)", "date"),
)
KEYS_ANY = (P.KEYS_MANAGE, P.KEYS_TENANT, P.KEYS_OWN)
TENANT_ANY = (P.TENANTS_READ, P.TENANT_OWN)

ROUTES: tuple[Route, ...] = (
    Route("GET", "/openapi.json", "openapi", "This document", None, "openapi", None),
    Route("GET", "/whoami", "whoami", "Who the caller is and what it may do", (), "whoami", WhoAmI),
    Route("GET", "/tenants", "tenants.list", "List tenants (tenant admins: their own)",
          TENANT_ANY, "list_tenants", TenantList),
    Route("GET", "/tenants/{tenant}", "tenants.get", "One tenant", TENANT_ANY, "get_tenant",
          TenantView),
    Route("GET", "/endpoints", "endpoints.list",
          "The endpoint catalogue: sovereignty facts, credential kind, health",
          TENANT_ANY, "list_endpoints", EndpointList),
    Route("GET", "/keys", "keys.list",
          "List keys (tenant admins: their tenant's; developers: their own)", KEYS_ANY,
          "list_keys", KeyList, query=(Query("tenant", "Only keys of this tenant"),)),
    Route("POST", "/keys", "keys.create", "Create a key; the secret is returned once", KEYS_ANY,
          "create_key", KeyCreated, body=CreateKey, status=201),
    Route("GET", "/keys/{key_id}", "keys.get", "One key", KEYS_ANY, "get_key", KeyView),
    Route("POST", "/keys/{key_id}/rotate", "keys.rotate",
          "Create a successor; the old key works for overlap_seconds more", KEYS_ANY,
          "rotate_key", KeyCreated, body=RotateKey, status=201),
    Route("POST", "/keys/{key_id}/revoke", "keys.revoke", "Revoke now, in every process",
          KEYS_ANY, "revoke_key", KeyView),
    Route("POST", "/policy/reload", "policy.reload", "Reload and recompile policies",
          (P.POLICY_RELOAD,), "reload_policy", ReloadResult),
    Route("GET", "/usage", "usage.get",
          "Usage per tenant, key and model (tenant admins: their tenant; developers: own)",
          (P.USAGE_READ, P.USAGE_TENANT, P.USAGE_OWN), "get_usage", UsageReport,
          query=_USAGE_QUERY),
)  # fmt: skip


@dataclass(slots=True)
class Request:
    route: Route
    principal: Principal | None
    params: dict[str, str]
    query: dict[str, str]
    body: BaseModel | None
    rid: str
    recorded: bool = False
    target: str = "-"
    denied: bool = False  # the refusal is in the ledger
    asked: dict[str, Any] = field(default_factory=dict)  # what a refusal records it was for


class AdminAPI:
    """ASGI-level handler for everything under /admin/v1."""

    def __init__(
        self,
        *,
        keys: KeyStore,
        authenticator: Authenticator,
        limiter: Limiter | None,
        usage: UsageStore | None,
        tenants: Mapping[str, object],
        reload_policy: Callable[[], Awaitable[dict[str, Any]]],
        audit: AdminAuditSink,
        read_timeout: float = http.READ_TIMEOUT,
        endpoints: Sequence[Endpoint] = (),
        health: Health | None = None,
    ) -> None:
        self.read_timeout = read_timeout  # server.read_timeout_seconds, for request bodies
        self.endpoints = endpoints
        self.health = health
        self.keys = keys
        self.authenticator = authenticator
        self.limiter = limiter
        self.usage = usage if usage is not None else (limiter.usage if limiter else None)
        self.tenants = tenants
        self._reload = reload_policy
        self.audit = audit
        self._openapi = orjson.dumps(openapi_document())
        missing = [
            r.handler
            for r in ROUTES
            if r.handler != "openapi" and not callable(getattr(self, r.handler, None))
        ]
        assert not missing, f"routes without handlers: {missing}"

    async def __call__(
        self, scope: http.Scope, receive: http.Receive, send: http.Send, rid: str
    ) -> None:
        started = time.perf_counter()
        req: Request | None = None
        status = 500
        try:
            req = await self._request(scope, receive, rid)
            if req.route.handler == "openapi":
                status = 200
                await http.send_bytes(send, 200, self._openapi, rid)
                return
            result = await getattr(self, req.route.handler)(req)
            if not req.recorded:
                await self._record(req, req.target, {})
            status = req.route.status
            await http.send_bytes(send, status, result.model_dump_json().encode(), rid)
        except SekishoError as exc:
            status = exc.status
            refused = status == 403 or exc.code == "key_not_rotatable"
            if req is not None and req.principal is not None and not req.denied:
                if req.recorded:
                    # recorded as about to happen, then it did not (its maker revoked
                    # meanwhile, a concurrent rotation): the ledger says so
                    await self._record_denial(req, {"outcome": "failed", "code": exc.code})
                elif refused:
                    # refused by who owns what (not_owner, a role it may not grant), or a
                    # key that does not rotate: in the ledger as refused, like a missing
                    # permission
                    await self._record_denial(
                        req, {"outcome": "denied", "code": exc.code, **req.asked}
                    )
            await http.send_error(send, exc, rid)
        finally:
            if req is not None and req.principal is not None:
                log.info(
                    "admin action",
                    extra={
                        "request_id": rid,
                        "actor": req.principal.subject,
                        "tenant": req.principal.tenant,
                        "action": req.route.operation,
                        "target": req.target,
                        "status": status,
                        "ms": round((time.perf_counter() - started) * 1000, 3),
                    },
                )

    async def _request(self, scope: http.Scope, receive: http.Receive, rid: str) -> Request:
        path: str = scope["path"]
        sub = path[len(PREFIX) :] if path.startswith(PREFIX) else path
        route, params = _match(scope["method"], sub)
        req = Request(route, None, params, {}, None, rid)
        if route.permissions is None:
            return req
        req.principal = await self.authenticator.authenticate_headers(scope["headers"])
        p = req.principal
        if route.permissions and p.tenant not in self.tenants and not allows_beyond_tenant(p):
            # a tenant's own people act for their tenant only; one the operator removed is
            # refused here as on the model routes (an operator's key booked to it still
            # serves: its permissions are the gateway's)
            raise PermissionDenied(
                f"The key's tenant {p.tenant!r} is not in the configuration; its keys manage "
                "nothing until an operator adds it back.",
                code="unknown_tenant",
            )
        if route.permissions and not any(allows(p, need) for need in route.permissions):
            await self._denied(req)
        req.query = _query(scope, route)
        if route.body is not None:
            raw = await http.read_body(scope, receive, _MAX_BODY, self.read_timeout)
            req.body = _parse(route.body, raw)
        return req

    async def _denied(self, req: Request) -> None:
        assert req.principal is not None
        perms = req.route.permissions or ()
        await self._record_denial(req, {"outcome": "denied", "needs": [str(p) for p in perms]})
        if len(perms) == 1:
            require(req.principal, perms[0])
        roles = "+".join(sorted(req.principal.roles))
        raise PermissionDenied(
            f"Role '{roles}' (principal {req.principal.subject}) lacks permission "
            f"{' or '.join(repr(str(p)) for p in perms)} needed for "
            f"{req.route.method} {PREFIX}{req.route.path}.",
            code="insufficient_role",
        )

    async def _record_denial(self, req: Request, details: Mapping[str, Any]) -> None:
        assert req.principal is not None
        req.denied = True
        req.target = _masked(req.target)
        try:
            await self.audit.admin(
                req.principal.actor, req.route.operation, req.target,
                {"request_id": req.rid, **_masked_details(details)},
            )  # fmt: skip
        except Exception:
            log.exception("could not record a denied admin request", extra={"request_id": req.rid})

    async def _record(self, req: Request, target: str, details: Mapping[str, Any]) -> None:
        """Write the audit record before the action; refuse the action if that fails."""
        assert req.principal is not None
        req.target = target = _masked(target)
        try:
            await self.audit.admin(req.principal.actor, req.route.operation, target,
                                   {"request_id": req.rid, **_masked_details(details)})  # fmt: skip
        except Exception:
            log.exception("admin audit record failed", extra={"request_id": req.rid})
            raise ServiceUnavailable(
                f"The admin action {req.route.operation} was not performed because it could "
                "not be recorded; check the ledger's health and retry.",
                code="audit_unavailable",
            ) from None
        req.recorded = True

    # -- handlers ----------------------------------------------------------------------------

    async def whoami(self, req: Request) -> WhoAmI:
        p = _who(req)
        await self._record(req, p.actor, {})
        return WhoAmI(tenant=p.tenant, subject=p.subject, key_id=p.key_id,
                      roles=sorted(p.roles), permissions=sorted(permissions_of(p.roles)),
                      auth=p.auth)  # fmt: skip

    async def list_tenants(self, req: Request) -> TenantList:
        p = _who(req)
        await self._record(req, "tenants", {})
        if allows(p, P.TENANTS_READ):
            names = sorted(self.tenants)
        else:  # a tenant's own people see their tenant only
            names = [p.tenant] if p.tenant in self.tenants else []
        return TenantList(data=[self._tenant_view(name) for name in names])

    async def get_tenant(self, req: Request) -> TenantView:
        p = _who(req)
        name = req.params["tenant"]
        if not allows(p, P.TENANTS_READ) and name != p.tenant:
            req.target = f"tenant/{name}"
            raise _not_own(p, f"tenant {name!r}")
        await self._record(req, f"tenant/{name}", {})
        if name not in self.tenants:
            raise NotFound(f"There is no tenant {name!r}; GET {PREFIX}/tenants lists them.",
                           code="tenant_not_found")  # fmt: skip
        return self._tenant_view(name)

    def _tenant_view(self, name: str) -> TenantView:
        limits = key_limits = None
        if self.limiter is not None:
            probe = Principal(tenant=name, key_id="-", role="app")
            key_q, tenant_q = self.limiter.quotas(probe)
            key_limits = key_q.model_dump(exclude_none=True) if key_q else None
            # (max_active_keys and max_concurrent_requests are among the settings: they are
            # shown there whether or not the tenant has rates and budgets)
            limits = (
                tenant_q.model_dump(
                    exclude_none=True,
                    exclude={"per_key", "max_active_keys", "max_concurrent_requests"},
                )
                if tenant_q
                else None
            )
        return TenantView(name=name, settings=_settings(self.tenants[name]), limits=limits,
                          key_limits=key_limits)  # fmt: skip

    async def list_endpoints(self, req: Request) -> EndpointList:
        await self._record(req, "endpoints", {})
        states = self.health.snapshot() if self.health is not None else {}
        idle = {"up": True, "consecutive_failures": 0, "down_for_seconds": 0.0,
                "in_flight": 0, "waiting": 0, "last_error": ""}  # fmt: skip
        return EndpointList(
            data=[
                EndpointView(
                    id=ep.id,
                    family=ep.family,
                    models=[n for m in ep.models for n in m.public_names],
                    jurisdiction=f"{ep.jurisdiction.country}/{ep.jurisdiction.region}",
                    operator=ep.operator.model_dump(exclude_none=True),
                    data_terms=ep.data_terms.model_dump(exclude_none=True),
                    certifications=[str(c) for c in ep.certifications],
                    deployment=ep.deployment,
                    confidential_computing=ep.confidential_computing,
                    weight=ep.weight,
                    credential=_credential(ep),
                    max_concurrency=ep.max_concurrency,
                    simulated=ep.simulated,
                    health=states.get(ep.id, idle),
                )
                for ep in self.endpoints
            ]
        )

    async def list_keys(self, req: Request) -> KeyList:
        p = _who(req)
        tenant = req.query.get("tenant")
        manages = allows(p, P.KEYS_MANAGE)
        if not manages and tenant is not None and tenant != p.tenant:
            req.target = f"tenant/{tenant}"
            raise _not_own(p, f"keys of tenant {tenant!r}")  # refused before it is recorded
        await self._record(req, f"tenant/{tenant}" if tenant else "keys", {})
        if manages:
            rows = self.keys.list(tenant)
        else:
            rows = [k for k in self.keys.list(p.tenant) if _may_act_on(p, k)]
        return KeyList(data=[_view(k) for k in rows])

    async def create_key(self, req: Request) -> KeyCreated:
        p = _who(req)
        body = req.body
        assert isinstance(body, CreateKey)
        # a refusal is recorded with the tenant and role it asked for
        req.target = f"tenant/{body.tenant or p.tenant}"
        req.asked = {"role": body.role, "tenant": body.tenant or p.tenant}
        if allows(p, P.KEYS_MANAGE):
            if body.tenant is None:
                raise InvalidRequest("Say which tenant the key is for.", param="tenant")
            tenant = body.tenant
        else:
            if body.tenant is not None and body.tenant != p.tenant:
                raise _not_own(p, f"keys of tenant {body.tenant!r}")
            tenant = p.tenant
        if tenant not in self.tenants:
            raise InvalidRequest(f"There is no tenant {tenant!r}.", param="tenant")
        if not may_grant(p.roles, body.role):
            who = "+".join(sorted(p.roles))
            why = (
                "they reach beyond a tenant, and only a key manager (permission 'keys.manage': "
                "admin) hands them out"
                if permissions_of(frozenset({body.role})) & GATEWAY_WIDE
                else "a key may grant only permissions its creator holds"
            )
            raise PermissionDenied(
                f"Role '{who}' may not create '{body.role}' keys: {why}.",
                code="insufficient_role",
            )
        key_id = new_key_id()
        expires = time.time() + body.expires_in_seconds if body.expires_in_seconds else None
        models = tuple(body.models) if body.models else None
        if not allows(p, P.KEYS_MANAGE):
            # A key made by a restricted key reaches no further, for no longer, than its maker:
            # otherwise a developer key limited to one model for a day could mint an unlimited
            # key that outlives it.
            if p.models is not None:
                beyond = sorted(set(models or ()) - p.models)
                if models is None or beyond:
                    raise PermissionDenied(
                        f"This key may use only {sorted(p.models)}; a key it makes may use no "
                        f"more{f' (not {beyond})' if beyond else ''}. Give 'models'.",
                        code="insufficient_role",
                    )
            if p.expires_at is not None and (expires is None or expires > p.expires_at):
                # no longer than the key that made it (nor than 100 years, should that key
                # have been stored before lifetimes were bounded)
                expires = min(p.expires_at, time.time() + MAX_LIFETIME_SECONDS)
        cap = self._key_cap(tenant)
        if cap is not None and body.role in TENANT_ROLES:
            # refused before it is recorded as done (KeyStore.create counts again, atomically)
            active = self.keys.active_count(tenant)
            if active >= cap:
                raise TenantKeyLimit(tenant, active, cap)
        details = body.model_dump(exclude_none=True) | {"tenant": tenant}
        await self._record(req, f"key/{key_id}", details)
        key, info = self.keys.create(
            tenant,
            role=body.role,
            name=body.name,
            models=models,
            expires_at=expires,
            owner=p.subject,
            key_id=key_id,
            max_active=cap,
        )
        return KeyCreated(key=key, info=_view(info))

    def _key_cap(self, tenant: str) -> int | None:
        """The operator's cap on the tenant's active keys (``max_active_keys``). Every caller
        of the API meets it, the operator's admin keys too: a credential on the network (or a
        provisioning script gone wrong) cannot fill the key store; the operator raises the cap
        in the config, or makes a key on the gateway's host (`sekisho keys create`)."""
        cap = getattr(self.tenants.get(tenant), "max_active_keys", None)
        return cap if isinstance(cap, int) else None

    def _own_key(self, req: Request) -> KeyInfo:
        p = _who(req)
        info = self.keys.get(req.params["key_id"])
        req.target = f"key/{info.key_id}"  # a refusal names the key it was aimed at
        if not allows(p, P.KEYS_MANAGE) and not _may_act_on(p, info):
            raise _not_own(p, f"key {info.key_id}")
        return info

    async def get_key(self, req: Request) -> KeyView:
        info = self._own_key(req)
        await self._record(req, f"key/{info.key_id}", {})
        return _view(info)

    async def rotate_key(self, req: Request) -> KeyCreated:
        info = self._own_key(req)
        body = req.body
        assert isinstance(body, RotateKey)
        p = _who(req)
        expires_at_max = None
        if not allows(p, P.KEYS_MANAGE):
            # The successor's secret goes to the caller: like a key it makes, it reaches no
            # further and lives no longer than the caller (a rotation renews a secret, not a
            # lifetime), or a one-model, one-day key would rotate its tenant's keys into
            # ones for every model that never expire.
            if p.models is not None and (info.models is None or not set(info.models) <= p.models):
                wide = sorted(set(info.models) - p.models) if info.models else "every model"
                raise PermissionDenied(
                    f"This key may use only {sorted(p.models)}; key {info.key_id} may use "
                    f"{wide}, and its successor would too. Ask an operator (permission "
                    "'keys.manage') or rotate it with `sekisho keys rotate-api`.",
                    code="insufficient_role",
                )
            if p.expires_at is not None:  # (nor past 100 years: see create_key)
                expires_at_max = min(p.expires_at, time.time() + MAX_LIFETIME_SECONDS)
        now = time.time()
        if info.state(now) != "active" or info.successor is not None:
            # refused before it is recorded as done (KeyStore.rotate checks again, atomically)
            raise InvalidRequest(
                f"API key {info.key_id} "
                + (f"is {info.state(now)}; only active keys rotate."
                   if info.successor is None
                   else f"was already rotated to {info.successor}; rotate that one."),
                code="key_not_rotatable",
            )  # fmt: skip
        cap = self._key_cap(info.tenant)
        if cap is not None and body.overlap_seconds > 0 and info.role in TENANT_ROLES:
            active = self.keys.active_count(info.tenant)
            if active >= cap:
                raise TenantKeyLimit(info.tenant, active, cap, rotating=True)
        successor = new_key_id()
        await self._record(
            req,
            f"key/{info.key_id}",
            {"overlap_seconds": body.overlap_seconds, "successor": successor},
        )
        try:
            key, new = self.keys.rotate(
                info.key_id,
                body.overlap_seconds,
                key_id_new=successor,
                by=p.subject,
                expires_at_max=expires_at_max,
                max_active=cap,
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="key_not_rotatable") from None
        return KeyCreated(key=key, info=_view(new))

    async def revoke_key(self, req: Request) -> KeyView:
        info = self._own_key(req)
        await self._record(req, f"key/{info.key_id}", {})
        self.keys.revoke(info.key_id)
        return _view(self.keys.get(info.key_id))

    async def reload_policy(self, req: Request) -> ReloadResult:
        await self._record(req, "policy", {})
        try:
            result = await self._reload()
        except ConfigError as exc:
            n = len(exc.problems)
            raise InvalidRequest(
                f"The configuration was not reloaded; the policy in force keeps serving. "
                f"{n} problem{'s' if n != 1 else ''}: "
                + "; ".join(str(p) for p in exc.problems)
                + ". Fix the file and reload again.",
                code="invalid_config",
            ) from None
        return ReloadResult.model_validate({"reloaded": True, **result})

    async def get_usage(self, req: Request) -> UsageReport:
        p = _who(req)
        if self.usage is None:
            raise ServiceUnavailable("Usage is not recorded by this gateway.", code="no_usage")
        q = req.query
        tenant, key_ids = q.get("tenant"), None
        # One tenant's report: its own days (a tenant abroad has its own zone).
        zone_of = tenant if tenant is not None else (None if allows(p, P.USAGE_READ) else p.tenant)
        today = date.fromisoformat(self.limiter.today(zone_of)) if self.limiter else date.today()
        since = _date(q.get("since"), "since") or today.replace(day=1)
        until = _date(q.get("until"), "until") or today
        if q.get("key_id"):
            key_ids = {q["key_id"]}
        if not allows(p, P.USAGE_READ):
            if tenant is not None and tenant != p.tenant:
                req.target = f"usage/{tenant}"
                raise _not_own(p, f"usage of tenant {tenant!r}")
            if not allows(p, P.USAGE_TENANT):
                own = {k.key_id for k in self.keys.list(p.tenant) if _owns(p, k)} | {p.key_id}
                if key_ids is not None and not key_ids <= own:
                    raise _not_own(p, f"usage of key {q['key_id']}")
                key_ids = key_ids or own
            tenant = p.tenant  # a key id of another tenant then matches nothing
        await self._record(req, f"usage/{tenant or '*'}", {k: v for k, v in q.items()})
        try:
            rows = await self.usage.query(since, until, tenant=tenant, key_ids=key_ids,
                                          model=q.get("model"))  # fmt: skip
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="since") from None
        except Exception as exc:
            if not isinstance(exc, OSError | sqlite3.Error) and not type(exc).__module__.startswith(
                "redis"
            ):
                raise
            # the store that keeps usage (Redis, usage.db) is down: not an error of sekisho's
            raise ServiceUnavailable(
                f"Usage cannot be read now ({type(exc).__name__}): the store that keeps it "
                "(Redis, or usage.db) does not answer. Retry when it does.",
                code="usage_unavailable",
                headers={"retry-after": "1"},
            ) from None
        return UsageReport(
            since=since.isoformat(),
            until=until.isoformat(),
            data=[UsageRowView(tenant=r.tenant, key_id=r.key_id, model=r.model,
                               requests=r.requests, prompt_tokens=r.prompt_tokens,
                               completion_tokens=r.completion_tokens,
                               total_tokens=r.total_tokens) for r in rows],
        )  # fmt: skip


# -- helpers ---------------------------------------------------------------------------------


def _match(method: str, sub: str) -> tuple[Route, dict[str, str]]:
    allowed: list[str] = []
    for route in ROUTES:
        m = route.pattern.match(sub)
        if m is None:
            continue
        if route.method == method:
            return route, m.groupdict()
        allowed.append(route.method)
    if allowed:
        raise MethodNotAllowed(
            f"{PREFIX}{sub} accepts {' or '.join(allowed)}, not {method}.",
            allow=tuple(allowed),
        )
    raise NotFound(
        f"Unknown admin path {PREFIX}{sub!r}; GET {PREFIX}/openapi.json lists every route.",
        code="unknown_url",
    )


def _query(scope: http.Scope, route: Route) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    known = {q.name for q in route.query}
    out: dict[str, str] = {}
    for name, values in parse_qs(raw, keep_blank_values=False).items():
        if name not in known:
            raise InvalidRequest(
                f"Unknown query parameter {name!r}; this route accepts: "
                f"{', '.join(sorted(known)) or 'none'}.",
                param=name,
            )
        out[name] = values[-1]
    return out


def _parse(model: type[BaseModel], raw: bytes) -> BaseModel:
    try:
        data = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "body"
        raise InvalidRequest(f"Invalid {where}: {err['msg']}.", param=where) from None


def _date(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be an ISO date like 2025-04-01.", param=name) from None


def _who(req: Request) -> Principal:
    assert req.principal is not None
    return req.principal


def _owns(p: Principal, key: KeyInfo) -> bool:
    return key.tenant == p.tenant and (key.owner == p.subject or key.key_id == p.key_id)


def _may_act_on(p: Principal, key: KeyInfo) -> bool:
    """Whether a caller without ``keys.manage`` may see and manage ``key``: a tenant's key
    manager any key of its tenant whose role it could have granted (never an operator's key
    that happens to belong to the tenant: rotating it would hand over its secret); others the
    keys they made while they may still grant their role (a person whose identity provider
    took a role away, an admin made a developer, keeps no hold on the admin keys they made),
    and their own."""
    if key.tenant != p.tenant:
        return False
    if key.key_id == p.key_id:
        return True
    if not may_grant(p.roles, key.role):
        return False
    return allows(p, P.KEYS_TENANT) or key.owner == p.subject


def _not_own(p: Principal, what: str) -> PermissionDenied:
    if allows(p, P.KEYS_TENANT) or allows(p, P.USAGE_TENANT):
        scope = f"the keys, usage and settings of its own tenant ({p.tenant!r})"
    else:
        scope = "its own keys and usage"
    return PermissionDenied(
        f"Role '{p.role}' (principal {p.subject}) may act only on {scope}; {what} is not "
        "among them (permission 'keys.manage', 'usage.read' or 'tenants.read' is needed).",
        code="not_owner",
    )


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(shown_time(ts)))


def _view(k: KeyInfo) -> KeyView:
    return KeyView(
        key_id=k.key_id, tenant=k.tenant, role=k.role, name=k.name,
        models=list(k.models) if k.models is not None else None,
        state=k.state(),  # type: ignore[arg-type]
        created_at=_iso(k.created_at) or "", expires_at=_iso(k.expires_at),
        revoked_at=_iso(k.revoked_at), owner=k.owner, rotated_from=k.rotated_from,
        successor=k.successor,
    )  # fmt: skip


def _settings(tenant: object) -> dict[str, Any]:
    """The scalar settings of a tenant object, whatever class the config gives it."""
    items: list[tuple[str, Any]]
    if isinstance(tenant, BaseModel):
        items = list(tenant.model_dump().items())
    else:
        names = getattr(type(tenant), "__slots__", None) or vars(tenant).keys()
        items = [(n, getattr(tenant, n, None)) for n in names]
    return {
        k: v for k, v in items
        if not k.startswith("_") and isinstance(v, str | int | float | bool)
        and k not in _NOT_SETTINGS
    }  # fmt: skip


# The tenant's name is shown apart; source_file is where the operator keeps the gateway's
# configuration on its host, not a setting of the tenant (a tenant-admin reads this view).
_NOT_SETTINGS = frozenset({"name", "source_file"})


# -- OpenAPI ---------------------------------------------------------------------------------


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for every route in ROUTES."""
    ref = "#/components/schemas/{model}"
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "object", "properties": {
                "message": {"type": "string"}, "type": {"type": "string"},
                "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]},
            }}},
        }
    }  # fmt: skip

    def schema_of(model: type[BaseModel]) -> dict[str, str]:
        s = model.model_json_schema(ref_template=ref)
        schemas.update(s.pop("$defs", {}))
        schemas[model.__name__] = s
        return {"$ref": ref.format(model=model.__name__)}

    def error(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": ref.format(model="Error")}}},
        }

    paths: dict[str, Any] = {}
    for route in ROUTES:
        op: dict[str, Any] = {
            "operationId": route.operation,
            "summary": route.summary,
            "tags": [route.operation.split(".")[0]],
        }
        params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                  for n in route.params]  # fmt: skip
        for q in route.query:
            schema = {"type": "string"} | ({"format": q.format} if q.format else {})
            params.append({"name": q.name, "in": "query", "required": False,
                           "description": q.description, "schema": schema})  # fmt: skip
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema_of(route.body)}},
            }
        ok: dict[str, Any] = {"description": "Success"}
        if route.response is not None:
            ok["content"] = {"application/json": {"schema": schema_of(route.response)}}
        elif route.handler == "openapi":
            ok["content"] = {"application/json": {"schema": {"type": "object"}}}
        op["responses"] = {str(route.status): ok}
        if route.permissions is None:
            op["security"] = []
        else:
            op["x-sekisho-permissions"] = [str(p) for p in route.permissions]
            op["responses"] |= {
                "401": error("No or invalid credentials"),
                "403": error("The caller's role lacks the permission"),
                "503": error("The action could not be recorded, so it was not performed"),
            }
            if route.body is not None or route.query:
                op["responses"]["400"] = error("Invalid request")
            if route.handler == "reload_policy":
                op["responses"]["400"] = error("The config does not validate; nothing changed")
            if route.params:
                op["responses"]["404"] = error("No such resource")
        paths.setdefault(PREFIX + route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "sekisho admin API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "An sk-sekisho-... API key or an OIDC access token"}
            },
        },
        "security": [{"bearer": []}],
    }  # fmt: skip


def _credential(ep: Endpoint) -> str:
    """How sekisho authenticates to an endpoint, never with what."""
    if ep.auth is not None:
        return f"token ({ep.auth.type})"
    if ep.api_key_file is not None:
        return "api_key_file"
    return "api_key" if ep.api_key else "none"


def _masked(text: str) -> str:
    """What an admin typed (a tenant's or a key's name, a model), as the ledger, which no
    erasure reaches, and the log may hold it: each value the detectors find masked. An
    unknown tenant asked for by a My Number is recorded as tenant/[MY_NUMBER]."""
    try:
        return mask_values(text)
    except Exception:
        return "(withheld: it could not be inspected)"


def _masked_details(details: Mapping[str, Any]) -> dict[str, Any]:
    """``details`` with each text, and each text of a list, masked as :func:`_masked` says."""
    out: dict[str, Any] = {}
    for k, v in details.items():
        if isinstance(v, str):
            out[k] = _masked(v)
        elif isinstance(v, list | tuple) and all(isinstance(x, str) for x in v):
            out[k] = [_masked(x) for x in v]
        else:
            out[k] = v
    return out
