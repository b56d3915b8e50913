"""Per-key limit windows kept in this process: the limiter's fallback when Redis is down.

``LocalWindows`` applies exactly the rules of the Redis scripts in ``router.quota.limiter``
(reserve, resize, settle on a key's one-minute window) to counts in a dict. Its counts are
this replica's alone: with R ingress replicas and Redis down, a key may spend up to R times
its limits, one share per replica, until Redis answers again.
"""

from __future__ import annotations

from dataclasses import dataclass

#: what a reservation attempt returns: allowed, or which limit refused it
ALLOWED = 1
REFUSED_REQUESTS = -1
REFUSED_TOKENS = -2


@dataclass
class WindowCounts:
    """One key's window: requests admitted, tokens charged, tokens held by reservations."""

    requests: int = 0
    used: int = 0
    held: int = 0


def reserve_rule(counts: WindowCounts, rpm: int, tpm: int, tokens: int) -> int:
    """Whether one more request holding ``tokens`` fits (``ALLOWED`` or the refusal code).

    A request whose reservation alone exceeds ``tpm`` fits only a window where nothing is
    used or held yet, so the window's charge passes its limit by at most one request.
    """
    if rpm > 0 and counts.requests >= rpm:
        return REFUSED_REQUESTS
    taken = counts.used + counts.held
    if tpm > 0 and taken > 0 and taken + tokens > tpm:
        return REFUSED_TOKENS
    return ALLOWED


def resize_rule(counts: WindowCounts, tpm: int, old: int, new: int) -> int:
    """Whether a reservation of ``old`` tokens may grow to ``new`` (shrinking always may)."""
    others = counts.used + max(0, counts.held - old)
    if tpm > 0 and new > old and others > 0 and others + new > tpm:
        return REFUSED_TOKENS
    return ALLOWED


class LocalWindows:
    """The limit windows of every key, in this process; old windows are dropped as time
    passes (a reservation never settled goes with its window)."""

    def __init__(self) -> None:
        self.windows: dict[tuple[str, int], WindowCounts] = {}
        self._newest = 0

    def _counts(self, key_id: str, window: int) -> WindowCounts:
        if window > self._newest:
            self._newest = window
            # A request admitted in the previous window may still settle; older ones expire.
            for stale in [k for k in self.windows if k[1] < window - 1]:
                del self.windows[stale]
        return self.windows.setdefault((key_id, window), WindowCounts())

    def reserve(self, key_id: str, window: int, rpm: int, tpm: int, tokens: int) -> int:
        """Count a request and hold ``tokens`` when they fit; returns ``reserve_rule``'s code."""
        counts = self._counts(key_id, window)
        code = reserve_rule(counts, rpm, tpm, tokens)
        if code == ALLOWED:
            counts.requests += 1
            counts.held += tokens
        return code

    def resize(self, key_id: str, window: int, tpm: int, old: int, new: int) -> int:
        """Make a hold of ``old`` tokens ``new`` when it fits; returns ``resize_rule``'s code."""
        counts = self._counts(key_id, window)
        code = resize_rule(counts, tpm, old, new)
        if code == ALLOWED:
            counts.held = max(0, counts.held - old) + new
        return code

    def settle(self, key_id: str, window: int, held: int, spent: int) -> None:
        """Release a hold of ``held`` tokens and charge ``spent``."""
        counts = self._counts(key_id, window)
        counts.held = max(0, counts.held - held)
        counts.used += max(0, spent)
