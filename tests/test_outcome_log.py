"""The outcome stream against a real redis-server, including an outage and a restart."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from router.embedded_redis import EmbeddedRedis
from router.metrics import Metrics
from router.outcome_log import OutcomeLog


def _log(url: str, metrics: Metrics, buffer_max: int = 100) -> tuple[Redis, OutcomeLog]:
    client = Redis.from_url(url, socket_timeout=0.3, socket_connect_timeout=0.3)
    return client, OutcomeLog(
        client,
        stream="acr:test",
        maxlen=1000,
        buffer_max=buffer_max,
        metrics=metrics,
        backoff_max_s=0.2,
    )


async def test_an_outcome_lands_in_the_stream_with_nested_fields_as_json(redis_url: str) -> None:
    client, log = _log(redis_url, Metrics())
    assert await log.append({"id": "r1", "tokens": 12, "budget": {"samples": 4}, "score": None})
    entries = await client.xrange("acr:test")
    assert len(entries) == 1
    fields = entries[0][1]
    assert fields[b"id"] == b"r1"
    assert fields[b"tokens"] == b"12"
    assert fields[b"budget"] == b'{"samples":4}'
    assert fields[b"score"] == b""
    await log.stop()
    await client.aclose()


async def test_outcomes_survive_a_redis_restart_in_order() -> None:
    server = EmbeddedRedis().start()
    metrics = Metrics()
    client, log = _log(server.url, metrics)
    try:
        assert await log.append({"id": "before"})
        server.kill()
        for i in range(5):
            assert not await log.append({"id": f"down-{i}"})
        assert len(log.buffer) == 5
        assert metrics.redis_up._value.get() == 0
        server.start()
        for _ in range(100):
            if not log.buffer:
                break
            await asyncio.sleep(0.05)
        assert not log.buffer, "the background flusher should drain the buffer"
        # The restarted server kept no data (no persistence); what it has now is the buffer.
        ids = [f[b"id"].decode() for _, f in await client.xrange("acr:test")]
        assert ids == [f"down-{i}" for i in range(5)]
    finally:
        await log.stop()
        await client.aclose()
        server.cleanup()


async def test_a_full_buffer_drops_the_oldest_and_counts_it() -> None:
    server = EmbeddedRedis().start()
    server.kill()
    metrics = Metrics()
    client, log = _log(server.url, metrics, buffer_max=3)
    try:
        for i in range(5):
            await log.append({"id": str(i)})
        assert [e["id"] for e in log.buffer] == ["2", "3", "4"]
        assert log.dropped == 2
        assert metrics.outcomes_dropped._value.get() == 2
    finally:
        await log.stop(flush_timeout_s=0.2)
        await client.aclose()
        server.cleanup()
