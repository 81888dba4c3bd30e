"""Prometheus metrics, labelled by endpoint and jurisdiction so that an operator can see, per
border, how much went where."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "sekisho_requests",
            "Requests answered, by route, status, endpoint and jurisdiction",
            ["route", "status", "endpoint", "jurisdiction"],
            registry=r,
        )
        self.latency = Histogram(
            "sekisho_request_duration_seconds",
            "Time from request received to response complete",
            ["route", "endpoint", "jurisdiction"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "sekisho_tokens",
            "Tokens reported by upstreams",
            ["endpoint", "jurisdiction", "direction"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "sekisho_upstream_errors",
            "Upstream failures (connect, timeout, status, protocol)",
            ["endpoint", "jurisdiction", "reason"],
            registry=r,
        )
        self.policy_refusals = Counter(
            "sekisho_policy_refusals",
            "Requests refused by the sovereignty policy",
            ["tenant", "level"],
            registry=r,
        )
        self.in_flight = Gauge("sekisho_in_flight_requests", "Requests being served", registry=r)
        self.endpoint_up = Gauge(
            "sekisho_endpoint_up",
            "1 when passive health considers the endpoint up",
            ["endpoint", "jurisdiction"],
            registry=r,
        )

    def child(self, metric: Counter | Histogram | Gauge, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: prometheus_client validates and looks the
        labels up again on every call, which the request path does several times. Label
        values are bounded by the configuration (routes, statuses, endpoints)."""
        key = (metric._name, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found
