"""Online policy state shared by all replicas: per-(kind, bin, arm) outcomes and a decision cache.

Every replica reads and updates the same Redis hashes, so what one replica learns (a
strategy starting to fail on hard prompts, a backend getting slower) steers all of them. Keys
carry the key prefix *and* the policy version, so a new router model starts from its own
training priors instead of inheriting counts that described a different model:

- ``{prefix}:{version}:arm:{model}:{kind}:{bin}:{arm}`` hash: ``succ``, ``fail`` (fractional
  rewards allowed), ``n`` (outcomes with tokens), ``tokens`` (sum), ``latency_ms`` (sum)
- ``{prefix}:{version}:dcache:{key}`` string (JSON, with TTL): the cached difficulty
  estimate and last decision of a request (``policies.decision_cache``)
- ``{prefix}:{version}:resp:{response_id}`` string (JSON, with TTL): what feedback on a
  response updates and which tenant may give it; ``...:fbclaim:{response_id}`` marks
  feedback already taken; ``...:share:{scope}:{arm}`` hash: each tenant's used allowance

``InMemoryPolicyStore`` has the same interface for unit tests; ``RedisPolicyStore`` falls
back to one (fail-open) while Redis is unreachable, retries Redis after a backoff, and then
writes what it learned meanwhile to Redis.
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

from policies.fail_open import FailOpen

log = logging.getLogger("acr.policy")

_FIELDS = ("succ", "fail", "n", "tokens", "latency_ms")
#: entries a process-local store keeps (cache, claims) before dropping the oldest
MEMORY_ENTRIES = 50_000
#: outcomes learned while Redis was down, kept to write once it is back
PENDING_MAX = 100_000

# Grants what is left of one member's allowance, atomically across replicas.
_TAKE_SHARE = """
local used = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local granted = math.min(tonumber(ARGV[2]), tonumber(ARGV[3]) - used)
if granted <= 0 then return '0' end
redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1], granted)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return tostring(granted)
"""
#: how long a tenant's used allowance is remembered (a policy version rarely lives longer)
SHARE_TTL_S = 30 * 86_400


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
    reward: float | None,
    tokens: float | None,
    latency_ms: float | None,
    weight: float = 1.0,
) -> OnlineStat:
    """The increments one outcome makes: a reward in [0, 1] splits into succ/fail, worth
    ``weight`` observations (a proxy signal or a capped tenant's feedback counts less)."""
    d = OnlineStat()
    if reward is not None and weight > 0:
        r = min(1.0, max(0.0, float(reward)))
        d.succ, d.fail = weight * r, weight * (1.0 - r)
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
        weight: float = 1.0,
    ) -> None:
        """Add one outcome: a reward (verifier score, agreement proxy or client feedback)
        worth ``weight`` observations, and/or its cost."""

    @abc.abstractmethod
    async def get_json(self, key: str) -> dict[str, Any] | None:
        """The JSON object stored under ``key`` (a name within this store), or None when
        absent or expired."""

    @abc.abstractmethod
    async def put_json(self, key: str, value: dict[str, Any], ttl_s: int) -> None:
        """Store ``value`` under ``key`` for ``ttl_s`` seconds (0: do not store)."""

    @abc.abstractmethod
    async def claim(self, key: str, ttl_s: int) -> bool:
        """True for the first caller that claims ``key`` within ``ttl_s`` seconds, False
        for every later one (once-only actions such as feedback on a response)."""

    @abc.abstractmethod
    async def take_share(self, key: str, member: str, amount: float, cap: float) -> float:
        """Take up to ``amount`` of ``member``'s allowance ``cap`` under ``key``; returns what
        was granted (0 when it is used up). Caps one tenant's influence on shared state."""

    async def cache_get(self, prompt_hash: str) -> dict[str, Any] | None:
        """The decision-cache entry of a prompt, or None when absent or expired."""
        return await self.get_json(f"dcache:{prompt_hash}")

    async def cache_put(self, prompt_hash: str, value: dict[str, Any], ttl_s: int) -> None:
        """Cache a prompt's entry for ``ttl_s`` seconds (0 disables caching)."""
        await self.put_json(f"dcache:{prompt_hash}", value, ttl_s)

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default does nothing."""


class InMemoryPolicyStore(PolicyStore):
    """A process-local store with Redis's semantics (TTL by the injected clock)."""

    def __init__(self, version: str = "v1", clock: Callable[[], float] = time.monotonic) -> None:
        self.version = version
        self.clock = clock
        self.stats: dict[tuple[str, str], OnlineStat] = {}
        self.cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self.claims: dict[str, float] = {}
        self.shares: dict[tuple[str, str], float] = {}

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
        weight: float = 1.0,
    ) -> None:
        """Accumulate the outcome in memory."""
        self.stats.setdefault((scope, arm), OnlineStat()).add(
            outcome_delta(reward, tokens, latency_ms, weight)
        )

    async def get_json(self, key: str) -> dict[str, Any] | None:
        """The entry unless its TTL has passed."""
        hit = self.cache.get(key)
        if hit is None:
            return None
        expires, value = hit
        if self.clock() >= expires:
            del self.cache[key]
            return None
        return value

    async def put_json(self, key: str, value: dict[str, Any], ttl_s: int) -> None:
        """Store with an expiry time; bounded so a flood of distinct keys cannot grow it."""
        if ttl_s <= 0:
            return
        if len(self.cache) >= MEMORY_ENTRIES:
            self.cache.pop(next(iter(self.cache)))
        self.cache[key] = (self.clock() + ttl_s, value)

    async def claim(self, key: str, ttl_s: int) -> bool:
        """First claim within the TTL wins (bounded like the cache)."""
        now = self.clock()
        if self.claims.get(key, 0.0) > now:
            return False
        if len(self.claims) >= MEMORY_ENTRIES:
            self.claims.pop(next(iter(self.claims)))
        self.claims[key] = now + ttl_s
        return True

    async def take_share(self, key: str, member: str, amount: float, cap: float) -> float:
        """Grant what is left of the member's cap, up to ``amount``."""
        used = self.shares.get((key, member), 0.0)
        granted = max(0.0, min(amount, cap - used))
        if granted > 0:
            self.shares[(key, member)] = used + granted
        return granted


