"""Wires one ingress replica: backend, Redis, outcome log, policy, service and HTTP app."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from redis.asyncio import Redis

from backends.base import Backend
from backends.openai_http import OpenAIHTTPBackend
from policies.adaptive import AdaptivePolicy
from router.config import AppConfig
from router.http_api import build_http_app
from router.metrics import Metrics
from router.outcome_log import OutcomeLog
from router.rate_limit import RateLimiter
from router.serve_handle import ServeHandleBackend
from router.service import RouterService

log = logging.getLogger("acr.runtime")


@dataclass
class Runtime:
    """Everything one ingress replica holds; ``http_app`` is what Serve exposes."""

    config: AppConfig
    backend: Backend
    redis: Redis | None
    outcomes: OutcomeLog | None
    service: RouterService
    http_app: FastAPI
    metrics: Metrics


def make_backend(config: AppConfig, model_handle: Any = None) -> Backend:
    """The model backend for ``config``: replicas through a handle, or an HTTP server."""
    m = config.model
    if m.kind == "openai":
        key = os.environ.get(m.api_key_env) if m.api_key_env else None
        return OpenAIHTTPBackend(
            m.base_url or "", m.name, api_key=key, timeout_s=m.http_timeout_ms / 1000
        )
    if model_handle is None:
        raise ValueError("model.kind 'transformers' needs a ModelReplica handle")
    return ServeHandleBackend(model_handle, m.name)


def make_redis(config: AppConfig) -> Redis | None:
    """An asyncio Redis client for ``config.redis.url`` (None when no URL is set)."""
    r = config.redis
    if not r.url:
        return None
    timeout = r.socket_timeout_ms / 1000
    return Redis.from_url(
        r.url,
        password=r.password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
    )


def make_policy(config: AppConfig, backend: Backend, redis: Redis | None) -> AdaptivePolicy:
    """The adaptive policy for ``config``, sharing state through ``redis`` when given."""
    return AdaptivePolicy.build(
        config.policy,
        config.strategies,
        backend,
        redis_client=redis,
        key_prefix=config.redis.key_prefix,
    )


def build_runtime(
    config: AppConfig, model_handle: Any = None, *, backend: Backend | None = None
) -> Runtime:
    """Build a replica's runtime; tests pass ``backend`` directly instead of a handle."""
    metrics = Metrics()
    be = backend or make_backend(config, model_handle)
    redis = make_redis(config)
    outcomes = None
    if redis is not None:
        outcomes = OutcomeLog(
            redis,
            stream=config.redis.outcomes_stream,
            maxlen=config.redis.stream_maxlen,
            buffer_max=config.redis.buffer_max_outcomes,
            metrics=metrics,
            backoff_max_s=config.redis.reconnect_backoff_max_ms / 1000,
        )
    limiter = RateLimiter(
        redis,
        prefix=config.redis.key_prefix,
        requests_per_minute=config.auth.requests_per_minute,
        tokens_per_minute=config.auth.tokens_per_minute,
    )
    service = RouterService(
        config,
        be,
        make_policy(config, be, redis),
        outcomes=outcomes,
        metrics=metrics,
        limiter=limiter,
    )

    async def health() -> dict[str, Any]:
        info: dict[str, Any] = {"model": be.name}
        if outcomes is not None:
            info["outcomes_buffered"] = len(outcomes.buffer)
            info["outcomes_dropped"] = outcomes.dropped
        return info

    app = build_http_app(service, health=health)
    return Runtime(config, be, redis, outcomes, service, app, metrics)
