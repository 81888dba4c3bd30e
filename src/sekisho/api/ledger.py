"""The transparency ledger over HTTP: checkpoints, tlog-tiles, proofs, entries and receipts.

Checkpoints, hash tiles and proofs carry only hashes and signatures, so anyone may fetch them
(auditors and witnesses keep checkpoints). Entries, entry bundles and receipts name tenants,
endpoints and classifications, so a tenant reads its own entries and the ``ledger.read``
permission (auditors) reads all (entry bundles mix tenants: auditors only). See docs/ledger.md.
"""

from __future__ import annotations

import asyncio
import base64

import orjson

from sekisho.api import http
from sekisho.errors import MethodNotAllowed, NotFound, PermissionDenied
from sekisho.identity import Authenticator, Principal, allows
from sekisho.identity.roles import Permission
from sekisho.ledger import Ledger
from sekisho.ledger.tiles import TileRequest, read_tile
from sekisho.ledger.tiles import parse_path as parse_tile_path


class LedgerAPI:
    """``GET /ledger/...``; the gateway hands it every path under that prefix."""

    def __init__(self, ledger: Ledger, authenticator: Authenticator) -> None:
        self.ledger = ledger
        self.authenticator = authenticator

    async def __call__(self, scope: http.Scope, send: http.Send, rid: str, path: str) -> None:
        if scope["method"] != "GET":
            raise MethodNotAllowed(f"{path} accepts GET, not {scope['method']}.", allow=("GET",))
        ledger = self.ledger
        query = http.query(scope)
        if path == "/ledger/checkpoint":
            # Public by design: anyone may fetch and keep checkpoints (witness-style).
            text = await asyncio.to_thread(ledger.latest_checkpoint)
            await http.send_bytes(send, 200, text.encode(), rid, ctype=b"text/plain; charset=utf-8")
            return
        if path.startswith("/ledger/tile/"):
            # C2SP tlog-tiles. Hash tiles are public like checkpoints: mirrors and witnesses
            # fetch these. Entry bundles hold every tenant's entries (tenants, request ids,
            # classifications): auditors only, like reading every entry one by one.
            request = parse_tile_path(path[len("/ledger/") :])
            private = request.level is None
            if private:
                principal = await self.authenticator.authenticate_headers(scope["headers"])
                if not allows(principal, Permission.LEDGER_READ):
                    raise PermissionDenied(
                        "Entry bundles hold every tenant's ledger entries; reading them needs "
                        f"permission 'ledger.read' (roles that have it: auditor), which role "
                        f"'{principal.role}' (principal {principal.subject}) does not have. "
                        "A tenant reads its own entries at /ledger/entries/{index} and "
                        "/ledger/receipts/{request_id}; hash tiles stay public.",
                        code="insufficient_role",
                    )
            body = await asyncio.to_thread(self._tile, request)
            cache = "public, max-age=31536000, immutable" if request.width == 256 else "no-cache"
            if private:
                cache = "private, no-store"
            await http.send_bytes(
                send, 200, body, rid, [("cache-control", cache)], ctype=b"application/octet-stream"
            )
            return
        if path == "/ledger/proofs/inclusion":
            index, size = http.int_param(query, "index"), http.int_param(query, "tree_size")
            proof = await asyncio.to_thread(ledger.inclusion_proof, index, size)
            await http.send_json(
                send,
                200,
                {
                    "index": index,
                    "tree_size": size,
                    "proof": [base64.b64encode(h).decode() for h in proof],
                },
                rid,
            )
            return
        if path == "/ledger/proofs/consistency":
            old, new = http.int_param(query, "old"), http.int_param(query, "new")
            proof = await asyncio.to_thread(ledger.consistency_proof, old, new)
            await http.send_json(
                send,
                200,
                {
                    "old_size": old,
                    "new_size": new,
                    "proof": [base64.b64encode(h).decode() for h in proof],
                },
                rid,
            )
            return
        principal = await self.authenticator.authenticate_headers(scope["headers"])
        if path.startswith("/ledger/entries/"):
            index = http.int_segment(path, "/ledger/entries/")
            leaf = await asyncio.to_thread(ledger.entry, index)
            owner = await asyncio.to_thread(_entry_tenant, ledger, index, leaf)
            self._may_read_entry(principal, owner, f"ledger entry {index}")
            await http.send_json(
                send, 200, {"index": index, "entry": base64.b64encode(leaf).decode()}, rid
            )
            return
        if path.startswith("/ledger/receipts/"):
            request_id = path[len("/ledger/receipts/") :]
            # a size like every other route's: '²', 'abc' or -1 is a 400 (they were a 500, or
            # silently a receipt without the consistency proof asked for)
            since = http.int_param(query, "since") if "since" in query else None
            receipt = await asyncio.to_thread(ledger.receipt, request_id, consistency_with=since)
            owner = _leaf_field(base64.b64decode(receipt["entry"]), "tenant")
            self._may_read_entry(principal, owner, None, request_id)
            await http.send_json(send, 200, receipt, rid)
            return
        raise NotFound(f"Unknown ledger path {path!r}.", code="unknown_url")

    def _tile(self, request: TileRequest) -> bytes:
        latest = self.ledger.storage.latest_checkpoint()
        size = latest.size if latest is not None else 0
        return read_tile(self.ledger.storage, request, size)

    @staticmethod
    def _may_read_entry(
        principal: Principal, tenant: str | None, entry: str | None, request_id: str = ""
    ) -> None:
        """A tenant reads its own entries; principals with ledger.read (auditors) read all.

        Another tenant's entry is a 403 when named by index (the public checkpoint already tells
        how many entries exist), but a receipt asked for by request id is a 404, so that nobody
        learns which request ids other tenants used."""
        if allows(principal, Permission.LEDGER_READ):
            return
        if tenant is not None and tenant == principal.tenant:
            return
        if entry is None:
            raise NotFound(  # word for word what a request id nobody used gets: no oracle
                f"the ledger has no decision for request {request_id!r}",
                code="ledger_receipt_not_found",
            )
        raise PermissionDenied(
            f"The {entry} belongs to another tenant; role '{principal.role}' (principal "
            f"{principal.subject}) reads only its own tenant's entries. Reading every tenant's "
            "needs permission 'ledger.read' (roles that have it: auditor).",
            code="insufficient_role",
        )


def _leaf_field(leaf: bytes, name: str) -> str | None:
    try:
        value = orjson.loads(leaf).get(name)
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _entry_tenant(ledger: Ledger, index: int, leaf: bytes) -> str | None:
    """The tenant an entry belongs to. An outcome entry names only its request: it belongs to
    the tenant of that request's decision, the last one logged before it."""
    tenant = _leaf_field(leaf, "tenant")
    if tenant is None and _leaf_field(leaf, "kind") == "admin":
        # an administrative act on one tenant's data (a kept response read back, ...) names
        # that tenant in its details
        try:
            details = orjson.loads(leaf).get("details")
        except orjson.JSONDecodeError:
            details = None
        named = details.get("tenant") if isinstance(details, dict) else None
        return named if isinstance(named, str) else None
    request_id = _leaf_field(leaf, "request_id")
    if tenant is not None or request_id is None or _leaf_field(leaf, "kind") != "outcome":
        return tenant
    decisions = [i for i, kind in ledger.find(request_id) if kind == "decision" and i < index]
    return _leaf_field(ledger.entry(decisions[-1]), "tenant") if decisions else None
