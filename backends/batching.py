"""Micro-batching for in-process backends: concurrent ``generate`` calls share decode loops.

Ray Serve's ``@serve.batch`` does this for the service; benchmarks and labelling run the
model in-process, where many strategies run concurrently and each issues small requests
(a beam state's proposals, a self-consistency batch). ``MicroBatcher`` queues them and
hands the model one batch at a time.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from backends.base import Backend, ChatMessage, GenerationRequest, GenerationResult


class BatchModel(Protocol):
    """What ``MicroBatcher`` wraps: a backend with a synchronous batch call."""

    name: str

    def generate_batch_sync(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in order."""
        ...

    def render_chat_sync(self, messages: list[ChatMessage]) -> str:
        """The chat template applied."""
        ...


class MicroBatcher(Backend):
    """Collects requests for up to ``wait_s`` or ``max_rows`` sampled rows, then runs them."""

    def __init__(self, model: BatchModel, *, max_rows: int = 256, wait_s: float = 0.002) -> None:
        self.model = model
        self.name = model.name
        self.max_rows = max_rows
        self.wait_s = wait_s
        self._queue: asyncio.Queue[tuple[GenerationRequest, asyncio.Future[Any]]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def render_chat(self, messages: list[ChatMessage]) -> str:
        """Delegates to the model's template."""
        return self.model.render_chat_sync(messages)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Queue the request and wait for its batch (bad requests fail alone, before it)."""
        check = getattr(self.model, "check_request", None)
        if check is not None:
            check(request)
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._worker())
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((request, fut))
        result: GenerationResult = await fut
        return result

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            first = await self._queue.get()
            batch = [first]
            rows = first[0].n
            await asyncio.sleep(self.wait_s)
            while not self._queue.empty() and rows < self.max_rows:
                item = self._queue.get_nowait()
                batch.append(item)
                rows += item[0].n
            live = [(r, f) for r, f in batch if not f.cancelled()]
            if not live:
                continue
            try:
                results = await asyncio.to_thread(
                    self.model.generate_batch_sync, [r for r, _ in live]
                )
            except Exception as exc:  # noqa: BLE001 - hand every waiter the failure
                for _, f in live:
                    if not f.done():
                        f.set_exception(exc)
                continue
            for (_, f), res in zip(live, results, strict=True):
                if not f.done():
                    f.set_result(res)

    async def close(self) -> None:
        """Stop the worker task."""
        if self._task is not None:
            self._task.cancel()
