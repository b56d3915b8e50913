"""Ray Serve deployments and the application builder.

``app_builder({"config_path": ...})`` is the import path the CLI, ``serve run`` and the Helm
chart's ``serveConfigV2`` use (``router.app:app_builder``). It binds:

- ``ModelReplica``: the transformers model, one per replica (``num_cpus``/``num_gpus`` from
  config), batching concurrent requests continuously (rows join and leave between decode
  steps, ``model.batching: continuous``) or with ``@serve.batch`` (``static``);
- ``RouterIngress``: the FastAPI ingress running the router's strategies, which call the
  model replicas through a ``DeploymentHandle`` wrapped as a ``Backend``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from backends.base import (
    Backend,
    BackendError,
    ChatMessage,
    Completion,
    GenerationRequest,
    GenerationResult,
)
from router.config import AppConfig, ModelConfig, load_config

log = logging.getLogger("acr.app")

CONFIG_PATH_ENV = "ACR_CONFIG_PATH"


def _result_to_dict(result: GenerationResult) -> dict[str, Any]:
    return dataclasses.asdict(result)


def _result_from_dict(data: dict[str, Any]) -> GenerationResult:
    comps = [Completion(**c) for c in data["completions"]]
    return GenerationResult(
        completions=comps,
        prompt_tokens=data["prompt_tokens"],
        model=data.get("model", ""),
        timings_ms=data.get("timings_ms", {}),
    )


def _rows(batch: list[dict[str, Any]]) -> int:
    # A request for n samples costs n rows of the batch, not one.
    return sum(int(r.get("n", 1)) for r in batch)


@serve.deployment(name="ModelReplica", max_ongoing_requests=64)
class ModelReplica:
    """A transformers model behind Ray Serve; requests arrive as plain dicts.

    Errors come back as ``{"error": ..., "retryable": ...}`` values, not exceptions, so the
    caller keeps the retryable flag across the process boundary.
    """

    def __init__(self, model_config: dict[str, Any]) -> None:
        from backends.transformers_backend import TransformersBackend

        cfg = ModelConfig(**model_config)
        path = cfg.path or _bundled_path()
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
            return {"error": f"invalid generation request: {exc}", "retryable": False}
        if self.backend.batching == "continuous":
            try:
                return _result_to_dict(await self.backend.generate(req))
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
        return [_result_to_dict(r) for r in results]

    async def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The model's chat template applied to ``messages``."""
        return self.backend.render_chat_sync([ChatMessage(**m) for m in messages])

    async def info(self) -> dict[str, Any]:
        """Device, dtype and parameter count of this replica."""
        return self.backend.describe()


def _bundled_path() -> str:
    from backends.bundled.paths import bundled_model_path

    return str(bundled_model_path())


class ServeHandleBackend(Backend):
    """A ``Backend`` that forwards to ``ModelReplica`` deployments through a handle.

    A replica that died mid-request surfaces as a retryable ``BackendError``; Ray routes the
    retry to a live replica.
    """

    def __init__(self, handle: DeploymentHandle, name: str) -> None:
        self.handle = handle
        self.name = name
        self._template_cache: dict[str, str] = {}

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Call the replica; raises ``BackendError`` on replica errors or death."""
        try:
            data = await self.handle.generate.remote(request.model_dump())
        except Exception as exc:  # noqa: BLE001 - Ray raises many types for a dead replica
            raise BackendError(f"model replica failed: {exc.__class__.__name__}: {exc}") from exc
        if "error" in data:
            raise BackendError(str(data["error"]), retryable=bool(data.get("retryable")))
        return _result_from_dict(data)

    async def render_chat(self, messages: list[ChatMessage]) -> str:
        """Rendered by a replica once per distinct conversation, then cached."""
        key = "\x00".join(f"{m.role}\x01{m.content}" for m in messages)
        if key not in self._template_cache:
            try:
                text = await self.handle.render_chat.remote([m.model_dump() for m in messages])
            except Exception as exc:  # noqa: BLE001
                raise BackendError(f"model replica failed: {exc}") from exc
            if len(self._template_cache) > 4096:
                self._template_cache.clear()
            self._template_cache[key] = str(text)
        return self._template_cache[key]


@serve.deployment(name="RouterIngress", max_ongoing_requests=256)
@serve.ingress()
class RouterIngress:
    """The OpenAI-compatible HTTP API; runs strategies and talks to Redis."""

    def __init__(self, model: DeploymentHandle | None, config: dict[str, Any]) -> None:
        from router.runtime import build_runtime

        self.config = AppConfig(**config)
        self.runtime = build_runtime(self.config, model)

    def __serve_build_asgi_app__(self) -> Any:
        return self.runtime.http_app


def app_builder(args: dict[str, Any] | None = None) -> serve.Application:
    """Build the Serve application from ``args["config_path"]`` (or ``$ACR_CONFIG_PATH``).

    When no Redis URL is configured, an embedded redis-server is started in this process
    and lives as long as it does (``acr serve`` and ``serve run`` keep it alive).
    """
    args = args or {}
    path = args.get("config_path") or os.environ.get(CONFIG_PATH_ENV) or None
    config = load_config(path)
    if not config.redis.url:
        from router.embedded_redis import EmbeddedRedis

        embedded = EmbeddedRedis(port=config.redis.embedded_port).start()
        _EMBEDDED.append(embedded)
        config.redis.url = embedded.url
        log.info("started embedded redis-server at %s", embedded.url)
    return bind_app(config)


_EMBEDDED: list[Any] = []


def bind_app(config: AppConfig) -> serve.Application:
    """Bind the deployments for ``config`` (Redis URL already resolved)."""
    m = config.model
    model_app = None
    if m.kind == "transformers":
        opts: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": m.num_cpus, "num_gpus": m.num_gpus}
        }
        if m.autoscaling.max_replicas > m.autoscaling.min_replicas:
            opts["autoscaling_config"] = m.autoscaling.model_dump()
        else:
            opts["num_replicas"] = max(1, m.autoscaling.min_replicas)
        replica: Any = ModelReplica
        model_app = replica.options(**opts).bind(m.model_dump())
    ingress_cpus = 0.5 if m.kind == "transformers" else 1.0
    ingress: Any = RouterIngress
    return ingress.options(ray_actor_options={"num_cpus": ingress_cpus}).bind(
        model_app, config.model_dump(mode="json")
    )
