"""OpenAI-compatible upstreams (OpenAI, vLLM, SGLang, Ollama, LM Studio, Sakura AI Engine, ...)
and Azure OpenAI (deployment URL layout, ``api-key`` header, ``api-version`` query).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from typing import Any

import orjson

from sekisho import __version__
from sekisho.providers.base import (
    Kind,
    UpstreamError,
    UpstreamKeyFileError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from sekisho.providers.h1 import H1Client, H1Response
from sekisho.providers.keyfile import KeyFileUnusable, read_key_file
from sekisho.providers.oauth import TokenSource
from sekisho.routing.catalogue import Endpoint, Route

_USER_AGENT = f"sekisho/{__version__}"
log = logging.getLogger("sekisho.providers")
_MAX_ERROR_BODY = 64 * 1024


# A configured header value this long or longer counts as a credential (credentials).
_SECRET_MIN = 8


class OpenAITransport:
    """POST {base_url}/chat/completions with ``Authorization: Bearer``.

    Upstream HTTP goes through ``H1Client`` (``providers/h1.py``): measured against aiohttp's
    client on the gateway's own request, it spends a fifth to a third of the CPU per request
    (``benchmarks/gateway/client_cpu.py``), and the upstream client is the largest share of
    the gateway's CPU per request that sekisho controls.
    """

    # Where a provider takes the caller's own id of a request (OpenAI: x-client-request-id).
    request_id_header = "x-client-request-id"

    def __init__(self, client: H1Client, tls: Mapping[str, ssl.SSLContext] | None = None) -> None:
        self._client = client
        self._tls = dict(tls or {})  # endpoint id -> its own TLS context (``tls`` block)
        self._urls: dict[tuple[str, str], str] = {}
        self._headers: dict[str, dict[str, str]] = {}
        self._tokens: dict[str, TokenSource] = {}  # endpoint id -> its access tokens (``auth``)
        # Endpoints that answered 400 to the stream_options sekisho added (an older server):
        # asked no more; their streams are charged an estimate.
        self._refuses_stream_options: set[str] = set()
        self._file_keys: dict[str, str] = {}  # endpoint id -> the key read from api_key_file
        self._key_files: dict[str, str] = {}  # endpoint id -> that file

    def use_key_files(self, endpoints: list[Endpoint]) -> None:
        """The endpoints whose key is in a file (``reload_key_files`` reads them again). Each
        is read now, at start: a file emptied or removed later does not take away a key this
        process had (the next good reload replaces it). A file unusable now is read again when
        a request needs its key."""
        self._key_files = {ep.id: ep.api_key_file for ep in endpoints if ep.api_key_file}
        for ep_id, path in self._key_files.items():
            try:
                self._file_keys[ep_id] = read_key_file(path)
            except KeyFileUnusable as exc:
                log.warning(
                    "endpoint key file unusable at start: requests fail over until it is readable",
                    extra={"endpoint": ep_id, "detail": str(exc)},
                )

    def url(self, route: Route, kind: Kind) -> str:
        return f"{route.endpoint.base_url.rstrip('/')}/{_PATHS[kind]}"

    def headers(self, route: Route) -> dict[str, str]:
        # identity: sekisho reads every answer (output scanning, hashes, usage), and a server
        # may take a missing Accept-Encoding as leave to compress.
        base = {"content-type": "application/json", "accept-encoding": "identity"}
        return self.endpoint_headers(route.endpoint, base)

    def endpoint_headers(self, ep: Endpoint, base: dict[str, str]) -> dict[str, str]:
        h = {**base, "user-agent": _USER_AGENT}
        key = self.api_key(ep)
        if key:
            h["authorization"] = f"Bearer {key}"
        h.update(_lower(ep.headers))
        return h

    def credentials(self, ep: Endpoint) -> tuple[str, ...]:
        """What sekisho sends ``ep`` that no client may read back, should the endpoint repeat
        it in an error (proxies and servers quote the headers they refuse): the endpoint's
        key, its current access token, and every configured header value of 8 characters or
        more (a secret header; a Host name masked in an error message costs nothing)."""
        found = [v for v in ep.headers.values() if len(v) >= _SECRET_MIN]
        key = ep.api_key if ep.api_key_file is None else self._file_keys.get(ep.id)
        if key:
            found.append(key)
        source = self._tokens.get(ep.id)
        if source is not None and source.current:
            found.append(source.current)
        return tuple(found)

    def api_key(self, ep: Endpoint) -> str | None:
        """The endpoint's static key: from the config, or from its ``api_key_file`` (the key
        last read from it; read now if none was). Raises UpstreamKeyFileError when the file
        is needed and unusable: the endpoint fails, the request goes to the next one."""
        if ep.api_key_file is None:
            return ep.api_key
        key = self._file_keys.get(ep.id)
        if key is None:
            try:
                key = self._file_keys[ep.id] = read_key_file(ep.api_key_file)
            except KeyFileUnusable as exc:  # the path and why, never the file's content
                raise UpstreamKeyFileError(
                    ep.id, f"its api_key_file is unusable ({exc}); nothing was sent to it"
                ) from None
        return key

    def reload_key_files(self, *, apply: bool = True) -> list[str]:
        """Read every endpoint's ``api_key_file`` again (a rotated secret): requests from now
        on send the new key (unless not ``apply``: only tell). Returns the endpoints whose key
        changed. Raises KeyFileUnusable, changing no key, if any file cannot be used (the keys
        in use stay)."""
        keys = {ep_id: read_key_file(path) for ep_id, path in self._key_files.items()}
        changed = [ep_id for ep_id, key in keys.items() if self._file_keys.get(ep_id) != key]
        if apply:
            self._file_keys.update(keys)
        if changed:
            self._headers.clear()  # built with the old keys
        return changed

    def tokens(self, ep: Endpoint) -> TokenSource:
        """The access tokens of an endpoint with an ``auth`` block."""
        source = self._tokens.get(ep.id)
        if source is None:
            source = self._tokens[ep.id] = TokenSource(ep, self._client)
        return source

    async def with_token(self, ep: Endpoint, headers: dict[str, str]) -> dict[str, str]:
        """``headers`` with the endpoint's current access token, if it uses tokens."""
        if ep.auth is None:
            return headers
        return {**headers, "authorization": f"Bearer {await self.tokens(ep).token()}"}

    def probe_url(self, ep: Endpoint) -> str:
        """What an active health probe GETs: the endpoint's model list."""
        return f"{ep.base_url.rstrip('/')}/models"

    def probe_request(self, ep: Endpoint) -> tuple[str, dict[str, str], ssl.SSLContext | None]:
        """URL, headers and TLS context of an active health probe of ``ep`` (a GET)."""
        return self.probe_url(ep), self.endpoint_headers(ep, {}), self._tls.get(ep.id)

    def use_tls(self, contexts: Mapping[str, ssl.SSLContext]) -> None:
        """New connections to each endpoint in ``contexts`` use its context (after a reload)."""
        self._tls = dict(contexts)

    def body(self, route: Route, body: dict[str, Any], kind: Kind = "chat") -> bytes:
        # The client may have used an alias; the upstream gets the name it knows.
        params = route.model.params  # the operator's defaults; the client's values win
        merged = {**params, **body} if params else {**body}
        merged["model"] = route.model.id
        return orjson.dumps(self._with_stream_usage(route, merged, kind))

    def _with_stream_usage(self, route: Route, body: dict[str, Any], kind: Kind) -> dict[str, Any]:
        """A streamed chat or completions request asks for its token usage (a last chunk with
        ``usage``), whether the client did or not: token limits and the ledger count what
        streams cost too. The pipeline drops that chunk for a client that did not ask for it.
        (A Responses API stream always ends with its usage.)"""
        ep = route.endpoint
        if (
            kind in ("chat", "completions")
            and body.get("stream") is True
            and ep.asks_stream_usage
            and ep.id not in self._refuses_stream_options
        ):
            opts = body.get("stream_options")
            body["stream_options"] = (
                {**opts, "include_usage": True} if opts else {"include_usage": True}
            )
        return body

    async def open(
        self,
        route: Route,
        kind: Kind,
        body: dict[str, Any],
        *,
        stream: bool,
        request_id: str | None = None,
    ) -> H1Response:
        ep = route.endpoint
        # URL and headers depend only on the route: computed once per (route, kind). Endpoints
        # change only with a restart (a policy reload refuses a changed catalogue).
        key = (f"{ep.id}\x00{route.model.id}", kind)
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = self.url(route, kind)
        headers = self._headers.get(key[0])
        if headers is None:
            headers = self._headers[key[0]] = self.headers(route)
        if request_id is not None:  # the provider logs it: incidents can be traced across
            headers = {**headers, self.request_id_header: request_id}
        if ep.auth is not None:
            headers = await self.with_token(ep, headers)
        t = ep.timeouts
        try:
            status, resp_headers, resp = await self._client.post(
                url,
                self.body(route, body, kind),
                headers,
                connect=t.connect,
                first_byte=t.first_byte,
                total=t.total,
                endpoint_id=ep.id,
                proxy=ep.proxy,
                tls=self._tls.get(ep.id),
            )
        except ValueError as exc:  # a URL or header the client refuses to send
            raise UpstreamProtocolError(ep.id, f"cannot send the request: {exc}") from None
        if status >= 300:
            try:
                data = await resp.read(_MAX_ERROR_BODY)
            except UpstreamError:
                data = b""
            finally:
                resp.close()
            if status == 401 and ep.auth is not None:  # revoked or rotated: fetch another
                self.tokens(ep).invalidate(headers["authorization"].removeprefix("Bearer "))
            if (
                status == 400
                and stream
                and b"stream_options" in data
                and "stream_options" not in body  # sekisho added it, not the client
                and ep.id not in self._refuses_stream_options
            ):
                self._refuses_stream_options.add(ep.id)
                log.warning(
                    "endpoint refuses stream_options: its streams are charged an estimated "
                    "token count from now on (set stream_usage: false to say so in the config)",
                    extra={"endpoint": ep.id},
                )
                return await self.open(route, kind, body, stream=stream, request_id=request_id)
            raise UpstreamStatusError(ep.id, status, data, resp_headers.get("retry-after"))
        ctype = resp_headers.get("content-type", "")
        want = "text/event-stream" if stream else "application/json"
        if want not in ctype:
            resp.close()
            raise UpstreamProtocolError(ep.id, f"expected {want}, got content-type {ctype!r}")
        encoding = resp_headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            resp.close()
            raise UpstreamProtocolError(
                ep.id, f"answered with content-encoding {encoding!r}; sekisho asked for identity"
            )
        return resp

    async def close(self) -> None:
        await self._client.close()


