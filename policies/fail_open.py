"""Fail-open for state kept in Redis: Redis first, this process's own state while it fails.

Shared online statistics, the decision cache, feedback claims (``policies.store``) and
per-key limits (``router.quota.limiter``) all live in Redis so that every replica sees the
same numbers, and none of them may stop a request when Redis is down. ``FailOpen.call``
runs the Redis operation and, when it fails, the local one instead; after a failure Redis is
left alone for ``retry_s`` seconds (no request waits for a dead server's timeout), then
tried again. The first failure of an outage is logged; ``on_failure`` (a metric, say) hears
of every operation that ran locally while Redis was meant to be used.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger("acr.redis")


class FailOpen:
    """Redis, unless it failed less than ``retry_s`` seconds ago (by ``clock``); ``what``
    names the state in the log ("policy store", "rate limits")."""

    def __init__(
        self,
        what: str,
        retry_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.what = what
        self.retry_s = retry_s
        self.clock = clock
        self.on_failure = on_failure
        self._down_until = float("-inf")

    @property
    def up(self) -> bool:
        """Whether Redis is to be tried now."""
        return self.clock() >= self._down_until

    def failed(self, operation: str, exc: BaseException) -> None:
        """Redis failed on ``operation``: use local state for ``retry_s`` seconds."""
        if self.up:
            log.warning("%s: Redis failed on %s (%s); using local state", self.what, operation, exc)
        self._down_until = self.clock() + self.retry_s

    async def call(
        self,
        operation: str,
        remote: Callable[[], Awaitable[T]],
        local: Callable[[], Awaitable[T] | T],
    ) -> T:
        """``remote()`` while Redis is up and answers; else ``local()``."""
        if self.up:
            try:
                return await remote()
            except Exception as exc:  # noqa: BLE001 - Redis, socket and OS errors alike
                raise_if_cancelled()
                self.failed(operation, exc)
        if self.on_failure is not None:
            self.on_failure(operation)
        got = local()
        if inspect.isawaitable(got):
            return await got
        return got


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` when the current task was asked to stop
    (``Task.cancelling``): a cancellation that a client library turned into an error of
    its own must still end the task (else a loop that catches such errors outlives its
    event loop's shutdown)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
