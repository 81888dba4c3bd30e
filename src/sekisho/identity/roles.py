"""Roles and what each may do: one table, one check.

Least privilege: an ``app`` key can call models and nothing else; an ``auditor`` sees the ledger,
tenants and usage but never prompt or output content; a ``developer`` manages only
the keys they made and sees only their own usage; a ``tenant-admin`` manages every key and sees
the usage of its own tenant, and nothing of any other; an ``admin`` runs the gateway
(configuration, keys, policy) but does not call models with its administrative credential.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from sekisho.errors import PermissionDenied

if TYPE_CHECKING:
    from sekisho.identity.keys import Principal


class Permission(StrEnum):
    MODELS_CALL = "models.call"  # /v1/chat/completions, /v1/embeddings, /v1/models
    TENANTS_READ = "tenants.read"  # tenant settings (not prompt content)
    KEYS_MANAGE = "keys.manage"  # every key of every tenant
    KEYS_OWN = "keys.own"  # keys the caller created, in the caller's tenant
    POLICY_RELOAD = "policy.reload"
    USAGE_READ = "usage.read"  # usage of every tenant, key and model
    USAGE_OWN = "usage.own"  # usage of the caller's own keys
    LEDGER_READ = "ledger.read"
    TENANT_OWN = "tenant.own"  # the caller's own tenant's settings, and the endpoint catalogue
    KEYS_TENANT = "keys.tenant"  # every key of the caller's tenant that it could have made
    USAGE_TENANT = "usage.tenant"  # usage of the caller's own tenant
    CONTENT_READ = "content.read"  # reserved: stored prompts and outputs of others; no route


ROLES: tuple[str, ...] = ("admin", "auditor", "tenant-admin", "developer", "app")

P = Permission
PERMISSIONS: dict[str, frozenset[Permission]] = {
    "admin": frozenset(
        {P.TENANTS_READ, P.KEYS_MANAGE, P.KEYS_OWN, P.POLICY_RELOAD, P.USAGE_READ, P.USAGE_OWN}
    ),
    "auditor": frozenset({P.TENANTS_READ, P.USAGE_READ, P.LEDGER_READ}),
    "tenant-admin": frozenset(
        {P.TENANT_OWN, P.KEYS_TENANT, P.KEYS_OWN, P.USAGE_TENANT, P.USAGE_OWN}
    ),
    "developer": frozenset({P.MODELS_CALL, P.KEYS_OWN, P.USAGE_OWN}),
    "app": frozenset({P.MODELS_CALL}),
}
# What the OpenAI-compatible routes require (the HTTP layer calls require() with these).
MODEL_ROUTES: dict[str, Permission] = {
    "/v1/chat/completions": P.MODELS_CALL,
    "/v1/embeddings": P.MODELS_CALL,
    "/v1/responses": P.MODELS_CALL,
    "/v1/completions": P.MODELS_CALL,
    "/v1/models": P.MODELS_CALL,
}

# What reaches beyond the caller's own tenant: a role holding any of these is the gateway's
# (its operators and auditors), and only a key manager may hand it out.
GATEWAY_WIDE: frozenset[Permission] = frozenset(
    {P.TENANTS_READ, P.KEYS_MANAGE, P.POLICY_RELOAD, P.USAGE_READ, P.LEDGER_READ, P.CONTENT_READ}
)

# The roles confined to a tenant: its own keys (what its cap of active keys counts); an
# admin or auditor key booked to a tenant is the gateway operator's.
TENANT_ROLES: tuple[str, ...] = tuple(r for r in ROLES if not PERMISSIONS[r] & GATEWAY_WIDE)

# Nobody holds CONTENT_READ, and no route asks for it: no role, the auditor's included, reads
# the prompts and outputs others stored (the auditor promise depends on it).

# When a principal has several roles, the one shown as `role` is the most privileged.
_RANK = {role: i for i, role in enumerate(ROLES)}


def check_role(role: str) -> str:
    if role not in PERMISSIONS:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    return role


def primary_role(roles: frozenset[str]) -> str:
    return min(roles, key=lambda r: _RANK.get(r, len(_RANK)))


def permissions_of(roles: frozenset[str]) -> frozenset[Permission]:
    out: frozenset[Permission] = frozenset()
    for role in roles:
        out |= PERMISSIONS.get(role, frozenset())
    return out


def allows(principal: Principal, permission: Permission) -> bool:
    return any(permission in PERMISSIONS.get(role, ()) for role in principal.roles)


def allows_beyond_tenant(principal: Principal) -> bool:
    """Whether the principal holds a gateway-wide permission (an operator or an auditor)."""
    return bool(permissions_of(principal.roles) & GATEWAY_WIDE)


def require(principal: Principal, permission: Permission) -> None:
    """Raise PermissionDenied naming the caller's role and the permission it lacks."""
    if allows(principal, permission):
        return
    who = "+".join(sorted(principal.roles, key=lambda r: _RANK.get(r, len(_RANK))))
    holders = [r for r in ROLES if permission in PERMISSIONS[r]]
    needed = f"roles that have it: {', '.join(holders)}" if holders else "no role has it"
    raise PermissionDenied(
        f"Role '{who}' (principal {principal.subject}) lacks permission '{permission}' ({needed}).",
        code="insufficient_role",
    )


def may_grant(granter: frozenset[str], role: str) -> bool:
    """Key managers may create any role; a tenant's key managers any role confined to the
    tenant; owners of keys only roles confined to the tenant granting nothing they lack. A
    gateway-wide role comes from a key manager only, even to whoever holds its permissions
    (an auditor who is also a tenant's developer): such a key reaches every tenant and
    outlives the groups that made its maker an auditor."""
    held = permissions_of(granter)
    wanted = PERMISSIONS[check_role(role)]
    if Permission.KEYS_MANAGE in held:
        return True
    if wanted & GATEWAY_WIDE:
        return False
    if Permission.KEYS_TENANT in held:
        return True
    return Permission.KEYS_OWN in held and wanted <= held
