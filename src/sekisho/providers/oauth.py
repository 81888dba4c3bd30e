"""Access tokens for upstreams that take no static key: the OAuth 2.0 client-credentials grant
(RFC 6749 section 4.4), Microsoft Entra ID's for Azure OpenAI among them.

One ``TokenSource`` per endpoint. A token is fetched when a request first needs it and kept
until shortly before it expires (five minutes, or half its lifetime if that is shorter);
concurrent requests share one fetch. When a refresh fails while the old token is still
valid, the old one is used and the refresh is tried again a little later; without a valid
token the request fails over to the next eligible endpoint, the endpoint is marked down like
any failing one, and the error names the token endpoint and what it said (never the secret).
An endpoint that answers 401 makes its token be fetched again before the next request.

The token endpoint receives the client id and secret (or, with workload identity federation,
a signed assertion read from a file the platform renews), never a prompt. It is reached with the
endpoint's egress proxy, and its certificate is checked against the system trust store or the
``auth.ca_file`` given.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlencode, urlsplit

import orjson

from sekisho import __version__
from sekisho.providers.base import UpstreamError
from sekisho.providers.h1 import H1Client
from sekisho.routing.catalogue import Endpoint

log = logging.getLogger("sekisho.providers.oauth")

_MAX_BODY = 64 * 1024
_REFRESH_BEFORE = 300.0  # seconds before expiry a token is replaced
_RETRY_AFTER_FAILURE = 5.0  # seconds between refresh attempts while a fetch keeps failing
_DEFAULT_LIFETIME = 300.0  # when the server does not say (RFC 6749 makes expires_in optional)
_TOKEN_WAIT = 10.0  # seconds for a token endpoint's answer once connected


JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class UpstreamAuthError(UpstreamError):
    """No access token could be had for the endpoint: it is not reachable for now."""

    reason = "auth"


class TokenSource:
    def __init__(
        self,
        endpoint: Endpoint,
        client: H1Client,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        auth = endpoint.auth
        if auth is None:
            raise ValueError(f"endpoint {endpoint.id} has no auth block")
        self._endpoint = endpoint
        self._client = client
        self._clock = clock
        self._url = auth.url
        self._host = urlsplit(auth.url).netloc
        self._form: dict[str, str] = {
            "grant_type": "client_credentials",
            "client_id": auth.client_id,
        }
        if auth.client_secret is not None:
            self._form["client_secret"] = auth.client_secret
        if auth.scopes:
            self._form["scope"] = auth.scopes
        self._assertion_file = auth.client_assertion_file
        self._assertion: str | None = None  # the last one read from that file
        self._tls = ssl.create_default_context(cafile=auth.ca_file) if auth.ca_file else None
        self._token: str | None = None
        self._expires = 0.0
        self._refresh_at = 0.0
        self._next_try = 0.0  # after a failed fetch, not before this
        self._failure: UpstreamAuthError | None = None
        self._pending: asyncio.Task[str] | None = None
        self.fetches = 0  # tokens asked for, for tests and metrics

    @property
    def current(self) -> str | None:
        """The token held now (None before the first fetch), without fetching one."""
        return self._token

    async def token(self) -> str:
        now = self._clock()
        token = self._token
        if token is not None and now < self._refresh_at:
            return token
        if self._pending is None:
            if now < self._next_try:  # a fetch failed just now: do not hammer the server
                if token is not None and now < self._expires:
                    return token
                assert self._failure is not None
                raise self._failure
            # A task of its own: a request that gives up does not cancel the others' fetch.
            self._pending = asyncio.ensure_future(self._fetch())
            self._pending.add_done_callback(self._fetched)
        try:
            return await asyncio.shield(self._pending)
        except UpstreamAuthError:
            if token is not None and self._clock() < self._expires:
                return token  # the old token still works; the refresh is retried later
            raise

    def invalidate(self, token_sent: str | None = None) -> None:
        """The endpoint refused a token (401): the next request fetches a new one."""
        if token_sent is None or token_sent == self._token:
            self._token = None
            self._refresh_at = self._expires = 0.0

    def _fetched(self, task: asyncio.Task[str]) -> None:
        self._pending = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._failure = (
                exc
                if isinstance(exc, UpstreamAuthError)
                else UpstreamAuthError(self._endpoint.id, f"token request failed: {exc}")
            )
            self._next_try = self._clock() + _RETRY_AFTER_FAILURE
            still = self._token is not None and self._clock() < self._expires
            log.warning(
                "access token refresh failed"
                + ("; the current token is used meanwhile" if still else ""),
                extra={"endpoint": self._endpoint.id, "detail": self._failure.detail},
            )

    async def _fetch(self) -> str:
        ep = self._endpoint
        t = ep.timeouts
        self.fetches += 1
        headers = {
            "content-type": "application/x-www-form-urlencoded",
            "accept": "application/json",
            "user-agent": f"sekisho/{__version__}",
        }
        started = self._clock()
        form = dict(self._form)
        if self._assertion_file is not None:
            # Workload identity: a short-lived JWT the platform renews in this file (RFC 7523).
            try:
                with open(self._assertion_file, encoding="utf-8") as f:
                    assertion = f.read().strip()
            except OSError as exc:
                raise self._error(
                    f"cannot read client_assertion_file {self._assertion_file}: "
                    f"{exc.strerror or exc}"
                ) from None
            if not assertion:
                raise self._error(f"client_assertion_file {self._assertion_file} is empty")
            form["client_assertion_type"] = JWT_BEARER
            form["client_assertion"] = self._assertion = assertion
        try:
            status, _, resp = await self._client.post(
                self._url,
                urlencode(form).encode(),
                headers,
                # Every request to the endpoint waits on this fetch: a token endpoint that
                # hangs fails over within seconds, not after a model's long first-byte timeout.
                connect=t.connect,
                first_byte=_TOKEN_WAIT,
                total=t.connect + _TOKEN_WAIT,
                endpoint_id=ep.id,
                proxy=ep.proxy,
                tls=self._tls,
            )
            try:
                raw = await resp.read(_MAX_BODY)
            finally:
                resp.close()
        except UpstreamError as exc:
            raise self._error(f"cannot reach the token endpoint: {exc.detail}") from None
        except (ValueError, OSError) as exc:
            raise self._error(f"cannot reach the token endpoint: {exc}") from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if status != 200:
            raise self._error(f"HTTP {status}{_oauth_error(data)}")
        if not isinstance(data, dict):
            raise self._error("answered 200 with a body that is not a JSON object")
        token = data.get("access_token")
        if not isinstance(token, str) or not _header_safe(token):
            raise self._error("answered without a usable access_token")
        kind = data.get("token_type", "Bearer")
        if not isinstance(kind, str) or kind.lower() != "bearer":
            raise self._error(f"issued a {kind!r} token; sekisho sends Bearer tokens only")
        lifetime = _lifetime(data.get("expires_in"))
        if lifetime is None:
            raise self._error("answered with an expires_in that is not a number of seconds")
        self._token = token
        self._expires = started + lifetime
        self._refresh_at = started + lifetime - min(_REFRESH_BEFORE, lifetime / 2)
        self._next_try = 0.0
        self._failure = None
        return token

    def _error(self, detail: str) -> UpstreamAuthError:
        """Why no token came, for /readyz (which anyone may read), the log and the client's
        502: the client secret and the assertion sent masked, should the token endpoint's
        error_description quote what it refused."""
        for secret in (self._form.get("client_secret"), self._assertion):
            if secret:
                detail = detail.replace(secret, "[SECRET]")
        return UpstreamAuthError(self._endpoint.id, f"no access token from {self._host}: {detail}")


def _oauth_error(data: object) -> str:
    """RFC 6749 section 5.2's error and the first line of its description, if any."""
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        return ""
    out = f" {data['error'][:64]}"
    desc = data.get("error_description")
    if isinstance(desc, str) and desc.strip():
        out += f": {desc.strip().splitlines()[0][:200]}"
    return out


def _lifetime(value: object) -> float | None:
    if value is None:
        return _DEFAULT_LIFETIME
    if isinstance(value, str):  # some servers send it as a string
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def _header_safe(token: str) -> bool:
    return (
        bool(token)
        and len(token) <= 16384
        and token.isascii()
        and token.isprintable()
        and " " not in token
    )
