"""Who is calling and what they may do: API keys, OIDC tokens, roles, limits and usage."""

from sekisho.identity.authenticator import Authenticator
from sekisho.identity.keys import PREFIX, KeyInfo, KeyStore, Principal
from sekisho.identity.roles import (
    PERMISSIONS,
    ROLES,
    Permission,
    allows,
    permissions_of,
    require,
)
from sekisho.identity.spec import AuthSpec, GatewayLimitsSpec, LimitsSpec, OIDCIssuerSpec, Quota

__all__ = [
    "PERMISSIONS",
    "PREFIX",
    "ROLES",
    "AuthSpec",
    "Authenticator",
    "GatewayLimitsSpec",
    "KeyInfo",
    "KeyStore",
    "LimitsSpec",
    "OIDCIssuerSpec",
    "Permission",
    "Principal",
    "Quota",
    "allows",
    "permissions_of",
    "require",
]
