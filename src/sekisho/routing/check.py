"""``sekisho endpoints check``: the catalogue against the endpoints as they are, before traffic.

For each endpoint: can it be reached the way requests go (its egress proxy, its TLS settings),
do its credentials work (the API key, or a token from its ``auth`` server), and does it serve
every model the config says it does (its model list, ``GET {base_url}/models``). With
``--chat`` each model also gets one request: the word "ping" and at most one token back, so
Azure deployments (which Azure does not list) and the whole path are proven too. Nothing else
is sent; the check is not client traffic and is not written to the ledger.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from sekisho import tls as tls_files
from sekisho.providers import Transport, UpstreamError, UpstreamStatusError, transport_for
from sekisho.providers.base import Kind
from sekisho.providers.h1 import H1Client
from sekisho.routing.catalogue import Endpoint, Route

_PING_CHAT = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
_PING_EMBED = {"input": "ping"}
# The APIs an endpoint declares beside chat completions, each proved with a ping of its own.
_PING_OPT_IN: dict[Kind, dict[str, Any]] = {
    "responses": {"input": "ping", "max_output_tokens": 16, "store": False},
    "completions": {"prompt": "ping", "max_tokens": 1},
}


@dataclass
class EndpointReport:
    endpoint: str
    jurisdiction: str
    reached: str = ""
    tls: str = ""
    auth: str = ""
    models: str = ""
    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


async def check_endpoints(
    endpoints: list[Endpoint], *, chat: bool = False, timeout: float | None = None
) -> list[EndpointReport]:
    """Check every endpoint at once; each report says what works and what does not."""
    import aiohttp

    client = H1Client()
    contexts: dict[str, ssl.SSLContext] = {}
    for ep in endpoints:
        if ep.tls is not None:
            contexts[ep.id] = tls_files.client_context(ep.tls)  # TLSSettingError: config check
    transports = {f: transport_for(f, client, contexts) for f in {ep.family for ep in endpoints}}
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            return list(
                await asyncio.gather(
                    *(
                        _check(ep, transports[ep.family], session, chat=chat, timeout=timeout)
                        for ep in endpoints
                    )
                )
            )
    finally:
        await client.close()


async def _check(
    ep: Endpoint, transport: Transport, session: Any, *, chat: bool, timeout: float | None
) -> EndpointReport:
    import aiohttp

    report = EndpointReport(ep.id, f"{ep.jurisdiction.country}/{ep.jurisdiction.region}")
    try:
        url, headers, tls = transport.probe_request(ep)
    except UpstreamError as exc:  # its api_key_file cannot be used: nothing can be sent
        report.auth = "api key file unusable"
        report.reached = "not tried"
        report.problems.append(exc.detail)
        return report
    if ep.auth is not None:
        try:
            headers = await transport.with_token(ep, headers)
            report.auth = f"token from {ep.auth.url.split('/')[2]}"
        except UpstreamError as exc:
            report.auth = "no token"
            report.problems.append(exc.detail)
    else:
        if ep.api_key_file is not None:
            report.auth = f"api key from {ep.api_key_file}"
        else:
            report.auth = "api key" if ep.api_key else "none configured"
    limit = timeout if timeout is not None else ep.timeouts.connect + ep.timeouts.first_byte
    started = time.perf_counter()
    try:
        async with session.get(
            url,
            headers=headers,
            proxy=ep.proxy,
            ssl=tls if tls is not None else True,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=limit, connect=ep.timeouts.connect),
        ) as resp:
            body = await resp.content.read(1 << 20)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
        report.reached = "no"
        hint = ""
        if ep.simulated:
            hint = " (a sekisho simulator: start them with `sekisho simulate`)"
        report.problems.append(f"cannot reach {url}: {_reason(exc)}{hint}")
        return report
    ms = (time.perf_counter() - started) * 1000
    report.reached = f"HTTP {status} in {ms:.0f} ms"
    await _certificate(ep, tls, ep.timeouts.connect + 5, report)
    if status in (401, 403):
        report.auth += f", refused (HTTP {status})"
        report.problems.append(
            f"the endpoint refused sekisho's credentials (HTTP {status}): check api_key or auth"
        )
    elif status != 200:
        report.problems.append(f"GET {url} answered HTTP {status}")
    elif ep.family == "azure_openai":
        report.models = "deployments are not listed by Azure (prove them with --chat)"
    else:
        report.models = _compare_models(ep, body, report)
    if (
        chat
        and status not in (401, 403)
        and not (ep.auth is not None and report.auth == "no token")
    ):
        for model in ep.models:
            route = Route(ep, model)
            report.requests.append(await _ping(ep, transport, route, report))
            if model.kind != "chat":
                continue
            declares: list[tuple[Kind, bool]] = [
                ("responses", ep.responses_api),
                ("completions", ep.completions_api),
            ]
            for kind, declared in declares:
                if declared:
                    report.requests.append(await _ping(ep, transport, route, report, kind))
    return report


# A certificate closer than this to its end is a problem: renew it before traffic depends on it.
CERT_WARN_DAYS = 14


async def _certificate(
    ep: Endpoint, tls: ssl.SSLContext | None, limit: float, report: EndpointReport
) -> None:
    """When the endpoint's TLS certificate ends: a handshake of its own, checked as requests
    check it (https only; through an egress proxy the tunnel is not opened for this)."""
    url = urlsplit(ep.base_url)
    if url.scheme != "https":
        report.tls = "none (http)"
        return
    if ep.proxy is not None:
        report.tls = "not checked through the egress proxy"
        return
    host, port = url.hostname or "", url.port or 443
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, port, ssl=tls or ssl.create_default_context(), server_hostname=host
            ),
            limit,
        )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        report.tls = "handshake failed"
        report.problems.append(f"TLS handshake with {host}:{port} failed: {_reason(exc)}")
        return
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert() if ssl_object is not None else None
        version = ssl_object.version() if ssl_object is not None else "TLS"
    finally:
        writer.close()
    if not cert or "notAfter" not in cert:
        return
    ends = datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), UTC)
    days = (ends - datetime.now(UTC)).total_seconds() / 86400
    report.tls = f"{version}, certificate valid until {ends:%Y-%m-%d %H:%M} UTC"
    if days < CERT_WARN_DAYS:
        report.problems.append(
            f"its TLS certificate expires in {max(days, 0):.1f} days ({ends:%Y-%m-%d}); "
            "ask its operator to renew it"
        )


def _compare_models(ep: Endpoint, body: bytes, report: EndpointReport) -> str:
    try:
        listed = orjson.loads(body)
        served = {m["id"] for m in listed["data"] if isinstance(m, dict) and "id" in m}
    except (orjson.JSONDecodeError, KeyError, TypeError):
        report.problems.append("the model list is not an OpenAI model list")
        return "unreadable list"
    wanted = [m.id for m in ep.models]
    missing = [m for m in wanted if m not in served]
    if missing:
        report.problems.append(
            f"configured but not served by the endpoint: {', '.join(missing)} "
            "(requests for them would fail there)"
        )
        return f"{len(wanted) - len(missing)} of {len(wanted)} served; missing {', '.join(missing)}"
    return f"all {len(wanted)} served"


async def _ping(
    ep: Endpoint,
    transport: Transport,
    route: Route,
    report: EndpointReport,
    api: Kind | None = None,
) -> str:
    """One small request to ``route``'s model: chat or embeddings by its kind, or ``api``
    (the Responses or completions API an endpoint declares it serves)."""
    kind: Kind = api or ("chat" if route.model.kind == "chat" else "embeddings")
    if api is not None:
        body = dict(_PING_OPT_IN[api], model=route.model.id)
        name = f"{route.model.id} ({api} API, declared by {api}_api: true)"
    else:
        body = dict(_PING_CHAT if kind == "chat" else _PING_EMBED, model=route.model.id)
        name = route.model.id
    started = time.perf_counter()
    try:
        try:
            raw = await _send(transport, route, kind, body)
        except UpstreamStatusError as exc:
            said = _said(exc, transport.credentials(route.endpoint))
            if exc.status != 400 or "max_completion_tokens" not in said or "max_tokens" not in body:
                raise
            # Reasoning models (o-series, gpt-5) refuse max_tokens and name the parameter they
            # take instead: a healthy deployment must not read as failed.
            body = {k: v for k, v in body.items() if k != "max_tokens"}
            raw = await _send(transport, route, kind, {**body, "max_completion_tokens": 16})
        orjson.loads(raw)
    except UpstreamError as exc:
        secrets = transport.credentials(route.endpoint)
        said = _said(exc, secrets) if isinstance(exc, UpstreamStatusError) else ""
        report.problems.append(f"{name}: {exc.detail}" + (f": {said}" if said else ""))
        return f"{name}: failed"
    except orjson.JSONDecodeError:
        report.problems.append(f"{name}: the answer is not JSON")
        return f"{name}: failed"
    return f"{name}: ok in {(time.perf_counter() - started) * 1000:.0f} ms"


async def _send(transport: Transport, route: Route, kind: Kind, body: dict[str, Any]) -> bytes:
    resp = await transport.open(route, kind, body, stream=False)
    try:
        return await resp.read()
    finally:
        resp.close()


def _said(exc: UpstreamStatusError, secrets: tuple[str, ...]) -> str:
    """The endpoint's own words for a refused ping (this is the operator's tool): its error
    message, cut to 300 characters, with each of ``secrets`` (sekisho's credentials for the
    endpoint, which some endpoints quote) masked as [SECRET]: the report ends up in deploy
    pipelines' logs."""
    try:
        data = orjson.loads(exc.body)
    except orjson.JSONDecodeError:
        return ""
    err = data.get("error") if isinstance(data, dict) else None
    message = err.get("message") if isinstance(err, dict) else err
    if message is None and isinstance(data, dict):
        message = data.get("message") or data.get("detail")
    if not message:
        return ""
    text = str(message)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[SECRET]")
    return text[:300]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    # aiohttp says "ssl:default" of every connection, plain HTTP included: noise here.
    text = text.replace(" ssl:default", "").replace(" ssl:None", "")
    return text.splitlines()[0][:200]
