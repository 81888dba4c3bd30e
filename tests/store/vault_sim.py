"""A small Vault Transit server on loopback: the real endpoints and wire format, real AES-GCM.

Implements ``POST /v1/<mount>/encrypt/:name``, ``/decrypt/:name``, ``/rewrap/:name`` (which,
as in Vault, has no ``associated_data``), ``/keys/:name/rotate``, ``/keys/:name/config``
(``min_decryption_version``), ``/keys/:name/trim`` and ``GET /keys/:name`` as Vault documents them
(base64 plaintext and associated_data, ``vault:v<N>:<base64(nonce|ciphertext|tag)>``
ciphertexts, ``{"errors": [...]}`` on failure, ``X-Vault-Token`` authentication). Keys are
created on first use, like ``transit/keys/:name``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class VaultTransitSim:
    def __init__(
        self,
        token: str = "s.test-token",
        mount: str = "transit",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.token = token
        self.mount = mount
        self.keys: dict[str, dict[int, bytes]] = {}
        self.calls: list[tuple[str, str]] = []
        self.refuse: set[str] = set()  # operations answered 403 (a token whose policy lacks them)
        self.quote_token = False  # a refusal quotes the token presented (a proxy in front)
        self.min_decryption: dict[str, int] = {}  # keys/:name/config's min_decryption_version
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                self.do_POST(method="GET")

            def do_POST(self, method: str = "POST") -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b"{}"
                status, body = sim.handle(self.path, self.headers.get("X-Vault-Token"), raw, method)
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:  # https, with the certificate the context holds
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.address = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> VaultTransitSim:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(
        self, path: str, token: str | None, raw: bytes, method: str = "POST"
    ) -> tuple[int, Any]:
        if token != self.token:
            if self.quote_token:
                return 403, {"errors": [f"permission denied for token {token}"]}
            return 403, {"errors": ["permission denied"]}
        prefix = f"/v1/{self.mount}/"
        if not path.startswith(prefix):
            return 404, {"errors": [f"no handler for route '{path}'"]}
        parts = path[len(prefix) :].split("/")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return 400, {"errors": ["failed to parse JSON input"]}
        self.calls.append((parts[0], "/".join(parts[1:])))
        if parts[0] in self.refuse or (len(parts) == 3 and parts[2] in self.refuse):
            return 403, {"errors": ["1 error occurred:\n\t* permission denied\n\n"]}
        if method == "GET":
            if len(parts) == 2 and parts[0] == "keys":
                return 200, {"data": self._read(parts[1])}
            return 405, {"errors": ["unsupported operation"]}
        try:
            if len(parts) == 3 and parts[0] == "keys" and parts[2] == "config":
                return self._config(parts[1], body)
            if len(parts) == 3 and parts[0] == "keys" and parts[2] == "trim":
                return self._trim(parts[1], body)
            if len(parts) == 2 and parts[0] in ("encrypt", "decrypt", "rewrap"):
                return 200, {"data": getattr(self, "_" + parts[0])(parts[1], body)}
            if len(parts) == 3 and parts[0] == "keys" and parts[2] == "rotate":
                versions = self._key(parts[1])
                versions[max(versions) + 1] = os.urandom(32)
                return 200, {"data": {"name": parts[1], "latest_version": max(versions)}}
        except _Fail as exc:
            return 400, {"errors": [str(exc)]}
        return 404, {"errors": [f"no handler for route '{path}'"]}

    def _read(self, name: str) -> dict[str, Any]:
        versions = self._key(name)
        return {
            "name": name,
            "keys": {str(v): 1700000000 for v in sorted(versions)},
            "latest_version": max(versions),
            "min_decryption_version": self.min_decryption.get(name, 1),
            "min_available_version": min(versions),
            "min_encryption_version": 0,
        }

    def _config(self, name: str, body: dict[str, Any]) -> tuple[int, Any]:
        versions = self._key(name)
        wanted = body.get("min_decryption_version")
        if isinstance(wanted, int):
            if not 0 < wanted <= max(versions):
                return 400, {"errors": ["cannot set min decryption version above latest"]}
            self.min_decryption[name] = wanted
        return 204, None

    def _trim(self, name: str, body: dict[str, Any]) -> tuple[int, Any]:
        versions = self._key(name)
        wanted = body.get("min_available_version")
        if not isinstance(wanted, int) or wanted < 1:
            return 400, {"errors": ["minimum available version should be positive"]}
        if wanted > self.min_decryption.get(name, 1):
            return 400, {"errors": ["minimum available version cannot be greater than "
                                    "minimum decryption version"]}  # fmt: skip
        for v in [v for v in versions if v < wanted]:
            del versions[v]
        return 204, None

    def _key(self, name: str) -> dict[int, bytes]:
        return self.keys.setdefault(name, {1: os.urandom(32)})

    def _encrypt(
        self, name: str, body: dict[str, Any], version: int | None = None
    ) -> dict[str, Any]:
        versions = self._key(name)
        v = version or max(versions)
        plaintext = _b64(body.get("plaintext"), "plaintext")
        aad = _b64(body.get("associated_data") or "", "associated_data") or None
        nonce = os.urandom(12)
        sealed = AESGCM(versions[v]).encrypt(nonce, plaintext, aad)
        return {
            "ciphertext": f"vault:v{v}:" + base64.b64encode(nonce + sealed).decode(),
            "key_version": v,
        }

    def _decrypt(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        versions = self._key(name)
        ct = body.get("ciphertext")
        if not isinstance(ct, str) or not ct.startswith("vault:v"):
            raise _Fail("invalid ciphertext: no prefix")
        head, _, blob_b64 = ct[len("vault:v") :].partition(":")
        if not head.isdigit() or int(head) not in versions:
            raise _Fail("invalid key version")
        if int(head) < self.min_decryption.get(name, 1):
            raise _Fail("ciphertext or signature version is disallowed by policy (too old)")
        blob = _b64(blob_b64, "ciphertext")
        aad = _b64(body.get("associated_data") or "", "associated_data") or None
        try:
            plaintext = AESGCM(versions[int(head)]).decrypt(blob[:12], blob[12:], aad)
        except InvalidTag:
            raise _Fail("cipher: message authentication failed") from None
        return {"plaintext": base64.b64encode(plaintext).decode()}

    def _rewrap(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        # As Vault: rewrap takes ciphertext, context, key_version and nonce; it has no
        # associated_data parameter and ignores one sent, so a key sealed with associated
        # data fails authentication here.
        bare = {"ciphertext": body.get("ciphertext")}
        plaintext = self._decrypt(name, bare)["plaintext"]
        return self._encrypt(name, {"plaintext": plaintext})


class _Fail(Exception):
    pass


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise _Fail(f"missing {what}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _Fail(f"failed to base64-decode {what}") from None
