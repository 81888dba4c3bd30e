"""Each tenant's model requests in flight, against the cap its operator set
(``tenants.NAME.limits.max_concurrent_requests``, テナントごとの同時実行数の上限).

An endpoint's ``max_concurrency`` is shared by every tenant its policy lets in. Waiting for a
slot is fair between tenants (``routing.health``), but nothing takes a slot back: one tenant's
slow streams, within its rate limits, can hold every slot of an endpoint for as long as they
run. A tenant's cap bounds that: a request past it is refused at once with 429
``tenant_concurrency_limit``, so every other tenant keeps the endpoint's other slots.

A request counts from when its key is checked until the last byte of its answer is sent (or
its client leaves): the gateway's ``_model_call`` enters it and leaves it in one ``finally``.
Without Redis each process counts its own (with ``--workers N`` each allows cap ÷ N, at least
one, as an endpoint's slots are shared out); with ``redis:`` every process and instance counts
in the one Redis, as leases in the endpoints' shared slots (``routing.slots``) under the id
``tenant:<name>`` (an endpoint id has no ``:``), so a process that dies leaves nothing counted
past its leases. As an endpoint's slot is, a request's count is kept by its process for up to
50 ms after it ends, for the tenant's next request there (no Redis round trip under steady
load); meanwhile it still counts for the other processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from sekisho.errors import ConcurrencyLimited, ServiceUnavailable

if TYPE_CHECKING:
    from sekisho.routing.slots import SharedSlots


class TenantsInFlight:
    """How many model requests each capped tenant has in flight."""

    def __init__(self, caps: Mapping[str, int | None], *, workers: int = 1) -> None:
        self.caps: dict[str, int] = {}
        self.set_caps(caps)
        self.workers = workers
        self.counts: dict[str, int] = {}  # without Redis: each tenant's requests here
        self.shared: SharedSlots | None = None

    def set_caps(self, caps: Mapping[str, int | None]) -> None:
        """The caps as configured (at start and on each reload); requests counted carry on."""
        self.caps = {tenant: cap for tenant, cap in caps.items() if cap is not None}

    def share(self, shared: SharedSlots) -> None:
        """Count in Redis, with every other process and instance, from now on."""
        self.shared = shared

    async def enter(self, tenant: str) -> None:
        """Count one more request of ``tenant`` (one with a cap: see ``caps``), or raise
        ``ConcurrencyLimited`` if it has as many in flight as its cap allows. A request
        counted must ``leave`` exactly once."""
        cap = self.caps[tenant]
        shared = self.shared
        if shared is None:
            here = cap if self.workers <= 1 else max(1, cap // self.workers)
            n = self.counts.get(tenant, 0)
            if n >= here:
                raise _refusal(tenant, cap, n, self._where(cap, here))
            self.counts[tenant] = n + 1
            return
        slot_id = f"tenant:{tenant}"
        try:
            taken = shared.reuse(slot_id) or await shared.try_take(slot_id, cap)
        except ServiceUnavailable:
            # Fail closed, as the rate limits do: without Redis no process knows the count.
            raise ServiceUnavailable(
                f"sekisho cannot reach Redis to count tenant {tenant!r}'s requests in flight "
                f"(tenants.{tenant}.limits.max_concurrent_requests, shared by every gateway "
                "process); the request was not sent. Check the `redis:` setting and the server.",
                code="limits_unavailable",
                headers={"retry-after": "1"},
            ) from None
        if not taken:
            seen = shared.in_use(slot_id)  # as the refusing script counted them
            together = "every gateway process together"
            raise _refusal(tenant, cap, cap if seen is None else seen, together)

    def leave(self, tenant: str) -> None:
        """A request ``enter`` counted has ended."""
        if self.shared is not None:
            # Kept 50 ms for this process's next request of the tenant, then given back.
            self.shared.park(f"tenant:{tenant}")
            return
        n = self.counts.get(tenant, 0)
        if n > 1:
            self.counts[tenant] = n - 1
        else:
            self.counts.pop(tenant, None)

    def _where(self, cap: int, here: int) -> str:
        if here == cap:
            return "this gateway process"
        return f"this worker, which allows {here} of them: one of {self.workers} workers"


def _refusal(tenant: str, cap: int, n: int, where: str) -> ConcurrencyLimited:
    return ConcurrencyLimited(
        f"Tenant {tenant!r} has {n} requests in flight ({where}), as many as its limit allows "
        f"(tenants.{tenant}.limits.max_concurrent_requests: {cap}). This request was not sent. "
        "Retry once one of them has finished (Retry-After), or ask the gateway's operator to "
        "raise the limit.",
        headers={"retry-after": "1"},
    )
