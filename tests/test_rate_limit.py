"""Per-key limits in a real redis-server; fail-open when Redis is unreachable."""

from __future__ import annotations

from redis.asyncio import Redis

from router.embedded_redis import free_port
from router.rate_limit import RateLimiter


async def test_requests_over_the_per_minute_limit_are_refused_until_the_next_window(
    redis_url: str,
) -> None:
    now = {"t": 1_000_020.0}
    client = Redis.from_url(redis_url)
    lim = RateLimiter(
        client, prefix="t", requests_per_minute=3, tokens_per_minute=0, clock=lambda: now["t"]
    )
    verdicts = [await lim.check("k1") for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert verdicts[-1].limit == "requests_per_minute"
    assert 1 <= verdicts[-1].retry_after_s <= 60
    assert (await lim.check("k2")).allowed, "limits are per key"
    now["t"] += 60
    assert (await lim.check("k1")).allowed
    await client.aclose()


async def test_tokens_charged_after_serving_close_the_window_for_that_key(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    lim = RateLimiter(
        client, prefix="t", requests_per_minute=0, tokens_per_minute=100, clock=lambda: 5_000_000.0
    )
    assert (await lim.check("k")).allowed
    await lim.charge("k", 60)
    assert (await lim.check("k")).allowed
    await lim.charge("k", 60)
    verdict = await lim.check("k")
    assert not verdict.allowed and verdict.limit == "tokens_per_minute"
    await client.aclose()


async def test_a_dead_redis_fails_open_and_says_it_is_degraded() -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    lim = RateLimiter(client, prefix="t", requests_per_minute=1, tokens_per_minute=0)
    verdict = await lim.check("k")
    assert verdict.allowed and verdict.degraded
    await client.aclose()
