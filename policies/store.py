"""Online policy state shared by all replicas: per-(kind, bin, arm) outcomes and a decision cache.

Every replica reads and updates the same Redis hashes, so what one replica learns (a
strategy starting to fail on hard prompts, a backend getting slower) steers all of them. Keys
carry the key prefix *and* the policy version, so a new router model starts from its own
training priors instead of inheriting counts that described a different model:

- ``{prefix}:{version}:arm:{model}:{kind}:{bin}:{arm}`` hash: ``succ``, ``fail`` (fractional
  rewards allowed), ``n`` (outcomes with tokens), ``tokens`` (sum), ``latency_ms`` (sum)
- ``{prefix}:{version}:dcache:{prompt_hash}`` string (JSON, with TTL): the cached difficulty
  estimate and last decision of a prompt

``InMemoryPolicyStore`` has the same interface for unit tests; ``RedisPolicyStore`` falls
back to one (fail-open) while Redis is unreachable and retries Redis after a backoff.
"""

from __future__ import annotations

import abc
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

log = logging.getLogger("acr.policy")

_FIELDS = ("succ", "fail", "n", "tokens", "latency_ms")


@dataclass
class OnlineStat:
    """Outcomes observed online for one (kind, bin, arm) since this policy version started."""

    succ: float = 0.0
    fail: float = 0.0
    n: float = 0.0
    tokens: float = 0.0
    latency_ms: float = 0.0

    @classmethod
    def from_mapping(cls, data: dict[Any, Any]) -> OnlineStat:
        """Parse a Redis hash (bytes or str keys/values); missing fields are 0."""
        vals: dict[str, float] = {}
        for k, v in data.items():
            key = k.decode() if isinstance(k, bytes) else str(k)
            if key in _FIELDS:
                try:
                    vals[key] = float(v.decode() if isinstance(v, bytes) else v)
                except ValueError:
                    continue
        return cls(**vals)

    def add(self, other: OnlineStat) -> None:
        """Accumulate ``other`` into this one."""
        self.succ += other.succ
        self.fail += other.fail
        self.n += other.n
        self.tokens += other.tokens
        self.latency_ms += other.latency_ms


def outcome_delta(
    reward: float | None, tokens: float | None, latency_ms: float | None
) -> OnlineStat:
    """The increments one outcome makes: a reward in [0, 1] splits into succ/fail."""
    d = OnlineStat()
    if reward is not None:
        r = min(1.0, max(0.0, float(reward)))
        d.succ, d.fail = r, 1.0 - r
    if tokens is not None and latency_ms is not None:
        d.n, d.tokens, d.latency_ms = 1.0, float(tokens), float(latency_ms)
    return d


def stats_scope(model: str, kind: str | None, bin_: int) -> str:
    """Key of the online stats an outcome updates: the backend model, the task profile and
    the difficulty bin, e.g. ``"acr-bundled:game24:2"``.

    Used by the adaptive policy for every store read and write. Models are kept apart so
    that one model's outcomes never price another's. Profiles are kept apart because
    outcomes arrive only for the arms the policy chose: beam search is chosen mostly where it
    succeeds (Game of 24), and shared per-bin stats let those successes inflate its estimate
    for arithmetic prompts in the same bin.
    """
    return f"{model}:{kind or 'any'}:{bin_}"


class PolicyStore(abc.ABC):
    """Where the online policy state lives (Redis in production, memory in unit tests)."""

    version: str

    @abc.abstractmethod
    async def arm_stats(self, scope: str, arms: Iterable[str]) -> dict[str, OnlineStat]:
        """Online stats of ``arms`` in ``scope`` (see ``stats_scope``); unseen arms get zeros."""

    @abc.abstractmethod
    async def record(
        self,
        scope: str,
        arm: str,
        *,
        reward: float | None,
        tokens: float | None = None,
        latency_ms: float | None = None,
    ) -> None:
        """Add one outcome: a reward (verifier score or client feedback) and/or its cost."""

    @abc.abstractmethod
    async def cache_get(self, prompt_hash: str) -> dict[str, Any] | None:
        """The cached entry of a prompt, or None when absent or expired."""

    @abc.abstractmethod
    async def cache_put(self, prompt_hash: str, value: dict[str, Any], ttl_s: int) -> None:
        """Cache ``value`` for ``ttl_s`` seconds (0 disables caching)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default does nothing."""


class InMemoryPolicyStore(PolicyStore):
    """A process-local store with Redis's semantics (TTL by the injected clock)."""

    def __init__(self, version: str = "v1", clock: Callable[[], float] = time.monotonic) -> None:
        self.version = version
        self.clock = clock
        self.stats: dict[tuple[str, str], OnlineStat] = {}
        self.cache: dict[str, tuple[float, dict[str, Any]]] = {}

    async def arm_stats(self, scope: str, arms: Iterable[str]) -> dict[str, OnlineStat]:
        """Copies of the stats (callers may not mutate the store through them)."""
        out = {}
        for a in arms:
            s = self.stats.get((scope, a))
            out[a] = OnlineStat(**s.__dict__) if s else OnlineStat()
        return out

    async def record(
        self,
        scope: str,
        arm: str,
        *,
        reward: float | None,
        tokens: float | None = None,
        latency_ms: float | None = None,
    ) -> None:
        """Accumulate the outcome in memory."""
        self.stats.setdefault((scope, arm), OnlineStat()).add(
            outcome_delta(reward, tokens, latency_ms)
        )

    async def cache_get(self, prompt_hash: str) -> dict[str, Any] | None:
        """The entry unless its TTL has passed."""
        hit = self.cache.get(prompt_hash)
        if hit is None:
            return None
        expires, value = hit
        if self.clock() >= expires:
            del self.cache[prompt_hash]
            return None
        return value

    async def cache_put(self, prompt_hash: str, value: dict[str, Any], ttl_s: int) -> None:
        """Store with an expiry time; bounded so a flood of distinct prompts cannot grow it."""
        if ttl_s <= 0:
            return
        if len(self.cache) >= 50_000:
            self.cache.pop(next(iter(self.cache)))
        self.cache[prompt_hash] = (self.clock() + ttl_s, value)


