"""The outcome stream: every served request's decision and result, appended to Redis.

Appends never raise and never block a response for long: when Redis is unreachable the
outcome waits in a bounded in-memory queue and a background task writes the queue out, in
order, once Redis answers again (reconnecting with exponential backoff). A full queue drops
its oldest entry, counts it in ``acr_outcomes_dropped_total`` and logs it: loss is never
silent.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from router.metrics import Metrics

log = logging.getLogger("acr.outcomes")


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    """Stream field values must be flat strings; nested values are stored as JSON."""
    out: dict[str, str] = {}
    for k, v in fields.items():
        if v is None:
            out[k] = ""
        elif isinstance(v, str):
            out[k] = v
        elif isinstance(v, bool | int | float):
            out[k] = json.dumps(v)
        else:
            out[k] = json.dumps(v, separators=(",", ":"), default=str)
    return out


class OutcomeLog:
    """Appends outcome records to the stream ``stream`` with an approximate ``maxlen``."""

    def __init__(
        self,
        client: Redis,
        *,
        stream: str,
        maxlen: int,
        buffer_max: int,
        metrics: Metrics,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.client = client
        self.stream = stream
        self.maxlen = maxlen
        self.buffer: collections.deque[dict[str, str]] = collections.deque()
        self.buffer_max = buffer_max
        self.metrics = metrics
        self.backoff_max_s = backoff_max_s
        self.dropped = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        """Start the background flusher (call from a running event loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def stop(self, flush_timeout_s: float = 2.0) -> None:
        """Try to write what is buffered, then stop the flusher."""
        try:
            await asyncio.wait_for(self.flush(), timeout=flush_timeout_s)
        except (TimeoutError, RedisError, OSError):
            log.warning("stopping with %d outcomes unwritten", len(self.buffer))
        if self._task is not None:
            self._task.cancel()

    async def ping(self) -> bool:
        """Whether Redis answers now (the readiness check)."""
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def append(self, fields: dict[str, Any]) -> bool:
        """Record one outcome; returns True if it reached Redis now, False if buffered."""
        self.start()
        self._enqueue(_encode(fields))
        try:
            await self.flush()
            return True
        except (RedisError, OSError) as exc:
            self.metrics.redis_up.set(0)
            log.warning("redis unavailable (%s); %d outcomes buffered", exc, len(self.buffer))
            self._wake.set()
            return False

    def _enqueue(self, entry: dict[str, str]) -> None:
        if len(self.buffer) >= self.buffer_max:
            lost = self.buffer.popleft()
            self.dropped += 1
            self.metrics.outcomes_dropped.inc()
            log.error(
                "outcome buffer full (%d); dropped outcome id=%s", self.buffer_max, lost.get("id")
            )
        self.buffer.append(entry)
        self.metrics.outcomes_buffered.set(len(self.buffer))

    async def flush(self) -> int:
        """Write buffered outcomes in order; returns how many were written.

        Raises the Redis error if Redis is unreachable (the entries stay buffered).
        """
        written = 0
        async with self._lock:
            while self.buffer:
                entry = self.buffer[0]
                await self.client.xadd(
                    self.stream,
                    entry,  # type: ignore[arg-type]
                    maxlen=self.maxlen,
                    approximate=True,
                )
                self.buffer.popleft()
                written += 1
                self.metrics.outcomes_written.inc()
                self.metrics.outcomes_buffered.set(len(self.buffer))
        self.metrics.redis_up.set(1)
        return written

    async def _flush_loop(self) -> None:
        delay = 0.05
        while True:
            if not self.buffer:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                except TimeoutError:
                    continue
            try:
                n = await self.flush()
                if n:
                    log.info("wrote %d buffered outcomes to redis", n)
                delay = 0.05
            except (RedisError, OSError):
                self.metrics.redis_up.set(0)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
