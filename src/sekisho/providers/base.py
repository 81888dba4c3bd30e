"""The transport interface and the failures an upstream can produce."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal, Protocol

from sekisho.routing.catalogue import Endpoint, Route

Kind = Literal["chat", "embeddings", "responses", "completions"]


class UpstreamError(Exception):
    """An upstream did not produce a usable answer. ``retryable`` says whether to fail over.

    ``detail`` is what went wrong, in sekisho's words: it goes to the log and the endpoint's
    health (/readyz, which anyone may read). ``said`` is what the endpoint wrote about it (an
    error event's message, already masked): endpoints echo the prompt there, so only the
    client whose request it was hears it (``told``), never the log or the health report."""

    retryable = True
    reason = "error"

    def __init__(self, endpoint_id: str, detail: str, said: str = "") -> None:
        super().__init__(f"{endpoint_id}: {detail}")
        self.endpoint_id = endpoint_id
        self.detail = detail
        self.said = said

    @property
    def told(self) -> str:
        """What the client is told: ``detail``, and what the endpoint said."""
        return f"{self.detail}: {self.said}" if self.said else self.detail


class UpstreamConnectError(UpstreamError):
    reason = "connect"


class UpstreamTimeoutError(UpstreamError):
    reason = "timeout"


class UpstreamConnectTimeoutError(UpstreamTimeoutError):
    """No connection within the connect timeout (or no free pooled one): nothing was sent, so
    a client's retry starts no second generation."""


class UpstreamKeyFileError(UpstreamError):
    """The endpoint's ``api_key_file`` could not be read when a request needed its key (a
    secret removed or emptied after start, before this process had read it): nothing was sent;
    the endpoint counts as failing and the request goes to the next eligible one."""

    reason = "key_file"


class UpstreamProtocolError(UpstreamError):
    """The upstream answered something that is not the protocol (garbage, truncated stream)."""

    reason = "protocol"


class UpstreamStatusError(UpstreamError):
    """An HTTP error status. 5xx and 429 fail over, and so do 401, 403 and 407: they are about
    sekisho's own credentials or account at the endpoint (or at its egress proxy), never the
    client's, so they must not reach the client as its authentication error. Other 4xx are
    about the request and go back to the client as they are."""

    reason = "status"

    def __init__(self, endpoint_id: str, status: int, body: bytes, retry_after: str | None) -> None:
        detail = f"HTTP {status}"
        if status in (401, 403):
            detail += " (the endpoint refused sekisho's credentials: check its api_key or auth)"
        elif status == 407:
            # Only a proxy answers 407: the endpoint's egress proxy refused sekisho's proxy
            # credentials (a plain-http endpoint's proxy answers in the endpoint's place).
            detail += " (the endpoint's egress proxy refused sekisho's proxy credentials)"
        super().__init__(endpoint_id, detail)
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.retryable = status >= 500 or status in (401, 403, 407, 429)


class UpstreamResponse(Protocol):
    """An open upstream response whose status was 2xx."""

    status: int
    headers: dict[str, str]  # lower-case names

    async def read(self) -> bytes: ...

    def lines(self) -> AsyncIterator[bytes]:
        """The body line by line (for SSE), each without its line ending."""
        ...

    def close(self) -> None: ...


class Transport(Protocol):
    """Sends an OpenAI-shaped request to one API family."""

    async def open(
        self,
        route: Route,
        kind: Kind,
        body: dict[str, Any],
        *,
        stream: bool,
        request_id: str | None = None,
    ) -> UpstreamResponse:
        """Send the request; return once response headers with a 2xx status have arrived.
        ``request_id`` (sekisho's) is sent in the provider's client-request-id header.

        Raises an UpstreamError subclass for every failure, so the caller can fail over.
        """
        ...

    def probe_request(self, ep: Endpoint) -> tuple[str, dict[str, str], ssl.SSLContext | None]:
        """URL, headers and TLS context (None: the default) of an active health probe (GET)."""
        ...

    def credentials(self, ep: Endpoint) -> tuple[str, ...]:
        """What this transport sends ``ep`` that no client may read back in an endpoint's
        error: its key, its current access token, its configured headers' values."""
        ...

    async def with_token(self, ep: Endpoint, headers: dict[str, str]) -> dict[str, str]:
        """``headers`` with the endpoint's access token when it has an ``auth`` block; raises
        an UpstreamError when no token can be had."""
        ...

    def use_key_files(self, endpoints: list[Endpoint]) -> None:
        """The endpoints whose static key is kept in a file (``api_key_file``)."""
        ...

    def reload_key_files(self, *, apply: bool = True) -> list[str]:
        """Read those files again; return the endpoints whose key changed (and, unless not
        ``apply``, use the new keys from now on)."""
        ...

    def use_tls(self, contexts: Mapping[str, ssl.SSLContext]) -> None:
        """From now on, connect to each endpoint id in ``contexts`` with its context."""
        ...

    async def close(self) -> None: ...


def upstream_request_id(headers: dict[str, str]) -> str | None:
    """The provider's id of a request, from its answer's headers (``x-request-id``: OpenAI,
    vLLM and most servers; ``apim-request-id``: Azure OpenAI), when it is a sane token."""
    value = headers.get("x-request-id") or headers.get("apim-request-id")
    if value and len(value) <= 128 and value.isascii() and value.isprintable():
        return value
    return None
