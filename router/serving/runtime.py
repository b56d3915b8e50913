"""Wires one ingress replica: backend, Redis, outcome log, policy, service and HTTP app."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from backends.base import Backend
from backends.chat_template import ChatTemplate
from backends.openai_http import OpenAIHTTPBackend
from backends.verifiers.base import Verifier
from backends.verifiers.http_reward import HTTPRewardVerifier
from router.config import AppConfig
from router.conversations.store import ResponseStore
from router.core.assembly import make_profiles, make_service
from router.core.contract import Service
from router.core.pool import Member, PoolService
from router.http.app import build_http_app
from router.metrics import Metrics
from router.outcomes.log import OutcomeLog
from router.outcomes.spool import OutcomeSpool, default_spool_dir, spool_name
from router.quota.limiter import RateLimiter
from router.serving.handle import ServeHandleBackend
from router.serving.reward_replicas import ServeHandleVerifier

log = logging.getLogger("acr.runtime")


@dataclass
class Runtime:
    """Everything one ingress replica holds; ``http_app`` is what Serve exposes."""

    config: AppConfig
    #: every backend by its model id (one without a pool)
    backends: dict[str, Backend]
    redis: Redis | None
    outcomes: OutcomeLog | None
    #: a ``RouterService``, or a ``PoolService`` over one per backend
    service: Service
    #: the ASGI app (FastAPI) Serve exposes
    http_app: Any
    metrics: Metrics
    #: stored responses of the Responses API (None without Redis)
    responses: ResponseStore | None = None

    @property
    def backend(self) -> Backend:
        """The backend (the first one of a pool)."""
        return next(iter(self.backends.values()))


def make_backend(config: AppConfig, model_handle: Any = None) -> Backend:
    """The model backend for ``config``: replicas through a handle, or an HTTP server
    (with the model's chat template from ``model.tokenizer_path`` when given)."""
    m = config.model
    if m.kind == "openai":
        key = os.environ.get(m.api_key_env) if m.api_key_env else None
        template = ChatTemplate.from_path(m.tokenizer_path) if m.tokenizer_path else None
        return OpenAIHTTPBackend(
            m.base_url or "",
            m.name,
            served_name=m.served_name,
            api_key=key,
            timeout_s=m.http_timeout_ms / 1000,
            declared=dict(m.capabilities),
            template=template,
            extra_body=dict(m.extra_body),
            max_concurrency=m.max_concurrency,
        )
    if model_handle is None:
        raise ValueError("model.kind 'transformers' needs a ModelReplica handle")
    return ServeHandleBackend(model_handle, m.name)


def make_reward_model(config: AppConfig, handle: Any = None) -> Verifier | None:
    """The configured reward model: a served one over HTTP, the ``RewardModelReplica``
    deployment through ``handle``, or (in process, without Serve) a local checkpoint."""
    v = config.verifier
    if v.url:
        key = os.environ.get(v.api_key_env) if v.api_key_env else None
        return HTTPRewardVerifier(v.url, v.model, api_key=key, timeout_s=v.timeout_ms / 1000)
    if not v.reward_model_path:
        return None
    if handle is not None:
        return ServeHandleVerifier(handle)
    # torch and transformers load only when a local reward model is configured.
    from backends.verifiers.reward_model import RewardModelVerifier

    return RewardModelVerifier.from_pretrained(v.reward_model_path, device=v.device)


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


def build_runtime(
    config: AppConfig,
    model_handle: Any = None,
    *,
    backend: Backend | None = None,
    backends: Mapping[str, Backend] | None = None,
    reward_handle: Any = None,
) -> Runtime:
    """Build a replica's runtime. ``model_handle`` is the ``ModelReplica`` handle of a
    transformers model (for a pool: a dict of them by backend name); tests pass ``backend``
    (or, for a pool, ``backends`` by name) directly instead."""
    metrics = Metrics()
    redis = make_redis(config)
    outcomes = make_outcome_log(config, redis, metrics) if redis is not None else None
    limiter = RateLimiter(
        redis,
        prefix=config.redis.key_prefix,
        requests_per_minute=config.auth.requests_per_minute,
        tokens_per_minute=config.auth.tokens_per_minute,
        metrics=metrics,
    )
    shared = {"redis": redis, "outcomes": outcomes, "metrics": metrics, "limiter": limiter}
    members = _members(config, model_handle, backend, backends, reward_handle, shared)
    served: Service = PoolService(config, members) if config.backends else members[0].service
    by_name = {m.name: m.service.backend for m in members}

    async def health() -> dict[str, Any]:
        info: dict[str, Any] = {"model": served.model_name}
        if outcomes is not None:
            info["outcomes_buffered"] = outcomes.pending
            info["outcomes_dropped"] = outcomes.dropped
        return info

    store = None
    if redis is not None:
        store = ResponseStore(redis, prefix=config.redis.key_prefix, ttl_s=config.responses.ttl_s)
    app = build_http_app(
        served,
        health=health,
        lifespan=outcomes.running if outcomes is not None else None,
        responses_store=store,
    )
    return Runtime(config, by_name, redis, outcomes, served, app, metrics, store)


def _members(
    config: AppConfig,
    model_handle: Any,
    backend: Backend | None,
    backends: Mapping[str, Backend] | None,
    reward_handle: Any,
    shared: dict[str, Any],
) -> list[Member]:
    """A service per backend of the pool (``config.pool_backends``), sharing ``shared``
    (Redis, outcome log, metrics, limiter) and the reward model."""
    reward = make_reward_model(config, reward_handle)
    given = dict(backends or {})
    if backend is not None:
        given[config.model.name] = backend
    handles = model_handle if isinstance(model_handle, Mapping) else None
    members: list[Member] = []
    for b in config.pool_backends():
        cfg = config.for_backend(b)
        handle = handles.get(b.name) if handles is not None else model_handle
        be = given.get(b.name) or make_backend(cfg, handle)
        service = make_service(cfg, be, profiles=make_profiles(cfg, reward), **shared)
        members.append(Member(b, service))
    return members


def make_outcome_log(config: AppConfig, redis: Redis, metrics: Metrics) -> OutcomeLog:
    """The outcome log of ``config``, spooling to ``redis.spool_dir`` (or the default)."""
    r = config.redis
    directory = Path(r.spool_dir).expanduser() if r.spool_dir else default_spool_dir()
    return OutcomeLog(
        redis,
        stream=r.outcomes_stream,
        spool=OutcomeSpool(directory, spool_name(r.outcomes_stream)),
        metrics=metrics,
        key_prefix=r.key_prefix,
        maxlen=r.stream_maxlen,
        dedup_ttl_s=r.outcome_dedup_ttl_s,
        memory_max=r.buffer_max_outcomes,
        backoff_max_s=r.reconnect_backoff_max_ms / 1000,
    )
