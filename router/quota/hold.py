"""``Quota.hold``: the one async context manager that reserves a request's tokens against its
key's limits before it runs and settles them however it ends.

Inside it the service says what the request would be charged if it ended now
(``Hold.charge``: None means everything it holds, for calls cut off that report no count)
and grows the hold once the request is decided (``Hold.grow``). On leaving, the hold is
settled once, with the outcome the way out says: ``ok``, ``timeout`` (``DeadlineExceeded``),
``refused`` (``RateLimited``), ``abandoned`` (the client went away: cancelled, or the
response stream closed) or ``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from router.errors import DeadlineExceeded, RateLimited
from router.metrics import Metrics
from router.quota.limiter import LimitVerdict, RateLimiter, Reservation


def outcome_of(exc: BaseException | None) -> str:
    """How a request that raised ``exc`` (None: none) ended, for the settlement metric."""
    if exc is None:
        return "ok"
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "abandoned"
    if isinstance(exc, DeadlineExceeded):
        return "timeout"
    if isinstance(exc, RateLimited):
        return "refused"
    return "error"


class Hold:
    """What one request holds (``tokens``) and would be charged now (``charge``)."""

    def __init__(self, quota: Quota, reservation: Reservation | None) -> None:
        self.quota = quota
        self.reservation = reservation
        self.charge: int | None = 0
        #: the settlement's label when the request ends without an exception
        self.outcome = "ok"

    @property
    def tokens(self) -> int:
        """Tokens held now (0 when no limit applies)."""
        return self.reservation.tokens if self.reservation is not None else 0

    async def grow(self, tokens: int) -> None:
        """Hold ``tokens`` in all (what the decided request may spend); ``RateLimited`` when
        that does not fit beside the key's other requests."""
        limiter = self.quota.limiter
        if self.reservation is None or limiter is None:
            return
        self.quota.allow(await limiter.resize(self.reservation, tokens))


class Quota:
    """Per-key limits through ``limiter`` (None: no limits)."""

    def __init__(self, limiter: RateLimiter | None, metrics: Metrics) -> None:
        self.limiter = limiter
        self.metrics = metrics

    def allow(self, verdict: LimitVerdict) -> None:
        """Raise ``RateLimited`` unless ``verdict`` allows the request."""
        if verdict.allowed:
            return
        self.metrics.rate_limited.labels(limit=verdict.limit).inc()
        raise RateLimited(verdict.limit, verdict.retry_after_s)

    @contextlib.asynccontextmanager
    async def hold(self, tenant: str, tokens: int) -> AsyncIterator[Hold]:
        """Count one request of ``tenant`` and hold ``tokens`` for it (``RateLimited`` when
        that does not fit); settle the hold however the block ends."""
        reservation = None
        if self.limiter is not None:
            verdict = await self.limiter.reserve(tenant, tokens)
            self.allow(verdict)
            reservation = verdict.reservation
        hold = Hold(self, reservation)
        try:
            yield hold
        except BaseException as exc:
            await self._settle(hold, outcome_of(exc))
            raise
        await self._settle(hold, hold.outcome)

    async def _settle(self, hold: Hold, outcome: str) -> None:
        if hold.reservation is not None and self.limiter is not None:
            await self.limiter.settle(hold.reservation, hold.charge, outcome)
