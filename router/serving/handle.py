"""A ``Backend`` over Ray Serve ``ModelReplica`` deployments, and the plain-dict wire format
of generation results and streamed deltas across the process boundary."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

from pydantic import ValidationError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from backends.base import (
    Backend,
    BackendError,
    ChatMessage,
    Completion,
    GenerationRequest,
    GenerationResult,
    StreamDelta,
)

log = logging.getLogger("acr.serve_handle")


def invalid_request(exc: ValueError) -> dict[str, Any]:
    """A replica's answer to a request it cannot validate: which fields and why, without the
    values or the validator's links (the text may reach API clients)."""
    if isinstance(exc, ValidationError):
        what = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors()
        )
    else:
        what = str(exc)
    return {"error": f"invalid generation request: {what}", "retryable": False}


def replica_failure(exc: BaseException, what: str = "model replica failed") -> BackendError:
    """A retryable ``BackendError`` for a replica that died or raised: Ray's exception text
    (tracebacks, node addresses, file paths) is logged here and never passed on."""
    log.warning("%s: %s: %s", what, type(exc).__name__, exc)
    return BackendError(f"{what} ({type(exc).__name__})")


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


async def stream_to_dicts(deltas: AsyncIterator[StreamDelta]) -> AsyncIterator[dict[str, Any]]:
    """The replica side of streaming: ``deltas`` as plain dicts, ``{"text": ...}`` pieces
    then ``{"completion": ..., "prompt_tokens": n}``; a ``BackendError`` becomes a last
    ``{"error": ..., "retryable": ...}`` so the flag survives the process boundary.

    ``deltas`` is closed when this generator is (the consumer went away), which cancels a
    request still decoding.
    """
    try:
        async for delta in deltas:
            if delta.text:
                yield {"text": delta.text}
            if delta.completion is not None:
                yield {
                    "completion": dataclasses.asdict(delta.completion),
                    "prompt_tokens": delta.prompt_tokens,
                }
    except BackendError as exc:
        yield {"error": str(exc), "retryable": exc.retryable}
    finally:
        aclose = getattr(deltas, "aclose", None)
        if aclose is not None:
            await aclose()


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
            raise replica_failure(exc) from exc
        if "error" in data:
            raise BackendError(str(data["error"]), retryable=bool(data.get("retryable")))
        return result_from_dict(data)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """Stream one completion from a replica's ``stream`` method (``stream_to_dicts`` on
        the other side): text deltas, then the completion. Raises ``BackendError`` for a
        replica's error (with its retryable flag) or death. Closing this generator before
        the end cancels the replica's request."""
        try:
            handle = self.handle.options(stream=True)
            gen = cast(DeploymentResponseGenerator, handle.stream.remote(request.model_dump()))
        except Exception as exc:  # noqa: BLE001 - Ray raises many types for a dead replica
            raise replica_failure(exc) from exc
        ended = False
        try:
            async for item in gen:
                if "error" in item:
                    ended = True
                    raise BackendError(str(item["error"]), retryable=bool(item.get("retryable")))
                if "completion" in item:
                    ended = True
                    comp = Completion(**item["completion"])
                    yield StreamDelta(completion=comp, prompt_tokens=int(item["prompt_tokens"]))
                    return
                yield StreamDelta(text=str(item.get("text", "")))
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - Ray raises many types for a dead replica
            ended = True
            raise replica_failure(exc) from exc
        finally:
            if not ended:
                # The consumer left early (or was cancelled): stop the replica's decode.
                # This does not wait: after an item the call is assigned to a replica, and
                # a task cancelled before that cancelled its wait for the assignment too.
                gen.cancel()
        raise BackendError("model replica's stream ended without a completion")

    async def render_chat(self, messages: list[ChatMessage]) -> str:
        """Rendered by a replica once per distinct conversation, then cached."""
        key = "\x00".join(f"{m.role}\x01{m.text}" for m in messages)
        if key not in self._template_cache:
            try:
                text = await self.handle.render_chat.remote([m.model_dump() for m in messages])
            except Exception as exc:  # noqa: BLE001 - Ray raises many types for a dead replica
                raise replica_failure(exc) from exc
            if len(self._template_cache) > 4096:
                self._template_cache.clear()
            self._template_cache[key] = str(text)
        return self._template_cache[key]
