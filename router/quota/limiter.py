"""Per-key request and token limits: reserve before running, settle after.

Each key has fixed one-minute windows with three counts: requests admitted, tokens charged
(``used``) and tokens held by requests still running (``held``). A request is admitted only
when what it may spend fits beside what the window has used and holds; when it ends, its
hold is released and what it really spent is charged (``settle``). So concurrent requests
cannot all pass a check and then overspend: the window's charge passes ``tokens_per_minute``
by at most one request (one larger than the whole limit runs only alone in its window). A
request belongs to the window it was admitted in; a hold never settled (a crashed replica)
expires with that window's keys.

The counts live in Redis, changed by Lua scripts (atomic across replicas; the keys of a
window share a hash tag, so a cluster keeps them on one slot). When Redis fails the
replica falls back to ``LocalWindows`` with the same limits and says so (``degraded`` in
the verdict, ``acr_rate_limit_degraded_total``): while Redis is down each replica keeps its
own counts, so with R replicas a key may spend up to R times its limits. Redis is tried
again ``retry_redis_s`` after a failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis

from policies.fail_open import FailOpen
from router.metrics import Metrics
from router.quota.local import ALLOWED, REFUSED_REQUESTS, LocalWindows, WindowCounts

log = logging.getLogger("acr.rate_limit")

WINDOW_S = 60

# KEYS: requests, used, held. ARGV: rpm, tpm, tokens, ttl_s. The rules of
# router.quota.local.reserve_rule, applied atomically.
RESERVE_LUA = """
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
if rpm > 0 and tonumber(redis.call('GET', KEYS[1]) or '0') >= rpm then return -1 end
local taken = tonumber(redis.call('GET', KEYS[2]) or '0')
  + tonumber(redis.call('GET', KEYS[3]) or '0')
if tpm > 0 and taken > 0 and taken + tokens > tpm then return -2 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ttl)
if tokens > 0 then
  redis.call('INCRBY', KEYS[3], tokens)
  redis.call('EXPIRE', KEYS[3], ttl)
end
return 1
"""

# KEYS: used, held. ARGV: tpm, old, new, ttl_s. router.quota.local.resize_rule.
RESIZE_LUA = """
local tpm, old = tonumber(ARGV[1]), tonumber(ARGV[2])
local new, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local held = tonumber(redis.call('GET', KEYS[2]) or '0')
local others = used + math.max(0, held - old)
if tpm > 0 and new > old and others > 0 and others + new > tpm then return -2 end
redis.call('SET', KEYS[2], math.max(0, held - old) + new, 'EX', ttl)
return 1
"""

# KEYS: used, held. ARGV: held tokens to release, tokens spent, ttl_s.
SETTLE_LUA = """
local release, spent = tonumber(ARGV[1]), tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local left = math.max(0, tonumber(redis.call('GET', KEYS[2]) or '0') - release)
if left > 0 then
  redis.call('SET', KEYS[2], left, 'EX', ttl)
else
  redis.call('DEL', KEYS[2])
end
if spent > 0 then
  redis.call('INCRBY', KEYS[1], spent)
  redis.call('EXPIRE', KEYS[1], ttl)
