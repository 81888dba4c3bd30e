"""OpenAI-compatible upstreams (OpenAI, vLLM, SGLang, Ollama, LM Studio, Sakura AI Engine, ...)
and Azure OpenAI (deployment URL layout, ``api-key`` header, ``api-version`` query).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from sekisho import __version__
from sekisho.providers.base import (
    Kind,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from sekisho.routing.catalogue import Endpoint, Route

_USER_AGENT = f"sekisho/{__version__}"
_MAX_ERROR_BODY = 64 * 1024


class AiohttpResponse:
    """A 2xx upstream response being read."""

    __slots__ = ("_endpoint_id", "_resp", "status")

    def __init__(self, resp: aiohttp.ClientResponse, endpoint: Endpoint) -> None:
        self._resp = resp
        self._endpoint_id = endpoint.id
        self.status = resp.status

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except TimeoutError:
            raise UpstreamTimeoutError(self._endpoint_id, "no complete response in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamProtocolError(self._endpoint_id, f"response broken: {exc}") from None
        finally:
            self._resp.release()

    async def lines(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        try:
            while True:
                line = await content.readline()
                if not line:
                    return
                yield line.rstrip(b"\r\n")
        except TimeoutError:
            raise UpstreamTimeoutError(self._endpoint_id, "stream stalled") from None
        except aiohttp.ClientError as exc:
            raise UpstreamProtocolError(self._endpoint_id, f"stream broken: {exc}") from None

    def close(self) -> None:
        self._resp.close()


class OpenAITransport:
    """POST {base_url}/chat/completions with ``Authorization: Bearer``."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._timeouts: dict[str, aiohttp.ClientTimeout] = {}

    def _timeout(self, ep: Endpoint) -> aiohttp.ClientTimeout:
        # aiohttp's own timers, set once per endpoint: connect (pool wait + TCP/TLS), each read
        # (first byte, then any stall between chunks), and the whole exchange.
        t = self._timeouts.get(ep.id)
        if t is None:
            t = self._timeouts[ep.id] = aiohttp.ClientTimeout(
                total=ep.timeouts.total,
                connect=ep.timeouts.connect,
                sock_read=ep.timeouts.first_byte,
            )
        return t

    def url(self, route: Route, kind: Kind) -> str:
        path = "chat/completions" if kind == "chat" else "embeddings"
        return f"{route.endpoint.base_url.rstrip('/')}/{path}"

    def headers(self, route: Route) -> dict[str, str]:
        h = {"content-type": "application/json", "user-agent": _USER_AGENT}
        if route.endpoint.api_key:
            h["authorization"] = f"Bearer {route.endpoint.api_key}"
        h.update(route.endpoint.headers)
        return h

    def body(self, route: Route, body: dict[str, Any]) -> bytes:
        # The client may have used an alias; the upstream gets the name it knows.
        return orjson.dumps({**body, "model": route.model.id})

    async def open(
        self, route: Route, kind: Kind, body: dict[str, Any], *, stream: bool
    ) -> AiohttpResponse:
        ep = route.endpoint
        try:
            resp = await self._session.post(
                self.url(route, kind),
                data=self.body(route, body),
                headers=self.headers(route),
                timeout=self._timeout(ep),
                allow_redirects=False,
            )
        except TimeoutError:  # aiohttp's connect and read timeouts are TimeoutErrors
            raise UpstreamTimeoutError(ep.id, "no response headers in time") from None
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
            raise UpstreamConnectError(ep.id, f"cannot connect: {exc}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamProtocolError(ep.id, f"bad response: {exc}") from None
        if resp.status >= 300:
            try:
                data = await resp.content.read(_MAX_ERROR_BODY)
            except aiohttp.ClientError:
                data = b""
            finally:
                resp.release()
            raise UpstreamStatusError(ep.id, resp.status, data, resp.headers.get("retry-after"))
        ctype = resp.headers.get("content-type", "")
        want = "text/event-stream" if stream else "application/json"
        if want not in ctype:
            resp.close()
            raise UpstreamProtocolError(ep.id, f"expected {want}, got content-type {ctype!r}")
        return AiohttpResponse(resp, ep)

    async def close(self) -> None:
        await self._session.close()


class AzureOpenAITransport(OpenAITransport):
    """POST {base}/openai/deployments/{deployment}/chat/completions?api-version=V, ``api-key``."""

    def url(self, route: Route, kind: Kind) -> str:
        path = "chat/completions" if kind == "chat" else "embeddings"
        base = route.endpoint.base_url.rstrip("/")
        return (
            f"{base}/openai/deployments/{route.model.deployment}/{path}"
            f"?api-version={route.endpoint.api_version}"
        )

    def headers(self, route: Route) -> dict[str, str]:
        h = {"content-type": "application/json", "user-agent": _USER_AGENT}
        if route.endpoint.api_key:
            h["api-key"] = route.endpoint.api_key
        h.update(route.endpoint.headers)
        return h

    def body(self, route: Route, body: dict[str, Any]) -> bytes:
        # Azure selects the model by deployment in the URL; the body carries no model.
        return orjson.dumps({k: v for k, v in body.items() if k != "model"})


def transport_for(family: str, session: aiohttp.ClientSession) -> OpenAITransport:
    if family == "openai":
        return OpenAITransport(session)
    if family == "azure_openai":
        return AzureOpenAITransport(session)
    raise ValueError(f"no adapter for API family {family!r}")


__all__ = ["AzureOpenAITransport", "OpenAITransport", "UpstreamError", "transport_for"]
