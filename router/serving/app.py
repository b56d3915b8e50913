"""Ray Serve deployments and the application builder.

``app_builder`` (``router.serving.app:app_builder``) is the import path ``acr serve``,
``serve deploy`` and the Helm chart's ``serveConfigV2`` use; its args are the config inline
(``{"config": {...}}``, without the live sections) or a file (``{"config_path": ...}``).
The live sections (``router.live_config``) reach the ingress as its deployment's
``user_config``: Serve applies a change to them in place (``RouterIngress.reconfigure``),
while a change to the args rebuilds the application as a rolling update. It binds:

- ``ModelReplica``: the transformers model (a pool's: one deployment per transformers
  backend), one per replica (``num_cpus``/``num_gpus`` from
  config), batching concurrent requests continuously (rows join and leave between decode
  steps, ``model.batching: continuous``) or with ``@serve.batch`` (``static``);
- ``RouterIngress``: the FastAPI ingress running the router's strategies, which call the
  model replicas through a ``DeploymentHandle`` wrapped as a ``Backend``.

Both drain when Serve stops them (a scale-down, an update, a node drain): no new requests,
the running ones finish within the longest request deadline, then the ingress flushes its
outcome spool. A rollout starts each replacement before the replica it replaces stops
(``max_surge_percent``), so a deployment of one replica keeps serving through it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from backends.base import BackendError, ChatMessage, GenerationRequest
from backends.bundled.paths import bundled_model_path
from router.config import AppConfig, ConfigError, ModelConfig, load_config, parse_config
from router.serving.embedded_redis import EmbeddedRedis
from router.serving.handle import invalid_request, result_to_dict, stream_to_dicts
from router.serving.reward_replicas import RewardModelReplica
from router.serving.runtime import build_runtime

log = logging.getLogger("acr.app")

CONFIG_PATH_ENV = "ACR_CONFIG_PATH"
#: what an ingress may take past the longest request deadline to flush its outcome spool
FLUSH_GRACE_S = 10.0
#: a rollout's extra replicas, in percent of the target: each replacement is up before the
#: replica it replaces stops
ROLLOUT_SURGE_PERCENT = 100


@serve.deployment(name="ModelReplica", max_ongoing_requests=64)
class ModelReplica:
    """A transformers model behind Ray Serve; requests arrive as plain dicts.

    Errors come back as ``{"error": ..., "retryable": ...}`` values, not exceptions, so the
    caller keeps the retryable flag across the process boundary.
    """

    def __init__(self, model_config: dict[str, Any]) -> None:
        # torch is imported in the model replica's process only, never by the ingress.
        from backends.transformers_backend import TransformersBackend

        cfg = ModelConfig(**model_config)
        path = cfg.path or str(bundled_model_path())
        self.backend = TransformersBackend.from_pretrained(
            path,
            device=cfg.device,
            dtype=cfg.dtype,
            torch_threads=cfg.torch_threads or max(1, int(cfg.num_cpus)),
            name=cfg.name,
            batching=cfg.batching,
        )
        batched: Any = self.generate_batched
        batched.set_max_batch_size(cfg.max_batch_size)
        batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_ms / 1000)
        log.info("model replica ready: %s", self.backend.describe())

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """Validate one request, then join the next batch; returns a result dict."""
        try:
            req = GenerationRequest(**request)
            self.backend.check_request(req)
        except BackendError as exc:
            return {"error": str(exc), "retryable": exc.retryable}
        except ValueError as exc:
            return invalid_request(exc)
        if self.backend.batching == "continuous":
            try:
                return result_to_dict(await self.backend.generate(req))
            except BackendError as exc:
                return {"error": str(exc), "retryable": exc.retryable}
        result: dict[str, Any] = await self.generate_batched(req)
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005, batch_size_fn=None)
    async def generate_batched(self, requests: list[GenerationRequest]) -> list[dict[str, Any]]:
        """Serve a whole batch in one decode loop (shared prefills, mixed parameters)."""
        try:
            results = await asyncio.to_thread(self.backend.generate_batch_sync, requests)
        except BackendError as exc:
            return [{"error": str(exc), "retryable": exc.retryable} for _ in requests]
        return [result_to_dict(r) for r in results]

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream one completion (``n`` = 1) as plain dicts: ``{"text": ...}`` deltas as
        tokens are decoded, then ``{"completion": ..., "prompt_tokens": n}``, or a last
        ``{"error": ..., "retryable": ...}``. Callers use
        ``handle.options(stream=True).stream.remote(request)``; cancelling that call
        cancels the decode."""
        try:
            req = GenerationRequest(**request)
            self.backend.check_request(req)
        except BackendError as exc:
            yield {"error": str(exc), "retryable": exc.retryable}
            return
        except ValueError as exc:
            yield invalid_request(exc)
            return
        async for item in stream_to_dicts(self.backend.stream(req)):
            yield item

    async def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The model's chat template applied to ``messages``."""
        return self.backend.render_chat_sync([ChatMessage(**m) for m in messages])

    async def info(self) -> dict[str, Any]:
        """Device, dtype and parameter count of this replica."""
        return self.backend.describe()


