"""The permission matrix, written out once more here as the specification it must match."""

from __future__ import annotations

import pytest

from sekisho.errors import PermissionDenied
from sekisho.identity import PERMISSIONS, ROLES, Permission, Principal, require
from sekisho.identity.roles import may_grant

P = Permission
EXPECTED = {
    # permission:         admin  auditor tenant-admin developer app
    P.MODELS_CALL:      (False, False, False, True,  True),
    P.TENANTS_READ:     (True,  True,  False, False, False),
    P.KEYS_MANAGE:      (True,  False, False, False, False),
    P.KEYS_OWN:         (True,  False, True,  True,  False),
    P.POLICY_RELOAD:    (True,  False, False, False, False),
    P.USAGE_READ:       (True,  True,  False, False, False),
    P.USAGE_OWN:        (True,  False, True,  True,  False),
    P.LEDGER_READ:      (False, True,  False, False, False),
    P.TENANT_OWN:       (False, False, True,  False, False),
    P.KEYS_TENANT:      (False, False, True,  False, False),
    P.USAGE_TENANT:     (False, False, True,  False, False),
    P.CONTENT_READ:     (False, False, False, False, False),
}  # fmt: skip


def who(*roles: str) -> Principal:
    return Principal(tenant="acme", key_id="0123456789ab", role=roles[0], roles=frozenset(roles))


def test_matrix_lists_every_permission() -> None:
    assert set(EXPECTED) == set(Permission)
    assert ROLES == ("admin", "auditor", "tenant-admin", "developer", "app")


@pytest.mark.parametrize("permission", list(Permission))
@pytest.mark.parametrize("role", ROLES)
def test_require_follows_the_matrix(role: str, permission: Permission) -> None:
    allowed = EXPECTED[permission][ROLES.index(role)]
    assert (permission in PERMISSIONS[role]) is allowed
    if allowed:
        require(who(role), permission)
    else:
        with pytest.raises(PermissionDenied) as info:
            require(who(role), permission)
        assert f"Role '{role}'" in info.value.message
        assert f"'{permission}'" in info.value.message
        assert info.value.status == 403


def test_auditor_never_reads_prompt_content_whatever_else_it_holds() -> None:
    with pytest.raises(PermissionDenied, match="no role has it"):
        require(who("auditor", "developer"), P.CONTENT_READ)


def test_several_roles_combine() -> None:
    p = who("auditor", "app")
    require(p, P.MODELS_CALL)
    require(p, P.LEDGER_READ)


@pytest.mark.parametrize(
    ("granter", "role", "ok"),
    [
        ("admin", "app", True),
        ("admin", "admin", True),
        ("developer", "app", True),
        ("developer", "developer", True),
        ("developer", "admin", False),
        ("developer", "auditor", False),
        ("developer", "tenant-admin", False),
        ("tenant-admin", "app", True),
        ("tenant-admin", "developer", True),
        ("tenant-admin", "tenant-admin", True),
        ("tenant-admin", "auditor", False),
        ("tenant-admin", "admin", False),
        ("app", "app", False),
    ],
)
def test_no_one_hands_out_more_than_they_hold(granter: str, role: str, ok: bool) -> None:
    assert may_grant(frozenset({granter}), role) is ok


@pytest.mark.parametrize("tenants_role", ["developer", "tenant-admin"])
@pytest.mark.parametrize("gateway_role", ["auditor", "admin"])
def test_only_a_key_manager_hands_out_a_gateway_wide_role(
    tenants_role: str, gateway_role: str
) -> None:
    """An auditor who is also a tenant's developer or tenant-admin (two OIDC groups) holds
    every permission of ``auditor``, yet makes no auditor key: such a key reaches every
    tenant and outlives the person's groups."""
    both = frozenset({"auditor", tenants_role})
    assert may_grant(both, gateway_role) is False
    assert may_grant(both, "app") and may_grant(both, "developer")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v1/models"])
def test_model_routes_admit_apps_and_developers_only(role: str, path: str) -> None:
    from sekisho.identity.roles import MODEL_ROUTES

    if role in ("app", "developer"):
        require(who(role), MODEL_ROUTES[path])
    else:
        with pytest.raises(PermissionDenied, match=f"Role '{role}'.*'models.call'"):
            require(who(role), MODEL_ROUTES[path])


def test_every_permission_a_role_holds_is_asked_for_somewhere() -> None:
    """`reports.read` and `incidents.read` were held by auditors (and listed by whoami) for
    "sovereignty reports" and "incidents" no route or command serves."""
    import inspect

    from sekisho.api import admin, ledger
    from sekisho.identity.roles import MODEL_ROUTES

    asked = {p for route in admin.ROUTES for p in route.permissions or ()}
    asked |= set(MODEL_ROUTES.values())
    asked |= {p for p in Permission if f"Permission.{p.name}" in inspect.getsource(ledger)}
    held = {p for role in ROLES for p in PERMISSIONS[role]}
    assert held <= asked, held - asked
    assert set(Permission) - asked == {P.CONTENT_READ}  # reserved, held by no role
