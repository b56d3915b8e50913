"""Wires one ingress replica: backends, Redis, outcome log, policy, service and HTTP app, and
applies live config reloads to them."""

from __future__ import annotations

import logging
import os
import time
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
from router.config import AppConfig, ConfigError
from router.conversations.store import ResponseStore
from router.core.assembly import make_profiles, make_service
from router.core.contract import Service
from router.core.pool import Member, PoolService
from router.core.service import RouterService
from router.http.app import build_http_app
from router.http.live_app import LiveApp
from router.live_config import revision, with_live
from router.metrics import Metrics
from router.outcomes.log import OutcomeLog
from router.outcomes.spool import OutcomeSpool, default_spool_dir, spool_name
from router.quota.limiter import RateLimiter
from router.serving.handle import ServeHandleBackend
from router.serving.reward_replicas import ServeHandleVerifier

log = logging.getLogger("acr.runtime")


@dataclass(frozen=True)
class Shared:
    """What every revision of the live config shares: Redis, the outcome log, metrics,
    the per-key limiter, the reward model and the Responses API's store."""

    redis: Redis | None
    outcomes: OutcomeLog | None
    metrics: Metrics
    limiter: RateLimiter
    reward: Verifier | None
    responses: ResponseStore | None


class Runtime:
    """Everything one ingress replica holds; ``http_app`` is what Serve exposes.

    ``reconfigure`` applies new live sections (``router.live_config``) in place: a new
    service and API app over the same backends and shared parts, swapped in for the next
    request; a config that fails to validate or build is refused and the running one stays.
    """

    def __init__(self, config: AppConfig, backends: dict[str, Backend], shared: Shared) -> None:
        #: what it was built with: live sections a reload leaves out are these
        self.base_config = config
        #: what it serves under now
        self.config = config
        #: every backend by its model id (one without a pool)
        self.backends = backends
        self.shared = shared
        self.revision = revision(config)
        #: a ``RouterService``, or a ``PoolService`` over one per backend
        self.service: Service = self._service(config, None)
        #: the last refused config: its source and why (None: the last one offered applied)
        self.refused: dict[str, str] | None = None
        self.applied_at = time.time()
        outcomes = shared.outcomes
        self.http_app = LiveApp(
            self._app(self.service), outcomes.running if outcomes is not None else None
        )
        shared.metrics.config_revision.labels(revision=self.revision).set(1)

    @property
    def backend(self) -> Backend:
        """The backend (the first one of a pool)."""
        return next(iter(self.backends.values()))

    @property
    def redis(self) -> Redis | None:
        """The Redis client (None without Redis)."""
        return self.shared.redis

    @property
    def outcomes(self) -> OutcomeLog | None:
        """The outcome log (None without Redis)."""
        return self.shared.outcomes

    @property
    def metrics(self) -> Metrics:
        """This replica's metrics."""
        return self.shared.metrics

    @property
    def responses(self) -> ResponseStore | None:
        """Stored responses of the Responses API (None without Redis)."""
        return self.shared.responses

    def config_status(self) -> dict[str, Any]:
        """What ``/readyz`` says of the live config: its revision, when it applied, and the
        last config refused since (None when the last one offered applied)."""
        return {
            "revision": self.revision,
            "applied_at": round(self.applied_at, 3),
            "refused": self.refused,
        }

    def reconfigure(self, live: Mapping[str, Any], source: str) -> str:
        """Apply the live sections ``live`` (``source`` says where they came from, for the
        log and ``/readyz``); sections it leaves out are those the runtime was built with.
        Returns ``applied``, ``unchanged`` or ``refused``. Never raises: a refusal is
        logged, shown by ``/readyz`` and counted, and the running config keeps serving."""
        metrics = self.shared.metrics
        try:
            config = with_live(self.base_config, live, source)
            new_revision = revision(config)
            if new_revision == self.revision:
                result = "unchanged"
            else:
                service = self._service(config, self.service)
                app = self._app(service)
                result = "applied"
        except Exception as exc:  # noqa: BLE001 - whatever fails, the running config stays
            reason = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            log.error(
                "live config from %s refused; revision %s keeps serving: %s",
                source,
                self.revision,
                reason,
            )
            self.refused = {"source": source, "reason": reason, "at": f"{time.time():.3f}"}
            metrics.config_reloads.labels(result="refused").inc()
            metrics.config_refused.set(1)
            return "refused"
        self.refused = None
        metrics.config_refused.set(0)
        metrics.config_reloads.labels(result=result).inc()
        if result == "applied":
            old = self.revision
            self.config, self.service, self.revision = config, service, new_revision
            self.applied_at = time.time()
            self.http_app.swap(app)
            metrics.config_revision.remove(old)
            metrics.config_revision.labels(revision=new_revision).set(1)
            log.info("live config from %s applied: revision %s (was %s)", source, new_revision, old)
        return result

    def _service(self, config: AppConfig, previous: Service | None) -> Service:
        """The service of ``config`` over this runtime's backends; ``previous`` is the one
        it replaces (each backend's policy state carries over)."""
        before: dict[str, RouterService] = {}
        if isinstance(previous, PoolService):
            before = {m.name: m.service for m in previous.members}
        elif isinstance(previous, RouterService):
            before = {self.config.pool_backends()[0].name: previous}
        s = self.shared
        members: list[Member] = []
        for b in config.pool_backends():
            cfg = config.for_backend(b)
            service = make_service(
                cfg,
                self.backends[b.name],
                redis=s.redis,
                outcomes=s.outcomes,
                metrics=s.metrics,
                limiter=s.limiter,
                profiles=make_profiles(cfg, s.reward),
                previous=before.get(b.name),
            )
            members.append(Member(b, service))
        return PoolService(config, members) if config.backends else members[0].service

    def _app(self, service: Service) -> Any:
        """The API app over ``service`` (its lifespan is ``LiveApp``'s)."""
        outcomes = self.shared.outcomes

        async def health() -> dict[str, Any]:
            info: dict[str, Any] = {"model": service.model_name}
            if outcomes is not None:
                info["outcomes_buffered"] = outcomes.pending
                info["outcomes_dropped"] = outcomes.dropped
            return info

        return build_http_app(
            service,
            health=health,
            responses_store=self.shared.responses,
            config_status=self.config_status,
        )


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
    store = None
    if redis is not None:
        store = ResponseStore(redis, prefix=config.redis.key_prefix, ttl_s=config.responses.ttl_s)
    reward = make_reward_model(config, reward_handle)
    shared = Shared(redis, outcomes, metrics, limiter, reward, store)
    return Runtime(config, _backends(config, model_handle, backend, backends), shared)


def _backends(
    config: AppConfig,
    model_handle: Any,
    backend: Backend | None,
    backends: Mapping[str, Backend] | None,
) -> dict[str, Backend]:
    """A backend per member of the pool (``config.pool_backends``) by name: the given
    ones, else built from config (through the ``ModelReplica`` handles of transformers
    models)."""
    given = dict(backends or {})
    if backend is not None:
        given[config.model.name] = backend
    handles = model_handle if isinstance(model_handle, Mapping) else None
    built: dict[str, Backend] = {}
    for b in config.pool_backends():
        handle = handles.get(b.name) if handles is not None else model_handle
        built[b.name] = given.get(b.name) or make_backend(config.for_backend(b), handle)
    return built


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