@serve.deployment(name="RouterIngress", max_ongoing_requests=256)
@serve.ingress()
class RouterIngress:
    """The OpenAI-compatible HTTP API; runs strategies and talks to Redis.

    Serve runs the app's lifespan: at start the outcome log replays its spool, at a graceful
    shutdown it writes what Redis takes; the rest stays in the spool for the next start.
    """

    def __init__(
        self,
        model: DeploymentHandle | dict[str, DeploymentHandle] | None,
        config: dict[str, Any],
        reward_model: DeploymentHandle | None = None,
    ) -> None:
        self.config = AppConfig(**config)
        self.runtime = build_runtime(self.config, model, reward_handle=reward_model)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply the live sections in ``user_config`` (Serve calls this at start and on every
        change to the deployment's ``user_config``); a section it leaves out is the one
        in the application's args (its default there). Never raises: a refused config is
        logged and shown on ``/readyz`` and the running one keeps serving (raising would
        make Serve replace this replica)."""
        self.runtime.reconfigure(user_config, "serve user_config")

    async def drain(self) -> int:
        """Refuse new requests (503) and wait for those inside, up to the longest request
        deadline; returns how many were still running then. ``acr serve`` calls it on
        SIGTERM before it deletes the application, so that the running requests finish
        while the model replicas they call are still up."""
        return int(await self.runtime.http_app.drain(drain_timeout_s(self.config)))

    def __serve_build_asgi_app__(self) -> Any:
        return self.runtime.http_app


def app_builder(args: dict[str, Any] | None = None) -> serve.Application:
    """Build the Serve application from ``args["config"]`` (the config inline), else
    ``args["config_path"]`` (or ``$ACR_CONFIG_PATH``), else the defaults.

    When no Redis URL is configured, an embedded redis-server is started in this process
    and lives as long as it does (``serve run`` keeps it alive).
    """
    args = args or {}
    if unknown := sorted(set(args) - {"config", "config_path"}):
        raise ConfigError(f"app_builder args: unknown {unknown}; valid: config, config_path")
    if "config" in args:
        if "config_path" in args:
            raise ConfigError("app_builder args: give config or config_path, not both")
        config = parse_config(args["config"] or {}, "the application's args")
    else:
        config = load_config(args.get("config_path") or os.environ.get(CONFIG_PATH_ENV) or None)
    if not config.redis.url:
        embedded = EmbeddedRedis(
            port=config.redis.embedded_port, maxmemory_mb=config.redis.embedded_maxmemory_mb
        ).start()
        _EMBEDDED.append(embedded)
        config.redis.url = embedded.url
        log.info("started embedded redis-server at %s", embedded.url)
    return bind_app(config)


_EMBEDDED: list[Any] = []


def bind_app(config: AppConfig) -> serve.Application:
    """Bind the deployments for ``config`` (Redis URL already resolved): ``ModelReplica``
    for a transformers model (one deployment per transformers backend of a pool, named
    ``ModelReplica-<name>``), the ingress in front."""
    handles: Any = None
    if config.backends:
        handles = {
            b.name: _replicas(b, f"ModelReplica-{b.name}", config)
            for b in config.backends
            if b.kind == "transformers"
        }
    elif config.model.kind == "transformers":
        handles = _replicas(config.model, "ModelReplica", config)
    local = any(b.kind == "transformers" for b in config.pool_backends())
    ingress: Any = RouterIngress
    return ingress.options(
        ray_actor_options={"num_cpus": 0.5 if local else 1.0},
        **_stop_options(drain_timeout_s(config) + FLUSH_GRACE_S),
    ).bind(handles, config.model_dump(mode="json"), _reward_app(config))


def drain_timeout_s(config: AppConfig) -> float:
    """How long a stopping replica waits for its running requests: the longest request
    deadline a client may ask for."""
    return config.server.max_request_timeout_ms / 1000


def _stop_options(timeout_s: float) -> dict[str, Any]:
    """How Serve stops and replaces a deployment's replicas: each waits up to
    ``timeout_s`` for its running requests, and a rollout starts each replacement first."""
    return {
        "graceful_shutdown_timeout_s": timeout_s,
        "graceful_shutdown_wait_loop_s": 0.5,
        "max_surge_percent": ROLLOUT_SURGE_PERCENT,
    }


def _replicas(m: ModelConfig, name: str, config: AppConfig) -> Any:
    """The ``ModelReplica`` deployment of the transformers model ``m``, bound."""
    opts: dict[str, Any] = {
        "name": name,
        "ray_actor_options": {"num_cpus": m.num_cpus, "num_gpus": m.num_gpus},
        **_stop_options(drain_timeout_s(config)),
    }
    if m.autoscaling.max_replicas > m.autoscaling.min_replicas:
        opts["autoscaling_config"] = m.autoscaling.model_dump()
    else:
        opts["num_replicas"] = max(1, m.autoscaling.min_replicas)
    replica: Any = ModelReplica
    model = ModelConfig(**m.model_dump(include=set(ModelConfig.model_fields)))
    return replica.options(**opts).bind(model.model_dump())


def _reward_app(config: AppConfig) -> Any:
    """``RewardModelReplica`` deployments for a local reward model, else None."""
    v = config.verifier
    if not v.reward_model_path:
        return None
    replica: Any = RewardModelReplica
    return replica.options(
        num_replicas=v.num_replicas,
        ray_actor_options={"num_cpus": v.num_cpus, "num_gpus": v.num_gpus},
    ).bind(v.reward_model_path, v.device)
