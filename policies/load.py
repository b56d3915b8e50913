"""This replica's load and the backend's learned speed: requests in flight, tokens they still
owe, how fast the backend works, and how much slower than predicted requests run.

The adaptive policy begins an entry when it decides and ends it when the outcome is recorded
(or the request fails); ``snapshot`` is the ``Load`` the selector prices arms under. What it
learns, from what the backend really does:

- the speed of one call: latency ~ ``call_overhead_ms`` per call + ``ms_per_token`` per
  token generated one after the other (least squares over the last runs that ran with
  nothing else in flight: the probe, single passes, whole requests);
- throughput while busy (tokens finished per second of time with work in flight), which
  prices the queue ahead of a new request;
- the ratio of observed to predicted latency, overall and per strategy (what the model
  misses: batching waits, backtracking).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from policies.latency import Load

#: runs the call-speed fit remembers (older ones describe an older load)
_WINDOW = 64
#: tokens of the pseudo-run that anchors the fit at the initial guesses
_REF_TOKENS = 50.0
#: weight of that pseudo-run: it only settles what the runs cannot tell apart
_ANCHOR_WEIGHT = 0.05
#: the fastest decoding the fit may conclude (ms per token)
_MIN_MS_PER_TOKEN = 1e-3
#: busy seconds between throughput re-measurements
_BUSY_WINDOW_S = 2.0


@dataclass
class _Inflight:
    tokens: float
    expires_at: float
    started_at: float
    concurrency: int
    predicted_ms: float = 0.0
    slowdown: float = 1.0
    strategy: str = ""


class CallSpeed:
    """latency_ms ~ a * calls + b * serial_tokens, fitted on the last ``WINDOW`` runs.

    Non-negative least squares on relative error (a 100 ms call and a 30 s search weigh
    alike), anchored by one pseudo-run at the initial guesses so that a few runs that barely
    tell the two terms apart cannot send either to an absurd value. (A recursive fit with
    forgetting did exactly that on the bundled model: one-call runs alone leave the split
    between the terms unidentified, and its covariance grew until one beam search moved the
    per-call term to 150 s.)
    """

    def __init__(self, overhead_ms: float, ms_per_token: float) -> None:
        self.prior = (max(0.0, overhead_ms), max(_MIN_MS_PER_TOKEN, ms_per_token))
        self.theta = list(self.prior)
        self.runs: deque[tuple[float, float, float]] = deque(maxlen=_WINDOW)
        self.observations = 0

    def observe(self, calls: float, tokens: float, wall_ms: float) -> None:
        """One observed run of ``calls`` sequential calls generating ``tokens`` serially."""
        if wall_ms <= 0 or calls <= 0:
            return
        self.runs.append((float(calls), max(0.0, float(tokens)), float(wall_ms)))
        self.observations += 1
        self.theta = list(self._fit())

    def _fit(self) -> tuple[float, float]:
        a0, b0 = self.prior
        rows = [(1.0, _REF_TOKENS, a0 + b0 * _REF_TOKENS), *self.runs]
        weights = _weights(rows)
        scc = sct = stt = scy = sty = 0.0
        for k, (c, t, y) in zip(weights, rows, strict=True):
            scc += k * c * c
            sct += k * c * t
            stt += k * t * t
            scy += k * c * y
            sty += k * t * y
        det = scc * stt - sct * sct
        if det > 1e-12 * scc * stt:
            a = (scy * stt - sct * sty) / det
            b = (scc * sty - sct * scy) / det
            if a >= 0 and b >= _MIN_MS_PER_TOKEN:
                return a, b
        # A bound is active: the better of the two fits with one term at its bound.
        on_a = (0.0, max(_MIN_MS_PER_TOKEN, sty / stt if stt > 0 else b0))
        on_b = (max(0.0, (scy - _MIN_MS_PER_TOKEN * sct) / scc), _MIN_MS_PER_TOKEN)
        return min((on_a, on_b), key=lambda ab: _loss(rows, weights, *ab))


def _weights(rows: list[tuple[float, float, float]]) -> list[float]:
    """Relative-error weights; the anchor (first row) is measured against the typical run,
    so a guess far off the truth weighs little once runs arrive."""
    ys = sorted(y for _, _, y in rows[1:]) or [rows[0][2]]
    typical = max(ys[len(ys) // 2], 1.0)
    return [_ANCHOR_WEIGHT / typical**2] + [1.0 / max(y, 1.0) ** 2 for _, _, y in rows[1:]]


def _loss(
    rows: list[tuple[float, float, float]], weights: list[float], a: float, b: float
) -> float:
    """Weighted squared error of ``a * calls + b * tokens`` over ``rows``."""
    return sum(k * (a * c + b * t - y) ** 2 for k, (c, t, y) in zip(weights, rows, strict=True))


class LoadTracker:
    """This replica's load and the backend's speed, learned live (see the module docstring).

    ``begin`` at decision time, ``end`` when the outcome is recorded; entries whose deadline
    passed are dropped (a request that failed without an outcome must not count forever).
    """

    def __init__(
        self,
        capacity_tokens_per_s: float,
        clock: Callable[[], float],
        call_overhead_ms: float = 0.0,
    ) -> None:
        self.capacity = capacity_tokens_per_s
        self.clock = clock
        self.jobs: dict[str, _Inflight] = {}
        self.speed = CallSpeed(call_overhead_ms, 1000.0 / max(1.0, capacity_tokens_per_s))
        self._last = clock()
        self._busy_time = 0.0
        self._busy_tokens = 0.0
        self.slowdown = 1.0
        # Per strategy: one that makes several sequential calls (bounded reasoning's
        # backtracking, beam steps) can run slower than predicted while others do not.
        self.slowdown_by: dict[str, float] = {}

    def _advance(self, now: float) -> None:
        for k in [k for k, j in self.jobs.items() if j.expires_at <= now]:
            del self.jobs[k]
        dt = now - self._last
        if dt > 0 and self.jobs:
            self._busy_time += dt
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
            tokens,
            t + deadline_s,
            t,
            len(self.jobs) + 1,
            predicted_ms,
            self.slowdown_by.get(strategy, self.slowdown),
            strategy,
        )

    def end(self, key: str, tokens: float | None, now: float | None = None) -> float | None:
        """The request finished after generating ``tokens``; learn from it. Returns its
        observed latency in ms (None for an unknown or expired entry)."""
        t = self.clock() if now is None else now
        self._advance(t)
        job = self.jobs.pop(key, None)
        if job is None:
            return None
        observed_ms = (t - job.started_at) * 1000
        if job.predicted_ms >= 20.0:
            # The prediction included the factor in use then: learn the raw ratio.
            raw = job.predicted_ms / job.slowdown
            ratio = min(20.0, max(0.2, observed_ms / raw))
            self.slowdown = _ewma_ratio(self.slowdown, ratio)
            # A strategy priced out of use is never observed again: let its own factor drift
            # back to the common one as other requests finish, so it is not shut out for good.
            for name, factor in self.slowdown_by.items():
                self.slowdown_by[name] = factor + 0.01 * (self.slowdown - factor)
            if job.strategy:
                mine = self.slowdown_by.get(job.strategy, self.slowdown)
                self.slowdown_by[job.strategy] = _ewma_ratio(mine, ratio)
        if tokens and tokens > 0:
            self._busy_tokens += tokens
            if self._busy_time >= _BUSY_WINDOW_S:
                observed = self._busy_tokens / self._busy_time
                self.capacity = 0.7 * self.capacity + 0.3 * observed
                self._busy_time = self._busy_tokens = 0.0
        return observed_ms

    def observe_call(self, wall_ms: float, tokens: float, calls: float = 1.0) -> None:
        """``calls`` sequential backend calls generated ``tokens`` one after the other in
        ``wall_ms`` (the probe, a single pass, a whole request): learn the call speed from
        it when it ran alone (with others in flight its time includes their work)."""
        if wall_ms <= 0 or len(self.jobs) > 1:
            return
        self.speed.observe(calls, tokens, wall_ms)

    def snapshot(self, now: float | None = None, elapsed_ms: float = 0.0) -> Load:
        """The load a new request would meet now."""
        t = self.clock() if now is None else now
        self._advance(t)
        return Load(
            inflight=len(self.jobs),
            queued_tokens=sum(j.tokens for j in self.jobs.values()),
            capacity_tokens_per_s=max(1.0, self.capacity),
            elapsed_ms=elapsed_ms,
            slowdown=self.slowdown,
            slowdown_by_strategy=dict(self.slowdown_by),
            call_overhead_ms=self.speed.theta[0],
            ms_per_token=self.speed.theta[1],
        )


def _ewma_ratio(current: float, ratio: float) -> float:
    """Observed/predicted latency folded into a running factor: rise fast (SLOs are at
    stake), decay more slowly."""
    rate = 0.2 if ratio > current else 0.1
    return min(20.0, max(0.2, (1 - rate) * current + rate * ratio))
