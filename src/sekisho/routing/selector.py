"""Choose the order in which to try the eligible routes.

The first attempt is a weighted random choice among the healthy routes with free capacity in
the most preferred tier; failovers follow in the decision's preference order. Routes that are
down or full come last, as a last resort, so a request is never refused while an eligible
endpoint might still answer. The plan is a permutation of its input: never more.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from sekisho.routing.catalogue import Route
from sekisho.routing.health import Health


class Selector:
    def __init__(self, health: Health, rng: random.Random | None = None) -> None:
        self.health = health
        self._rng = rng or random.Random()

    def plan(self, eligible: Sequence[Route], max_attempts: int) -> list[Route]:
        if len(eligible) <= 1:
            return list(eligible[:max_attempts])
        ready: list[Route] = []
        later: list[Route] = []
        for route in eligible:
            ep = route.endpoint
            st = self.health.state(ep.id)
            full = ep.max_concurrency is not None and st.in_flight >= ep.max_concurrency
            (ready if self.health.is_up(ep.id) and not full else later).append(route)
        if len(ready) > 1:
            first = self._weighted(ready)
            ready.remove(first)
            ready.insert(0, first)
        return (ready + later)[:max_attempts]

    def _weighted(self, routes: list[Route]) -> Route:
        total = sum(r.endpoint.weight for r in routes)
        x = self._rng.random() * total
        for r in routes:
            x -= r.endpoint.weight
            if x < 0:
                return r
        return routes[-1]