class RedisPolicyStore(PolicyStore):
    """The shared store: Redis hashes per (kind, bin, arm), cached locally for ``refresh_s``.

    Reads serve a local snapshot refreshed at most every ``refresh_s`` seconds (one pipelined
    round trip for a whole bin), so the decision path rarely waits on Redis. Writes go to
    Redis at once (``HINCRBYFLOAT`` in a MULTI, atomic across replicas) and into the snapshot.
    Any Redis error switches to an in-memory store for ``retry_s`` seconds (fail-open): the
    router keeps deciding with training priors plus local outcomes.
    """

    def __init__(
        self,
        client: Any,
        *,
        key_prefix: str,
        version: str,
        refresh_s: float = 1.0,
        retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.prefix = key_prefix
        self.version = version
        self.refresh_s = refresh_s
        self.retry_s = retry_s
        self.clock = clock
        self.fallback = InMemoryPolicyStore(version, clock)
        self._snap: dict[str, tuple[float, dict[str, OnlineStat]]] = {}
        self._down_until = 0.0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str,
        version: str,
        socket_timeout_s: float = 0.5,
        **kw: Any,
    ) -> RedisPolicyStore:
        """A store on a new ``redis.asyncio`` client for ``url``."""
        return cls(
            Redis.from_url(
                url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
            ),
            key_prefix=key_prefix,
            version=version,
            **kw,
        )

    def arm_key(self, scope: str, arm: str) -> str:
        """Redis key of one (scope, arm) hash."""
        return f"{self.prefix}:{self.version}:arm:{scope}:{arm}"

    def cache_key(self, prompt_hash: str) -> str:
        """Redis key of a decision-cache entry."""
        return f"{self.prefix}:{self.version}:dcache:{prompt_hash}"

    def _up(self) -> bool:
        return self.clock() >= self._down_until

    def _mark_down(self, exc: Exception) -> None:
        if self._up():
            log.warning("policy store: Redis unavailable (%s); using local state", exc)
        self._down_until = self.clock() + self.retry_s

    async def arm_stats(self, scope: str, arms: Iterable[str]) -> dict[str, OnlineStat]:
        """The scope's stats from the local snapshot, refreshed from Redis when stale."""
        names = list(arms)
        snap = self._snap.get(scope)
        if snap is not None and self.clock() - snap[0] < self.refresh_s:
            return {a: snap[1].get(a, OnlineStat()) for a in names}
        if not self._up():
            return await self.fallback.arm_stats(scope, names)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for a in names:
                    pipe.hgetall(self.arm_key(scope, a))
                rows = await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - redis/OS errors alike: fail open
            self._mark_down(exc)
            return await self.fallback.arm_stats(scope, names)
        stats = {a: OnlineStat.from_mapping(r or {}) for a, r in zip(names, rows, strict=True)}
        self._snap[scope] = (self.clock(), stats)
        return dict(stats)

    async def record(
        self,
        scope: str,
        arm: str,
        *,
        reward: float | None,
        tokens: float | None = None,
        latency_ms: float | None = None,
    ) -> None:
        """Atomically add the outcome in Redis (or locally while Redis is down)."""
        delta = outcome_delta(reward, tokens, latency_ms)
        snap = self._snap.get(scope)
        if snap is not None:
            snap[1].setdefault(arm, OnlineStat()).add(delta)
        if not self._up():
            await self.fallback.record(
                scope, arm, reward=reward, tokens=tokens, latency_ms=latency_ms
            )
            return
        key = self.arm_key(scope, arm)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                for f in _FIELDS:
                    v = getattr(delta, f)
                    if v:
                        pipe.hincrbyfloat(key, f, v)
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001
            self._mark_down(exc)
            await self.fallback.record(
                scope, arm, reward=reward, tokens=tokens, latency_ms=latency_ms
            )

    async def cache_get(self, prompt_hash: str) -> dict[str, Any] | None:
        """The cached JSON entry (Redis enforces the TTL)."""
        if not self._up():
            return await self.fallback.cache_get(prompt_hash)
        try:
            raw = await self.client.get(self.cache_key(prompt_hash))
        except Exception as exc:  # noqa: BLE001
            self._mark_down(exc)
            return await self.fallback.cache_get(prompt_hash)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except (ValueError, TypeError):
            return None
        return value if isinstance(value, dict) else None

    async def cache_put(self, prompt_hash: str, value: dict[str, Any], ttl_s: int) -> None:
        """``SET key json EX ttl``."""
        if ttl_s <= 0:
            return
        if not self._up():
            await self.fallback.cache_put(prompt_hash, value, ttl_s)
            return
        try:
            await self.client.set(
                self.cache_key(prompt_hash), json.dumps(value, separators=(",", ":")), ex=ttl_s
            )
        except Exception as exc:  # noqa: BLE001
            self._mark_down(exc)
            await self.fallback.cache_put(prompt_hash, value, ttl_s)

    async def close(self) -> None:
        """Close the Redis client."""
        try:
            await self.client.aclose()
        except Exception:  # noqa: BLE001 - closing a broken client is best effort
            pass
