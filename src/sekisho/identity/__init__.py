"""Who is calling: API keys (and, later, OIDC identities) resolved to a Principal."""

from sekisho.identity.keys import KeyStore, Principal

__all__ = ["KeyStore", "Principal"]