class AzureOpenAITransport(OpenAITransport):
    """POST {base}/openai/deployments/{deployment}/chat/completions?api-version=V, ``api-key``;
    the Responses API at {base}/openai/v1/responses, the deployment as the body's model."""

    request_id_header = "x-ms-client-request-id"

    def url(self, route: Route, kind: Kind) -> str:
        base = route.endpoint.base_url.rstrip("/")
        if kind == "responses":  # the v1 API: the deployment goes in the body's model
            return f"{base}/openai/v1/responses"
        path = _PATHS[kind]
        return (
            f"{base}/openai/deployments/{route.model.deployment}/{path}"
            f"?api-version={route.endpoint.api_version}"
        )

    def endpoint_headers(self, ep: Endpoint, base: dict[str, str]) -> dict[str, str]:
        h = {**base, "user-agent": _USER_AGENT}
        key = self.api_key(ep)
        if key:
            h["api-key"] = key
        h.update(_lower(ep.headers))
        return h

    def probe_url(self, ep: Endpoint) -> str:
        return f"{ep.base_url.rstrip('/')}/openai/models?api-version={ep.api_version}"

    def body(self, route: Route, body: dict[str, Any], kind: Kind = "chat") -> bytes:
        # Azure selects the model by deployment: in the URL, and for the Responses API (v1) in
        # the body's model.
        merged = {**route.model.params, **body}
        if kind == "responses":
            merged["model"] = route.model.deployment
        else:
            merged.pop("model", None)
        return orjson.dumps(self._with_stream_usage(route, merged, kind))


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    """An endpoint's extra headers, named as the gateway's own are (lower case): one that
    changes a header the gateway sets (user-agent) replaces it instead of going next to it."""
    return {name.lower(): value for name, value in headers.items()}


_PATHS = {
    "chat": "chat/completions",
    "embeddings": "embeddings",
    "responses": "responses",
    "completions": "completions",
}


def transport_for(
    family: str, client: H1Client, tls: Mapping[str, ssl.SSLContext] | None = None
) -> OpenAITransport:
    """The adapter for an API family; ``tls`` maps endpoint ids to their own TLS contexts."""
    if family == "openai":
        return OpenAITransport(client, tls)
    if family == "azure_openai":
        return AzureOpenAITransport(client, tls)
    raise ValueError(f"no adapter for API family {family!r}")


__all__ = ["AzureOpenAITransport", "OpenAITransport", "UpstreamError", "transport_for"]
