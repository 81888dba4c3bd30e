"""Passive health: errors, timeouts and 429s mark an endpoint down for a backoff that doubles
with each consecutive failure; one success brings it back. In-flight counts enforce each
endpoint's concurrency limit. State is per process (each gateway process learns on its own)."""

from __future__ import annotations

import time
from collections.abc import Callable


class EndpointHealth:
    __slots__ = ("down_until", "failures", "in_flight", "last_error")

    def __init__(self) -> None:
        self.failures = 0
        self.down_until = 0.0
        self.in_flight = 0
        self.last_error = ""


class Health:
    def __init__(
        self,
        *,
        failure_threshold: int = 1,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._clock = clock
        self._state: dict[str, EndpointHealth] = {}

    def state(self, endpoint_id: str) -> EndpointHealth:
        st = self._state.get(endpoint_id)
        if st is None:
            st = self._state[endpoint_id] = EndpointHealth()
        return st

    def is_up(self, endpoint_id: str) -> bool:
        st = self._state.get(endpoint_id)
        return st is None or st.down_until <= self._clock()

    def success(self, endpoint_id: str) -> None:
        st = self.state(endpoint_id)
        st.failures = 0
        st.down_until = 0.0

    def failure(self, endpoint_id: str, reason: str, retry_after: float | None = None) -> None:
        st = self.state(endpoint_id)
        st.failures += 1
        st.last_error = reason
        if st.failures >= self.failure_threshold:
            n = st.failures - self.failure_threshold
            backoff = min(self.backoff_max, self.backoff_initial * (2**n))
            if retry_after is not None:
                backoff = min(self.backoff_max, max(backoff, retry_after))
            st.down_until = self._clock() + backoff

    def snapshot(self) -> dict[str, dict[str, object]]:
        now = self._clock()
        return {
            eid: {
                "up": st.down_until <= now,
                "consecutive_failures": st.failures,
                "down_for_seconds": max(0.0, round(st.down_until - now, 3)),
                "in_flight": st.in_flight,
                "last_error": st.last_error,
            }
            for eid, st in self._state.items()
        }
