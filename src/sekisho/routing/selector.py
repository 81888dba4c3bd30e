"""Choose the order in which to try the eligible routes.

The first attempt is a weighted random choice among the healthy routes with free capacity in
the most preferred tier (routes the policy ranks equally); failovers follow in the decision's
preference order. Routes that are down or full come last, as a last resort, so a request is
never refused while an eligible endpoint might still answer. The plan is a subset of its input
in a new order: never anything else.
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

    def plan(
        self,
        eligible: Sequence[Route],
        max_attempts: int,
        tiers: Sequence[object] | None = None,
    ) -> list[Route]:
        health = self.health
        if len(eligible) <= 1:
            if eligible and health.limited_for(eligible[0].endpoint.id) > 0:
                return []  # it asked not to be called yet (Retry-After): nothing is sent
            return list(eligible[:max_attempts])
        ready: list[tuple[object, Route]] = []
        later: list[Route] = []
        for i, route in enumerate(eligible):
            ep = route.endpoint
            if health.limited_for(ep.id) > 0:
                continue  # not even as a last resort: it said when to come back
            full = self.health.is_full(ep)
            tier = tiers[i] if tiers is not None else 0
            if self.health.is_up(ep.id) and not full:
                ready.append((tier, route))
            else:
                later.append(route)
        order = [r for _, r in ready]
        if len(ready) > 1:
            best = ready[0][0]
            peers = [r for t, r in ready if t == best]
            if len(peers) > 1:
                first = self._weighted(peers)
                order.remove(first)
                order.insert(0, first)
        return (order + later)[:max_attempts]

    def _weighted(self, routes: list[Route]) -> Route:
        total = sum(r.endpoint.weight for r in routes)
        x = self._rng.random() * total
        for r in routes:
            x -= r.endpoint.weight
            if x < 0:
                return r
        return routes[-1]
