"""Per-key request and token limits kept in Redis, shared by every ingress replica.

Fixed one-minute windows (``INCR`` + ``EXPIRE`` in one pipeline): cheap, exact enough for
quotas, and the key names carry the window so no cleanup is needed. When Redis is down the
limiter fails open (serving beats enforcing a quota) and says so in its result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

WINDOW_S = 60


@dataclass(frozen=True)
class LimitVerdict:
    """``allowed`` False means answer 429 with ``retry_after_s``; ``degraded`` = Redis down."""

    allowed: bool
    limit: str = ""
    retry_after_s: int = 0
    degraded: bool = False


class RateLimiter:
    """Checks ``requests_per_minute`` before a request and charges tokens after it."""

    def __init__(
        self,
        client: Redis | None,
        *,
        prefix: str,
        requests_per_minute: int,
        tokens_per_minute: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self.clock = clock

    @property
    def enabled(self) -> bool:
        """True when a limit is configured and there is a Redis to keep it in."""
        return self.client is not None and (self.rpm > 0 or self.tpm > 0)

    def _keys(self, key_id: str) -> tuple[str, str, int]:
        now = self.clock()
        window = int(now // WINDOW_S)
        retry = max(1, int((window + 1) * WINDOW_S - now))
        base = f"{self.prefix}:ratelimit:{key_id}:{window}"
        return f"{base}:req", f"{base}:tok", retry

    async def check(self, key_id: str) -> LimitVerdict:
        """Count one request for ``key_id``; refuses it when a limit is already reached."""
        if not self.enabled or not key_id or self.client is None:
            return LimitVerdict(True)
        req_key, tok_key, retry = self._keys(key_id)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.incr(req_key)
            pipe.expire(req_key, WINDOW_S * 2)
            pipe.get(tok_key)
            count, _, tokens = await pipe.execute()
        except (RedisError, OSError):
            return LimitVerdict(True, degraded=True)
        if self.rpm and int(count) > self.rpm:
            return LimitVerdict(False, "requests_per_minute", retry)
        if self.tpm and tokens is not None and int(tokens) >= self.tpm:
            return LimitVerdict(False, "tokens_per_minute", retry)
        return LimitVerdict(True)

    async def charge(self, key_id: str, tokens: int) -> None:
        """Add a served request's tokens to ``key_id``'s window (best effort)."""
        if not self.enabled or not key_id or self.tpm <= 0 or self.client is None:
            return
        _, tok_key, _ = self._keys(key_id)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.incrby(tok_key, tokens)
            pipe.expire(tok_key, WINDOW_S * 2)
            await pipe.execute()
        except (RedisError, OSError):
            return
