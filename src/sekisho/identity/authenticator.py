"""The one entry point the HTTP layer calls: credentials in, Principal out.

Accepted: ``Authorization: Bearer sk-sekisho-…`` (an API key), ``Authorization: Bearer <JWT>``
from a configured OIDC issuer, and ``api-key: …`` as Azure OpenAI clients send it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from sekisho.errors import AuthenticationFailed
from sekisho.identity.keys import PREFIX, KeyStore, Principal
from sekisho.identity.spec import AuthSpec

if TYPE_CHECKING:  # OIDC (PyJWT, aiohttp) is imported only when an issuer is configured
    import aiohttp

    from sekisho.identity.oidc import OIDCVerifier


class Authenticator:
    def __init__(
        self,
        keys: KeyStore,
        auth: AuthSpec | None = None,
        *,
        tenants: Collection[str] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.keys = keys
        self.oidc: OIDCVerifier | None = None
        if auth is not None and auth.oidc:
            from sekisho.identity.oidc import OIDCVerifier

            self.oidc = OIDCVerifier(auth, tenants=tenants, session=session)

    async def start(self) -> None:
        if self.oidc is not None:
            await self.oidc.start()

    async def close(self) -> None:
        if self.oidc is not None:
            await self.oidc.close()

    async def authenticate(
        self, authorization: str | None, api_key: str | None = None
    ) -> Principal:
        token = _bearer(authorization) if authorization else None
        if token is None:
            token = api_key.strip() if api_key else None
        if not token:
            raise AuthenticationFailed(
                "You didn't provide credentials. Send 'Authorization: Bearer sk-sekisho-...' "
                "(an API key) or 'Authorization: Bearer <token>' from your identity provider."
            )
        if token.startswith(PREFIX):
            return self.keys.authenticate(token)
        if token.count(".") == 2:
            if self.oidc is None:
                raise AuthenticationFailed(
                    "Bearer JWTs are not accepted here: no OIDC issuer is configured (auth.oidc). "
                    "Use an API key (sk-sekisho-...).",
                    code="invalid_token",
                )
            return await self.oidc.verify(token)
        if token.count(".") in (1, 3, 4) and token[:2] == "ey":
            # A JWT cut short or with a part too many, or an encrypted one (JWE, five parts):
            # a token, not a mistyped API key, and told so.
            raise AuthenticationFailed(
                f"Invalid bearer token: it has {token.count('.') + 1} parts, not the three of a "
                "signed JWT (header.payload.signature); encrypted tokens (JWE) are not "
                "accepted. Ask your identity provider for a signed access token.",
                code="invalid_token",
            )
        return self.keys.authenticate(token)  # explains what a sekisho key looks like

    async def authenticate_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> Principal:
        """From ASGI ``scope["headers"]``."""
        authorization = api_key = None
        for name, value in headers:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"api-key":
                api_key = value.decode("latin-1")
        return await self.authenticate(authorization, api_key)


_SCHEME_SEPARATOR = re.compile(r"[ \t]+")  # RFC 7235 says 1*SP; tabs are taken too
_SCHEME_WORD = re.compile(r"[A-Za-z]{1,20}")


def _bearer(authorization: str) -> str:
    scheme, *rest = _SCHEME_SEPARATOR.split(authorization.strip(" \t"), maxsplit=1)
    if scheme.lower() == "bearer":
        return rest[0] if rest else ""
    # Only a plain scheme word is ever repeated: whatever else came first may be the secret.
    if _SCHEME_WORD.fullmatch(scheme):
        said = f"The Authorization scheme '{scheme}' is not supported"
    elif scheme.startswith(PREFIX):
        said = "The Authorization header holds a key without its scheme"
    else:
        said = "The Authorization header does not start with a scheme sekisho supports"
    raise AuthenticationFailed(f"{said}; send 'Authorization: Bearer <API key or token>'.")