class RedisPolicyStore(PolicyStore):
    """Online state in Redis, shared by all replicas (keys carry prefix and version).

    Reads serve a local snapshot refreshed at most every ``refresh_s`` seconds (one pipelined
    round trip for a whole bin), so the decision path rarely waits on Redis. Writes go to
    Redis at once (``HINCRBYFLOAT`` in a MULTI, atomic across replicas) and into the snapshot.
    Any Redis error switches to an in-memory store for ``retry_s`` seconds
    (``policies.fail_open``): the router keeps deciding with training priors plus local
    outcomes, and writes what it learned meanwhile to Redis once it answers again.
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
        self.clock = clock
        self.fallback = InMemoryPolicyStore(version, clock)
        self.redis_state = FailOpen("policy store", retry_s, clock=clock)
        self._snap: dict[str, tuple[float, dict[str, OnlineStat]]] = {}
        # Outcomes learned while Redis was down, written once it answers again.
        self.pending: list[tuple[str, OnlineStat]] = []

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

    def key(self, name: str) -> str:
        """Redis key of a named entry of this store (cache entries, claims, shares)."""
        return f"{self.prefix}:{self.version}:{name}"

    async def arm_stats(self, scope: str, arms: Iterable[str]) -> dict[str, OnlineStat]:
        """The scope's stats from the local snapshot, refreshed from Redis when stale."""
        names = list(arms)
        snap = self._snap.get(scope)
        if snap is not None and self.clock() - snap[0] < self.refresh_s:
            return {a: snap[1].get(a, OnlineStat()) for a in names}
        if self.redis_state.up and self.pending:
            await self._write_pending()

        async def remote() -> dict[str, OnlineStat]:
            async with self.client.pipeline(transaction=False) as pipe:
                for a in names:
                    pipe.hgetall(self.arm_key(scope, a))
                rows = await pipe.execute()
            stats = {a: OnlineStat.from_mapping(r or {}) for a, r in zip(names, rows, strict=True)}
            self._snap[scope] = (self.clock(), stats)
            return dict(stats)

        return await self.redis_state.call(
            "arm_stats", remote, lambda: self.fallback.arm_stats(scope, names)
        )

    async def record(
        self,
        scope: str,
        arm: str,
        *,
        reward: float | None,
        tokens: float | None = None,
        latency_ms: float | None = None,
        weight: float = 1.0,
    ) -> None:
        """Atomically add the outcome in Redis (or locally while Redis is down, to be
        written to Redis once it is back)."""
        delta = outcome_delta(reward, tokens, latency_ms, weight)
        snap = self._snap.get(scope)
        if snap is not None:
            snap[1].setdefault(arm, OnlineStat()).add(delta)
        if self.redis_state.up and self.pending:
            await self._write_pending()

        async def remote() -> None:
            await self._write(self.arm_key(scope, arm), delta)

        await self.redis_state.call("record", remote, lambda: self._keep(scope, arm, delta))

    async def _write(self, key: str, delta: OnlineStat) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            for f in _FIELDS:
                v = getattr(delta, f)
                if v:
                    pipe.hincrbyfloat(key, f, v)
            await pipe.execute()

    def _keep(self, scope: str, arm: str, delta: OnlineStat) -> None:
        """Learn locally now and keep the delta for Redis (bounded: the oldest go first)."""
        self.fallback.stats.setdefault((scope, arm), OnlineStat()).add(delta)
        if len(self.pending) >= PENDING_MAX:
            self.pending.pop(0)
            log.error("policy store: %d outcomes wait for Redis; dropped the oldest", PENDING_MAX)
        self.pending.append((self.arm_key(scope, arm), delta))

    async def _write_pending(self) -> None:
        """Write what was learned during an outage, oldest first, then forget the local
        copy (the shared stats now hold it)."""
        try:
            while self.pending:
                key, delta = self.pending[0]
                await self._write(key, delta)
                self.pending.pop(0)
        except Exception as exc:  # noqa: BLE001 - Redis failed again: keep the rest
            self.redis_state.failed("write_pending", exc)
            return
        log.info("policy store: outcomes learned during the outage written to Redis")
        self.fallback.stats.clear()
        self._snap.clear()

    async def get_json(self, key: str) -> dict[str, Any] | None:
        """The stored JSON object (Redis enforces the TTL; an entry kept locally during an
        outage is still found)."""

        async def remote() -> dict[str, Any] | None:
            raw = await self.client.get(self.key(key))
            if raw is None:
                return await self.fallback.get_json(key)
            try:
                value = json.loads(raw)
            except (ValueError, TypeError):
                return None
            return value if isinstance(value, dict) else None

        return await self.redis_state.call("get", remote, lambda: self.fallback.get_json(key))

    async def put_json(self, key: str, value: dict[str, Any], ttl_s: int) -> None:
        """``SET key json EX ttl``."""
        if ttl_s <= 0:
            return

        async def remote() -> None:
            raw = json.dumps(value, separators=(",", ":"))
            await self.client.set(self.key(key), raw, ex=ttl_s)

        await self.redis_state.call(
            "put", remote, lambda: self.fallback.put_json(key, value, ttl_s)
        )

    async def claim(self, key: str, ttl_s: int) -> bool:
        """``SET key 1 NX EX ttl`` (locally while Redis is down)."""

        async def remote() -> bool:
            return bool(await self.client.set(self.key(key), "1", nx=True, ex=max(1, ttl_s)))

        return await self.redis_state.call("claim", remote, lambda: self.fallback.claim(key, ttl_s))

    async def take_share(self, key: str, member: str, amount: float, cap: float) -> float:
        """A Lua script grants what is left of the member's cap, atomically."""

        async def remote() -> float:
            got = await self.client.eval(
                _TAKE_SHARE, 1, self.key(key), member, amount, cap, SHARE_TTL_S
            )
            return float(got.decode() if isinstance(got, bytes) else got)

        return await self.redis_state.call(
            "take_share", remote, lambda: self.fallback.take_share(key, member, amount, cap)
        )

    async def close(self) -> None:
        """Close the Redis client."""
        try:
            await self.client.aclose()
        except Exception:  # noqa: BLE001 - closing a broken client is best effort
            pass
