"""A real OIDC issuer on loopback: discovery document, JWKS, key rotation, signed tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "api://sekisho"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def jwk(self) -> dict[str, Any]:
        algo = RSAAlgorithm if self.alg.startswith(("RS", "PS")) else ECAlgorithm
        out: dict[str, Any] = dict(algo.to_jwk(self.private.public_key(), as_dict=True))
        out.update(kid=self.kid, use="sig", alg=self.alg)
        return out


def new_key(alg: str) -> SigningKey:
    private: Any
    if alg.startswith(("RS", "PS")):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    return SigningKey(f"{alg.lower()}-{uuid.uuid4().hex[:8]}", alg, private)


_RSA = new_key("RS256")  # RSA generation is slow: tests share one key until they rotate


class Issuer:
    """An OpenID provider reduced to what a relying party fetches, plus counters."""

    def __init__(self) -> None:
        self.keys: list[SigningKey] = [_RSA, new_key("ES256")]
        self.discovery_hits = 0
        self.jwks_hits = 0
        self.url = ""
        self.down = False  # discovery answers 503
        self.jwks_uri: str | None = None  # what discovery names in place of its own /keys
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/realms/acme/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/keys", self._jwks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/realms/acme"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_hits += 1
        if self.down:
            return web.json_response({"error": "down"}, status=503)
        base = str(request.url.origin())
        uri = self.jwks_uri or f"{base}/keys"
        return web.json_response({"issuer": self.url, "jwks_uri": uri})

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_hits += 1
        return web.json_response({"keys": [k.jwk() for k in self.keys]})

    def key(self, alg: str) -> SigningKey:
        return next(k for k in self.keys if k.alg == alg)

    def rotate(self, alg: str) -> SigningKey:
        """Publish a new key for alg and retire the old one."""
        fresh = new_key(alg)
        self.keys = [k for k in self.keys if k.alg != alg] + [fresh]
        return fresh

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "user-42",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "groups": ["sekisho-developers"],
            "tid": "tid-acme",
        }
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def token(
        self, alg: str = "RS256", key: SigningKey | None = None, kid: str | None = "", **claims: Any
    ) -> str:
        key = key or self.key(alg)
        headers = {"kid": key.kid if kid == "" else kid}
        if headers["kid"] is None:
            headers = {}
        return jwt.encode(self.claims(**claims), key.private, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A token built by hand: `alg: none`, or HS256 'signed' with some byte string."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    sig = (
        b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    )
    return f"{signing_input}.{b64(sig)}"
