"""A circuit breaker for a remote model server.

It stops a router replica from hammering a server that keeps failing (and from making every
client wait for a connect timeout): after ``threshold`` consecutive failures the breaker
*opens* and refuses calls for ``cooldown_s`` seconds, telling the caller how long is left.
When the cooldown is over it is *half-open*: exactly one call (the probe) goes through while
the others are still refused; the probe's success closes the breaker at once, its failure
opens it for another full cooldown.

Usage (``OpenAIHTTPBackend`` does this around every request)::

    probe = breaker.check()        # raises BackendError(retryable, retry_after_s) when open
    try:
        ...                        # the call; then breaker.record(ok) for each outcome
    finally:
        breaker.release(probe)     # frees the half-open probe slot if no verdict came back
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

from backends.base import BackendError

BreakerState = Literal["closed", "open", "half_open"]

#: what a refused caller is told while the half-open probe is still out: its verdict is due
#: within one call, so "soon" rather than another full cooldown
PROBE_RETRY_AFTER_S = 1


class CircuitBreaker:
    """Consecutive-failure circuit breaker with a single half-open probe.

    ``clock`` returns seconds (``time.monotonic`` by default; tests inject a fake one).
    ``failures`` is the current run of consecutive failures; ``opened_at`` the clock time the
    breaker last opened (None while closed).
    """

    def __init__(
        self,
        threshold: int = 5,
        cooldown_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or cooldown_s < 0:
            raise ValueError("CircuitBreaker needs threshold >= 1 and cooldown_s >= 0")
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._probe_out = False

    @property
    def state(self) -> BreakerState:
        """``closed`` (calls flow), ``open`` (cooling down) or ``half_open`` (may probe)."""
        if self.opened_at is None:
            return "closed"
        return "open" if self.remaining_s() > 0 else "half_open"

    def remaining_s(self) -> float:
        """Seconds of cooldown left (0.0 when closed or when the cooldown is over)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.cooldown_s - self.clock())

    def retry_after_s(self) -> int | None:
        """What a refused caller should wait, in whole seconds rounded up; None when a call
        would be let through now."""
        if self.opened_at is None:
            return None
        remaining = self.remaining_s()
        if remaining > 0:
            return max(1, math.ceil(remaining))
        return PROBE_RETRY_AFTER_S if self._probe_out else None

    def allow(self) -> bool:
        """Whether a call may go out now; in the half-open state this claims the one probe
        slot, so call it only right before sending (and ``release`` afterwards)."""
        if self.opened_at is None:
            return True
        if self.remaining_s() > 0 or self._probe_out:
            return False
        self._probe_out = True
        return True

    def check(self) -> bool:
        """``allow()`` or raise ``BackendError(retryable=True, retry_after_s=...)``.

        Returns True when this call is the half-open probe (pass it to ``release``). The
        message says the model server is failing and when to retry; it never names the
        server's address (these messages reach API clients).
        """
        probing = self.opened_at is not None
        if self.allow():
            return probing
        wait = self.retry_after_s() or PROBE_RETRY_AFTER_S
        raise BackendError(
            f"the model server is unavailable after {self.failures} consecutive failures; "
            f"retry in {wait} s",
            retryable=True,
            retry_after_s=float(wait),
        )

    def record(self, ok: bool) -> None:
        """Count one call's outcome: a success closes the breaker at once; a failure extends
        the run and opens (or, after a failed probe, re-opens) the breaker at ``threshold``."""
        if ok:
            self.failures, self.opened_at, self._probe_out = 0, None, False
            return
        self.failures += 1
        if self.failures >= self.threshold or self._probe_out:
            self.opened_at = self.clock()
            self._probe_out = False

    def release(self, probe: bool = True) -> None:
        """Free the half-open probe slot when the probe call (``probe`` True, as ``check``
        returned it) ended without a verdict (cancelled, or refused for its own content);
        does nothing for ordinary calls or once a verdict was recorded."""
        if probe:
            self._probe_out = False

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(state={self.state}, failures={self.failures}, "
            f"threshold={self.threshold}, cooldown_s={self.cooldown_s})"
        )
