"""An OAuth 2.0 token endpoint on loopback (client-credentials grant, as Entra ID answers it),
with switches for the ways a real one fails."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

CLIENT_ID = "sekisho-gateway"
CLIENT_SECRET = "s3cret-never-shown"


class TokenServer:
    def __init__(self, on_issue: Callable[[str], None] | None = None) -> None:
        self.on_issue = on_issue  # told each token it issues (a simulator then accepts it)
        self.lifetime: Any = 3600  # expires_in of the next answers
        self.mode = "ok"  # ok | refuse | echo (refuse, quoting the secret) | down | garbage | hang
        self.forms: list[dict[str, str]] = []
        self.issued: list[str] = []
        self.assertions: set[str] = set()  # federated identity tokens it accepts
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> TokenServer:
        app = web.Application()
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/contoso.onmicrosoft.com/oauth2/v2.0/token"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.forms.append(form)
        if self.mode == "hang":
            await asyncio.sleep(3)  # longer than any wait the tests allow a token
        if self.mode == "down":
            return web.Response(status=503, text="upstream identity provider unavailable")
        if self.mode == "garbage":
            return web.Response(status=200, text="<html>login page</html>")
        if self.mode == "echo":  # an identity provider that quotes what it refused
            said = f"invalid client_secret '{form.get('client_secret')}' for {CLIENT_ID}"
            return web.json_response(
                {"error": "invalid_client", "error_description": said}, status=401
            )
        secret_ok = form.get("client_secret") == CLIENT_SECRET
        assertion_ok = (
            form.get("client_assertion_type")
            == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            and form.get("client_assertion") in self.assertions
        )
        if (
            self.mode == "refuse"
            or form.get("grant_type") != "client_credentials"
            or form.get("client_id") != CLIENT_ID
            or not (secret_ok or assertion_ok)
        ):
            return web.json_response(
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.\r\n"
                    "Trace ID: 0000 Correlation ID: 1111",
                },
                status=401,
            )
        token = f"tok-{len(self.issued) + 1}"
        self.issued.append(token)
        if self.on_issue is not None:
            self.on_issue(token)
        return web.json_response(
            {"token_type": "Bearer", "expires_in": self.lifetime, "access_token": token}
        )
