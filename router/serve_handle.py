"""A ``Backend`` over Ray Serve ``ModelReplica`` deployments, and the plain-dict wire format
of generation results across the process boundary."""

from __future__ import annotations

import dataclasses
from typing import Any

from ray.serve.handle import DeploymentHandle

from backends.base import (
    Backend,
    BackendError,
    ChatMessage,
    Completion,
    GenerationRequest,
    GenerationResult,
)


def result_to_dict(result: GenerationResult) -> dict[str, Any]:
    """A result as plain data (what a replica returns)."""
    return dataclasses.asdict(result)


def result_from_dict(data: dict[str, Any]) -> GenerationResult:
    """The inverse of ``result_to_dict``."""
    comps = [Completion(**c) for c in data["completions"]]
    return GenerationResult(
        completions=comps,
        prompt_tokens=data["prompt_tokens"],
        model=data.get("model", ""),
        timings_ms=data.get("timings_ms", {}),
    )


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
        return result_from_dict(data)

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
