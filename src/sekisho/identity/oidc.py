"""OIDC bearer tokens: discover an issuer's signing keys, verify its JWTs, map claims to roles.

Verification order, each step with its own 401 message (the token itself is never echoed):
well-formed JWT → algorithm is not ``none`` → issuer is configured → algorithm is on that
issuer's allow list → the ``kid`` is published in the issuer's JWKS (refetched once, at most every
``jwks_refetch_min_seconds``, when an unknown ``kid`` appears: that is how key rotation is
followed) → the key's type fits the algorithm → signature, ``exp``, ``nbf``, ``iat``, ``iss``,
``aud``. Only then are claims mapped to a tenant and roles.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from sekisho.errors import AuthenticationFailed, PermissionDenied, ServiceUnavailable
from sekisho.identity.keys import Principal
from sekisho.identity.roles import primary_role
from sekisho.identity.spec import AuthSpec, OIDCIssuerSpec, _https_url

log = logging.getLogger("sekisho.identity.oidc")

# Which JWK key type (and curve) each algorithm needs: a token may not pick a key of another
# kind than its algorithm implies.
_KEY_TYPES: dict[str, tuple[str, str | None]] = {
    **{f"{p}{n}": ("RSA", None) for p in ("RS", "PS") for n in ("256", "384", "512")},
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}


def _refuse(message: str) -> AuthenticationFailed:
    return AuthenticationFailed(f"Invalid bearer token: {message}", code="invalid_token")


def _shown(value: object) -> str:
    """A claim value safe to put in a message: printable and short."""
    text = str(value)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 120 else text[:117] + "..."


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _claim(claims: dict[str, Any], path: str) -> Any:
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    jwk: jwt.PyJWK
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own "alg", when it declares one

    def fits(self, alg: str) -> bool:
        kty, crv = _KEY_TYPES.get(alg, ("?", None))
        if self.kty != kty or (crv is not None and self.crv != crv):
            return False
        return self.alg is None or self.alg == alg


class IssuerKeys:
    """The signing keys one issuer publishes, fetched over HTTP and cached."""

    def __init__(self, spec: OIDCIssuerSpec, verifier: OIDCVerifier) -> None:
        self.spec = spec
        self._verifier = verifier
        self._keys: dict[str, SigningKey] = {}
        self._jwks_uri: str | None = spec.jwks_uri
        self._fetched_at: float | None = None  # monotonic
        self._last_forced = -float("inf")
        self._lock = asyncio.Lock()
        # The last failed fetch (when, what the requests were told): not tried again sooner
        # than the forced refetch's minimum, nor than 1 s.
        self._failure: tuple[float, ServiceUnavailable] | None = None
        self._retry_after_failure = max(1.0, float(spec.jwks_refetch_min_seconds))
        self.fetches = 0

    @property
    def kids(self) -> list[str]:
        return sorted(self._keys)

    async def key_for(self, kid: str | None, alg: str) -> SigningKey:
        now = time.monotonic()
        if self._fetched_at is None or now - self._fetched_at >= self.spec.jwks_cache_seconds:
            await self.refresh(stale_ok=True)
        if kid is None:
            fitting = [k for k in self._keys.values() if k.fits(alg)]
            if len(fitting) == 1:
                return fitting[0]
            raise _refuse(
                f"the token has no 'kid' header and issuer {self.spec.issuer} publishes "
                f"{len(fitting)} keys for {alg}; the issuer must name its key."
            )
        key = self._keys.get(kid)
        if key is None and now - self._last_forced >= self.spec.jwks_refetch_min_seconds:
            # Possibly a rotation we have not seen yet: look once, then not again for a while.
            self._last_forced = now
            await self.refresh(stale_ok=True)
            key = self._keys.get(kid)
        if key is None:
            raise _refuse(
                f"it is signed with key id '{_shown(kid)}', which issuer {self.spec.issuer} does "
                "not publish in its JWKS (unknown or retired key)."
            )
        return key

    async def refresh(self, *, stale_ok: bool = False) -> None:
        started = self._fetched_at
        async with self._lock:
            if self._fetched_at != started:
                return  # another request refreshed while this one waited
            failure = self._failure
            if failure is not None and time.monotonic() - failure[0] < self._retry_after_failure:
                # The provider just failed: every request waiting on it was answered by that
                # one attempt, and no token (forged ones included) makes it ask again sooner.
                raise failure[1]
            try:
                keys = await self._fetch()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                if stale_ok and self._keys:
                    log.warning(
                        "JWKS refresh failed; keeping the keys we have",
                        extra={"issuer": self.spec.issuer, "error": str(exc)},
                    )
                    self._fetched_at = time.monotonic()  # retry after another cache period
                    return
                said = str(exc) or type(exc).__name__  # a timeout says nothing itself
                error = ServiceUnavailable(
                    f"sekisho cannot fetch the signing keys of issuer {self.spec.issuer}: "
                    f"{said}. Check the issuer URL and that this gateway can reach it.",
                    code="issuer_unreachable",
                    headers={"retry-after": str(math.ceil(self._retry_after_failure))},
                )
                self._failure = (time.monotonic(), error)
                raise error from None
            self._failure = None
            self._keys = keys
            self._fetched_at = time.monotonic()
            self.fetches += 1
            log.info(
                "JWKS fetched",
                extra={"issuer": self.spec.issuer, "kids": sorted(keys), "uri": self._jwks_uri},
            )

    async def _fetch(self) -> dict[str, SigningKey]:
        session = self._verifier.session()
        timeout = aiohttp.ClientTimeout(total=self.spec.http_timeout_seconds)
        if self._jwks_uri is None:
            url = self.spec.issuer.rstrip("/") + "/.well-known/openid-configuration"
            meta = await _get_json(session, url, timeout)
            if meta.get("issuer") != self.spec.issuer:
                raise ValueError(
                    f"discovery document at {url} names issuer {_shown(meta.get('issuer'))!r}, "
                    f"not {self.spec.issuer!r} (check the configured issuer, including any "
                    "trailing slash)"
                )
            uri = meta.get("jwks_uri")
            if not isinstance(uri, str):
                raise ValueError(f"discovery document at {url} has no usable jwks_uri")
            # The rule a configured jwks_uri obeys: keys fetched in clear off this machine
            # could be swapped on the way, and tokens then minted by anyone on the path.
            try:
                _https_url(uri)
            except ValueError as exc:
                raise ValueError(f"discovery document at {url}: jwks_uri {exc}") from None
            self._jwks_uri = uri
        try:
            doc = await _get_json(session, self._jwks_uri, timeout)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            if self.spec.jwks_uri is None:
                self._jwks_uri = None  # rediscover next time: the issuer may have moved it
            raise
        raw_keys = doc.get("keys")
        if not isinstance(raw_keys, list):
            raise ValueError(f"{self._jwks_uri} is not a JWKS (no 'keys' list)")
        keys: dict[str, SigningKey] = {}
        for raw in raw_keys:
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(raw)
            except jwt.PyJWTError as exc:  # unsupported kty or curve: skip, keep the others
                log.warning(
                    "skipping a JWKS key",
                    extra={"issuer": self.spec.issuer, "kid": raw.get("kid"), "error": str(exc)},
                )
                continue
            kid = str(raw.get("kid", ""))
            crv, declared = raw.get("crv"), raw.get("alg")
            keys[kid] = SigningKey(
                kid,
                key,
                str(raw.get("kty")),
                crv if isinstance(crv, str) else None,
                declared if isinstance(declared, str) else None,
            )
        return keys


async def _get_json(
    session: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout
) -> dict[str, Any]:
    async with session.get(url, timeout=timeout, allow_redirects=False) as resp:
        if resp.status != 200:
            raise ValueError(f"GET {url} answered HTTP {resp.status}")
        body = await resp.json(content_type=None)
    if not isinstance(body, dict):
        raise ValueError(f"GET {url} did not return a JSON object")
    return body


class OIDCVerifier:
    """Verifies bearer JWTs of the configured issuers and maps them to Principals."""

    def __init__(
        self,
        auth: AuthSpec,
        *,
        tenants: Collection[str] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.issuers = {spec.issuer: IssuerKeys(spec, self) for spec in auth.oidc}
        self._tenants = frozenset(tenants) if tenants is not None else None
        self._session = session
        self._own_session = session is None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._own_session = True
        return self._session

    async def start(self) -> None:
        """Fetch every issuer's keys now; an unreachable issuer is logged, not fatal."""
        for keys in self.issuers.values():
            try:
                await keys.refresh()
            except ServiceUnavailable as exc:
                log.warning(
                    "issuer keys unavailable at start-up; will retry on first use",
                    extra={"issuer": keys.spec.issuer, "error": exc.message},
                )

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _refuse("it is not a well-formed JWT (header.payload.signature).") from None
        alg = header.get("alg")
        if alg is None:
            raise _refuse("its header names no signing algorithm ('alg').")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise _refuse("unsigned tokens (alg 'none') are never accepted.")
        iss = unverified.get("iss")
        keys = self.issuers.get(iss) if isinstance(iss, str) else None
        if keys is None:
            # The issuers accepted are not listed: a caller not yet signed in would learn
            # internal identity provider URLs and directory tenant ids (the log has them).
            log.info(
                "token from an issuer that is not configured",
                extra={"issuer": _shown(iss), "accepted": sorted(self.issuers)},
            )
            raise _refuse(
                f"its issuer {_shown(iss)!r} is not one this gateway accepts (auth.oidc); "
                "ask the operator which issuer to sign in with."
            )
        spec = keys.spec
        if alg not in spec.algorithms:
            why = (
                " HS* algorithms use a shared secret; sekisho accepts only signatures made with "
                "the issuer's private key."
                if alg.upper().startswith("HS")
                else ""
            )
            raise _refuse(
                f"algorithm {_shown(alg)} is not accepted for issuer {spec.issuer} "
                f"(accepted: {', '.join(spec.algorithms)}).{why}"
            )
        kid = header.get("kid")
        key = await keys.key_for(kid if isinstance(kid, str) else None, alg)
        if not key.fits(alg):
            raise _refuse(
                f"key '{_shown(key.kid)}' of issuer {spec.issuer} is a {key.kty} "
                f"key that cannot verify {alg} signatures."
            )
        claims = self._decode(token, key, alg, spec, unverified)
        return self._principal(spec, claims)

    def _decode(
        self,
        token: str,
        key: SigningKey,
        alg: str,
        spec: OIDCIssuerSpec,
        unverified: dict[str, Any],
    ) -> dict[str, Any]:
        leeway = spec.leeway_seconds
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.jwk.key,
                algorithms=[alg],
                audience=spec.audiences,
                issuer=spec.issuer,
                leeway=leeway,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.InvalidSignatureError:
            raise _refuse(
                f"its signature does not verify with issuer {spec.issuer}'s key "
                f"'{_shown(key.kid)}'."
            ) from None
        except jwt.ExpiredSignatureError:
            exp = unverified.get("exp")
            at = _iso(float(exp)) if isinstance(exp, int | float) else "an unknown time"
            raise _refuse(f"it expired at {at} (leeway {leeway} s). Get a new token.") from None
        except jwt.ImmatureSignatureError:
            nbf = unverified.get("nbf")
            if isinstance(nbf, int | float) and nbf > time.time() + leeway:
                raise _refuse(
                    f"it is not valid before {_iso(float(nbf))} (nbf; leeway {leeway} s)."
                ) from None
            iat = unverified.get("iat")
            at = _iso(float(iat)) if isinstance(iat, int | float) else "the future"
            raise _refuse(
                f"it claims to be issued at {at}, in the future (iat; leeway {leeway} s); "
                "check the clocks of the issuer and this gateway."
            ) from None
        except jwt.InvalidAudienceError:
            raise _refuse(
                f"its audience {_shown(unverified.get('aud'))!r} is not accepted for issuer "
                f"{spec.issuer} (expected: {', '.join(spec.audiences)})."
            ) from None
        except jwt.InvalidIssuerError:
            raise _refuse(
                f"its issuer {_shown(unverified.get('iss'))!r} is not {spec.issuer}."
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise _refuse(f"it lacks the required claim '{exc.claim}'.") from None
        except jwt.PyJWTError as exc:
            raise _refuse(f"{type(exc).__name__}: {_shown(exc)}") from None
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
                # RFC 7519: a NumericDate is a JSON number. PyJWT reads "9999999999" as one;
                # the key a developer makes would then carry no expiry at all.
                raise _refuse(f"its '{name}' claim is not a number (RFC 7519 NumericDate).")
        return claims

    def _principal(self, spec: OIDCIssuerSpec, claims: dict[str, Any]) -> Principal:
        subject = _claim(claims, spec.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise _refuse(f"it has no '{spec.subject_claim}' claim (auth.oidc subject_claim).")
        tenant = self._tenant(spec, claims)
        roles: set[str] = set()
        for path in spec.role_claims:
            value = _claim(claims, path)
            values = value if isinstance(value, list) else [value]
            for v in values:
                if isinstance(v, str) and v in spec.role_map:
                    roles.add(spec.role_map[v])
        if not roles and spec.default_role is not None:
            roles.add(spec.default_role)
        if not roles:
            raise PermissionDenied(
                f"The token of {_shown(subject)} (issuer {spec.issuer}) carries no value of "
                f"{', '.join(spec.role_claims)} that role_map maps to a sekisho role; "
                "ask your administrator to assign one.",
                code="no_role",
            )
        frozen = frozenset(roles)
        pseudonym = hashlib.sha256(f"{spec.issuer}\0{subject}".encode()).hexdigest()[:12]
        exp = claims.get("exp")
        return Principal(
            tenant=tenant,
            key_id=f"oidc-{pseudonym}",
            role=primary_role(frozen),
            roles=frozen,
            subject=f"oidc:{subject}@{spec.issuer}",
            auth="oidc",
            expires_at=float(exp) if isinstance(exp, int | float) else None,
        )

    def _tenant(self, spec: OIDCIssuerSpec, claims: dict[str, Any]) -> str:
        if spec.tenant is not None:
            tenant = spec.tenant
        else:
            assert spec.tenant_claim is not None
            value = _claim(claims, spec.tenant_claim)
            if isinstance(value, list):
                raise _refuse(
                    f"its '{spec.tenant_claim}' claim is a list ({len(value)} values): it must "
                    "name one tenant (a person in several tenants signs in to each with a token "
                    "naming that one)."
                )
            if not isinstance(value, str) or not value:
                raise _refuse(f"it has no '{spec.tenant_claim}' claim naming the tenant.")
            if spec.tenant_map:
                if value not in spec.tenant_map:
                    raise PermissionDenied(
                        f"Tenant claim {spec.tenant_claim}={_shown(value)!r} of issuer "
                        f"{spec.issuer} is not in tenant_map.",
                        code="unknown_tenant",
                    )
                tenant = spec.tenant_map[value]
            else:
                tenant = value
        if self._tenants is not None and tenant not in self._tenants:
            raise PermissionDenied(
                f"The token maps to tenant {_shown(tenant)!r}, which is not configured.",
                code="unknown_tenant",
            )
        return tenant
