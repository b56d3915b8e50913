"""Prometheus metrics of the router, all named ``acr_*``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """One registry per process (each Ray replica exports its own on ``/metrics``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "acr_requests_total",
            "HTTP requests by endpoint and status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "acr_request_latency_seconds",
            "End-to-end request latency.",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
        self.latency_predicted = Histogram(
            "acr_latency_predicted_seconds",
            "The latency model's prediction for each served request, by strategy.",
            ["strategy"],
            buckets=buckets,
            registry=r,
        )
        self.latency_observed = Histogram(
            "acr_latency_observed_seconds",
            "The latency each served request took (decision to outcome), by strategy.",
            ["strategy"],
            buckets=buckets,
            registry=r,
        )
        self.strategy = Counter(
            "acr_strategy_total",
            "Requests served per strategy and stop reason.",
            ["strategy", "stop_reason"],
            registry=r,
        )
        self.tokens = Counter(
            "acr_tokens_total",
            "Tokens by kind (prompt, visible, hidden, verifier).",
            ["kind"],
            registry=r,
        )
        self.backend_errors = Counter(
            "acr_backend_errors_total", "Backend calls that failed.", ["retryable"], registry=r
        )
        self.retries = Counter("acr_retries_total", "Requests retried after a failure.", registry=r)
        self.fallbacks = Counter(
            "acr_fallbacks_total", "Requests served by a cheaper fallback strategy.", registry=r
        )
        self.outcomes_written = Counter(
            "acr_outcomes_written_total", "Outcomes appended to the Redis stream.", registry=r
        )
        self.outcomes_buffered = Gauge(
            "acr_outcomes_buffered", "Outcomes waiting in memory for Redis.", registry=r
        )
        self.outcomes_dropped = Counter(
            "acr_outcomes_dropped_total", "Outcomes lost because the buffer was full.", registry=r
        )
        self.redis_up = Gauge("acr_redis_up", "1 when the last Redis call succeeded.", registry=r)
        self.rate_limited = Counter(
            "acr_rate_limited_total", "Requests refused by per-key limits.", ["limit"], registry=r
        )
