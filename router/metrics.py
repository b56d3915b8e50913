"""Prometheus metrics of the router, all named ``acr_*``."""

from __future__ import annotations

from collections.abc import Collection

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: the ``endpoint`` label of every path that is not one of the API's routes
OTHER_ENDPOINT = "other"


def endpoint_label(path: str, routes: Collection[str]) -> str:
    """The ``endpoint`` label of a request for ``path``: the path when it is one of the API's
    ``routes``, else ``other``, so that the paths clients make up (authenticated or not)
    never grow the label set."""
    return path if path in routes else OTHER_ENDPOINT


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
        # keys are the configured API keys' ids (or "anonymous"), so the labels stay few
        self.model_tokens = Counter(
            "acr_model_tokens_total",
            "Tokens by backend model, API key and kind (prompt, completion, reasoning).",
            ["model", "key", "kind"],
            registry=r,
        )
        self.model_cost = Counter(
            "acr_model_cost_total",
            "Cost by backend model and API key, in the pool's price units "
            "(backends[].price_per_1k_*).",
            ["model", "key"],
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
            "acr_outcomes_buffered",
            "Outcomes waiting for Redis (in the local spool, or in memory if it failed).",
            registry=r,
        )
        self.outcomes_dropped = Counter(
            "acr_outcomes_dropped_total",
            "Outcomes lost: the spool could not be written and the memory queue was full.",
            registry=r,
        )
        self.outcomes_duplicates = Counter(
            "acr_outcomes_duplicates_total",
            "Replayed outcomes Redis already had (skipped, not written twice).",
            registry=r,
        )
        self.redis_up = Gauge("acr_redis_up", "1 when the last Redis call succeeded.", registry=r)
        self.redis_full = Gauge(
            "acr_redis_full",
            "1 while Redis refuses outcome writes at maxmemory (they wait in the spool).",
            registry=r,
        )
        self.rate_limited = Counter(
            "acr_rate_limited_total", "Requests refused by per-key limits.", ["limit"], registry=r
        )
        self.rate_limit_degraded = Counter(
            "acr_rate_limit_degraded_total",
            "Rate-limit operations (reserve, resize, settle) that Redis could not serve, done by "
            "this replica's in-process limiter instead: limits then hold per replica.",
            ["operation"],
            registry=r,
        )
        self.rate_limit_tokens = Counter(
            "acr_rate_limit_tokens_total",
            "Per-key limit tokens by kind: reserved before running, charged when the request "
            "ended, released unspent.",
            ["kind"],
            registry=r,
        )
        self.rate_limit_settled = Counter(
            "acr_rate_limit_settled_total",
            "Token reservations settled, by how the request ended (ok, timeout, error, "
            "abandoned, refused).",
            ["outcome"],
            registry=r,
        )
        self.config_revision = Gauge(
            "acr_config_revision_info",
            "1 for the live config revision (policy, strategies, limits) this replica decides "
            "under.",
            ["revision"],
            registry=r,
        )
        self.config_reloads = Counter(
            "acr_config_reloads_total",
            "Live config reloads offered, by result (applied, unchanged, refused).",
            ["result"],
            registry=r,
        )
        self.config_refused = Gauge(
            "acr_config_refused",
            "1 while the last live config offered was refused (the previous one serves).",
            registry=r,
        )