end
return 1
"""


@dataclass
class Reservation:
    """Tokens a running request holds in its key's window (``store``: where they are
    held). ``settled`` makes settling idempotent: whichever way the request ends first
    settles it, later attempts do nothing."""

    key_id: str
    window: int
    tokens: int
    store: Literal["redis", "local"]
    settled: bool = False


@dataclass(frozen=True)
class LimitVerdict:
    """``allowed`` False means answer 429 with ``retry_after_s``; ``degraded``: decided by
    this replica's in-process limiter because Redis failed. ``reservation`` is what an
    admitted request holds (None when no limit applies)."""

    allowed: bool
    limit: str = ""
    retry_after_s: int = 0
    degraded: bool = False
    reservation: Reservation | None = None


class RateLimiter:
    """Reserves a request's tokens before it runs and settles them when it ends.

    ``client`` None keeps the limits in this process only (one replica without Redis).
    ``metrics`` receives ``acr_rate_limit_*``; ``clock`` is wall-clock seconds (windows)
    and ``monotonic`` times the Redis retry.
    """

    def __init__(
        self,
        client: Redis | None,
        *,
        prefix: str,
        requests_per_minute: int,
        tokens_per_minute: int,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        retry_redis_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.local = LocalWindows()
        self.redis_state = FailOpen(
            "rate limits (each replica counts alone meanwhile)",
            retry_redis_s,
            clock=monotonic,
            on_failure=lambda op: self.metrics.rate_limit_degraded.labels(operation=op).inc(),
        )
        self._pending: set[asyncio.Task[None]] = set()
        self._scripts = (
            {
                "reserve": client.register_script(RESERVE_LUA),
                "resize": client.register_script(RESIZE_LUA),
                "settle": client.register_script(SETTLE_LUA),
            }
            if client is not None
            else {}
        )

    @property
    def enabled(self) -> bool:
        """True when a limit is configured (kept in Redis, or in this process without it)."""
        return self.rpm > 0 or self.tpm > 0

    def _keys(self, key_id: str, window: int) -> list[str]:
        base = f"{self.prefix}:ratelimit:{{{key_id}:{window}}}"
        return [f"{base}:req", f"{base}:used", f"{base}:held"]

    def _ttl_s(self, window: int) -> int:
        # The keys outlive their window by one more, for requests admitted at its end.
        return max(1, int((window + 2) * WINDOW_S - self.clock()))

    def _retry_after_s(self) -> int:
        now = self.clock()
        return max(1, int((int(now // WINDOW_S) + 1) * WINDOW_S - now))

    async def _redis(self, operation: str, keys: list[str], args: list[int]) -> int | None:
        """The script's answer, or None when Redis is not used or failed (the caller falls
        back to this replica's own counts)."""
        if self.client is None:
            return None

        async def script() -> int:
            return int(await self._scripts[operation](keys=keys, args=args))

        return await self.redis_state.call(operation, script, lambda: None)

    async def reserve(self, key_id: str, tokens: int) -> LimitVerdict:
        """Count one request for ``key_id`` and hold ``tokens`` for it in this window.

        Refused (429) when ``requests_per_minute`` is reached or the tokens do not fit
        beside what the window used and holds. An empty ``key_id`` (in-process callers)
        and a limiter without limits admit everything with no reservation.
        """
        if not self.enabled or not key_id:
            return LimitVerdict(True)
        tokens = max(0, tokens) if self.tpm > 0 else 0
        window = int(self.clock() // WINDOW_S)
        code = await self._redis(
            "reserve",
            self._keys(key_id, window),
            [self.rpm, self.tpm, tokens, self._ttl_s(window)],
        )
        store: Literal["redis", "local"] = "redis"
        if code is None:
            store = "local"
            code = self.local.reserve(key_id, window, self.rpm, self.tpm, tokens)
        degraded = store == "local" and self.client is not None
        if code != ALLOWED:
            limit = "requests_per_minute" if code == REFUSED_REQUESTS else "tokens_per_minute"
            return LimitVerdict(False, limit, self._retry_after_s(), degraded)
        self.metrics.rate_limit_tokens.labels(kind="reserved").inc(tokens)
        return LimitVerdict(
            True, degraded=degraded, reservation=Reservation(key_id, window, tokens, store)
        )

    async def resize(self, reservation: Reservation, tokens: int) -> LimitVerdict:
        """Make ``reservation`` hold ``tokens`` (what the decided request may spend);
        growing is refused (429) when it does not fit. Refused, the old hold is kept:
        the caller settles it with what was spent."""
        if self.tpm <= 0 or reservation.settled:
            return LimitVerdict(True, reservation=reservation)
        old, new, r = reservation.tokens, max(0, tokens), reservation
        code = None
        if r.store == "redis":
            keys = self._keys(r.key_id, r.window)[1:]
            code = await self._redis("resize", keys, [self.tpm, old, new, self._ttl_s(r.window)])
        if code is None:
            # A hold in Redis moves here whole; the Redis one expires with its window
            # (counted twice meanwhile, never under-counted).
            local_old = old if r.store == "local" else 0
            code = self.local.resize(r.key_id, r.window, self.tpm, local_old, new)
            if code == ALLOWED:
                r.store = "local"
        degraded = r.store == "local" and self.client is not None
        if code != ALLOWED:
            return LimitVerdict(False, "tokens_per_minute", self._retry_after_s(), degraded)
        r.tokens = new
        kind = "reserved" if new >= old else "released"
        self.metrics.rate_limit_tokens.labels(kind=kind).inc(abs(new - old))
        return LimitVerdict(True, degraded=degraded, reservation=r)

    async def settle(self, reservation: Reservation, spent: int | None, outcome: str) -> None:
        """Charge ``spent`` tokens (None: unknown, charge all it holds) and release the rest;
        once per reservation. ``outcome`` (ok, timeout, error, abandoned, refused) labels
        the metric. Runs to its end even when the caller is cancelled (a client gone)."""
        if reservation.settled:
            return
        reservation.settled = True
        m = self.metrics
        m.rate_limit_settled.labels(outcome=outcome).inc()
        if self.tpm <= 0:
            return
        charge = reservation.tokens if spent is None else max(0, spent)
        m.rate_limit_tokens.labels(kind="charged").inc(charge)
        m.rate_limit_tokens.labels(kind="released").inc(max(0, reservation.tokens - charge))
        await self._shielded(self._settle(reservation, charge))

    async def _settle(self, r: Reservation, charge: int) -> None:
        code = None
        if r.store == "redis":
            keys = self._keys(r.key_id, r.window)[1:]
            code = await self._redis("settle", keys, [r.tokens, charge, self._ttl_s(r.window)])
        if code is None:
            # A Redis hold that cannot be released now expires with its window; the charge
            # is kept here so this replica still counts it while Redis is down.
            self.local.settle(r.key_id, r.window, r.tokens if r.store == "local" else 0, charge)

    async def _shielded(self, work: Coroutine[Any, Any, None]) -> None:
        # A cancelled request (the client went away) must still settle: run it as its own
        # task and keep a reference until it is done.
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        await asyncio.shield(task)

    async def window_counts(self, key_id: str, window: int | None = None) -> WindowCounts:
        """``key_id``'s counts in ``window`` (default: the current one): from Redis, or
        this process's own when Redis is not there or not answering."""
        window = int(self.clock() // WINDOW_S) if window is None else window
        local = self.local.windows.get((key_id, window), WindowCounts())
        if self.client is None:
            return local
        client = self.client

        async def remote() -> WindowCounts:
            req, used, held = await client.mget(self._keys(key_id, window))
            return WindowCounts(int(req or 0), int(used or 0), int(held or 0))

        try:
            return await remote()
        except Exception:  # noqa: BLE001 - a read for reports: this replica's counts will do
            return local
