"""This replica's load: requests in flight, tokens they still owe, live throughput and how
much slower than predicted requests run. The adaptive policy begins an entry when it decides
and ends it when the outcome is recorded (or the request fails); ``snapshot`` is the
``Load`` the selector prices arms under.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

from policies.latency import Load


@dataclass
class _Inflight:
    tokens: float
    expires_at: float
    started_at: float
    concurrency: int
    predicted_ms: float = 0.0
    strategy: str = ""


class LoadTracker:
    """This replica's load: requests in flight, tokens they still owe, live throughput.

    ``begin`` at decision time, ``end`` when the outcome is recorded; entries whose deadline
    passed are dropped (a request that failed without an outcome must not count forever).
    Capacity (aggregate tokens/s of a busy backend) starts from the measured value and is
    re-measured only while the backend is saturated (``saturated_at`` requests in flight):
    tokens finished per second of saturated time. A lone greedy decode is slow because it is
    one row wide, not because the backend is busy, so unsaturated periods teach nothing.
    Utilisation is the predicted tokens admitted over the last ``window_s`` per second over
    that capacity.
    """

    def __init__(
        self,
        capacity_tokens_per_s: float,
        clock: Callable[[], float],
        window_s: float = 10.0,
        saturated_at: int = 8,
    ) -> None:
        self.capacity = capacity_tokens_per_s
        self.clock = clock
        self.jobs: dict[str, _Inflight] = {}
        self.window_s = window_s
        self.saturated_at = saturated_at
        # (time, predicted tokens) of recent admissions: the offered load.
        self.recent: collections.deque[tuple[float, float]] = collections.deque()
        self._last = clock()
        self._sat_time = 0.0
        self._sat_tokens = 0.0
        self.slowdown = 1.0
        # Per strategy: one that makes several sequential calls (bounded reasoning's
        # backtracking, beam steps) can run slower than predicted while others do not.
        self.slowdown_by: dict[str, float] = {}
        self.call_ms = 0.0
        self._call_mean = 0.0
        self._call_dev = 0.0

    def _advance(self, now: float) -> None:
        for k in [k for k, j in self.jobs.items() if j.expires_at <= now]:
            del self.jobs[k]
        dt = now - self._last
        if dt > 0 and len(self.jobs) >= self.saturated_at:
            self._sat_time += dt
        self._last = max(self._last, now)

    def begin(
        self,
        key: str,
        tokens: float,
        deadline_s: float,
        now: float | None = None,
        predicted_ms: float = 0.0,
        strategy: str = "",
    ) -> None:
        """Count a request as in flight with ``tokens`` predicted to generate and
        ``predicted_ms`` predicted latency (from the start of its decision) for ``strategy``."""
        t = self.clock() if now is None else now
        self._advance(t)
        self.jobs[key] = _Inflight(
            tokens, t + deadline_s, t, len(self.jobs) + 1, predicted_ms, strategy
        )
        self.recent.append((t, tokens))

    def end(self, key: str, tokens: float | None, now: float | None = None) -> None:
        """The request finished after generating ``tokens``; re-measure capacity if saturated."""
        t = self.clock() if now is None else now
        self._advance(t)
        job = self.jobs.pop(key, None)
        if job is None:
            return
        if job.predicted_ms >= 20.0:
            ratio = min(20.0, max(0.5, (t - job.started_at) * 1000 / job.predicted_ms))
            self.slowdown = _ewma_ratio(self.slowdown, ratio)
            # A strategy priced out of use is never observed again: let its own factor drift
            # back to the common one as other requests finish, so it is not shut out for good.
            for name, factor in self.slowdown_by.items():
                self.slowdown_by[name] = factor + 0.01 * (self.slowdown - factor)
            if job.strategy:
                mine = self.slowdown_by.get(job.strategy, self.slowdown)
                self.slowdown_by[job.strategy] = _ewma_ratio(mine, ratio)
        if not tokens or tokens <= 0:
            return
        if len(self.jobs) + 1 >= self.saturated_at:
            self._sat_tokens += tokens
        if self._sat_time >= 5.0:
            observed = self._sat_tokens / self._sat_time
            self.capacity = 0.8 * self.capacity + 0.2 * observed
            self._sat_time = self._sat_tokens = 0.0

    def observe_call(self, wall_ms: float) -> None:
        """One backend call took ``wall_ms`` (the probe, a single pass, a sampling batch).

        Keeps an EWMA of the mean and of the absolute deviation; ``call_ms`` is mean + 2
        deviations, a high quantile: on a batching server a call may land just after a
        decode cycle started and wait for all of it.
        """
        if wall_ms <= 0:
            return
        # Up fast (a queue is forming), down slower (do not trust a single quick call).
        rate = 0.3 if wall_ms > self._call_mean else 0.1
        self._call_dev = (1 - rate) * self._call_dev + rate * abs(wall_ms - self._call_mean)
        self._call_mean = (1 - rate) * self._call_mean + rate * wall_ms
        self.call_ms = self._call_mean + 2 * self._call_dev

    def snapshot(self, now: float | None = None, elapsed_ms: float = 0.0) -> Load:
        """The load a new request would meet now."""
        t = self.clock() if now is None else now
        self._advance(t)
        while self.recent and self.recent[0][0] < t - self.window_s:
            self.recent.popleft()
        # Early in a run the window is short; never divide by less than one second.
        span = max(1.0, min(self.window_s, t - self.recent[0][0])) if self.recent else 1.0
        offered = sum(tok for _, tok in self.recent) / span
        capacity = max(1.0, self.capacity)
        return Load(
            inflight=len(self.jobs),
            queued_tokens=sum(j.tokens for j in self.jobs.values()),
            capacity_tokens_per_s=capacity,
            elapsed_ms=elapsed_ms,
            utilization=offered / capacity,
            slowdown=self.slowdown,
            slowdown_by_strategy=dict(self.slowdown_by),
            call_ms=self.call_ms,
        )


def _ewma_ratio(current: float, ratio: float) -> float:
    """Observed/predicted latency folded into a running factor: rise fast (SLOs are at
    stake), decay slowly."""
    rate = 0.2 if ratio > current else 0.05
    return min(20.0, max(0.5, (1 - rate) * current + rate * ratio))
