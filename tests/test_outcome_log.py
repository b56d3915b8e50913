"""The outcome stream against a real redis-server: an outage, a restart, a full Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from router.config import load_config
from router.metrics import Metrics
from router.outcomes.log import OutcomeLog
from router.outcomes.spool import OutcomeSpool
from router.serving.embedded_redis import EmbeddedRedis, free_port
from router.serving.runtime import build_runtime
from tests.fakes import FakeBackend

STREAM = "acr:test"


def _log(
    url: str, spool_dir: Path, metrics: Metrics, memory_max: int = 100, maxlen: int | None = None
) -> tuple[Redis, OutcomeLog]:
    client = Redis.from_url(url, socket_timeout=0.3, socket_connect_timeout=0.3)
    return client, OutcomeLog(
        client,
        stream=STREAM,
        spool=OutcomeSpool(spool_dir, "test"),
        metrics=metrics,
        maxlen=maxlen,
        memory_max=memory_max,
        backoff_max_s=0.1,
    )


async def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_an_outcome_lands_in_the_stream_with_nested_fields_as_json(
    redis_url: str, tmp_path: Path
) -> None:
    client, log = _log(redis_url, tmp_path, Metrics())
    first = await log.append({"id": "r1", "tokens": 12, "budget": {"samples": 4}, "score": None})
    second = await log.append({"id": "r1", "status": "feedback"})
    assert first != second, "every outcome gets its own outcome_id, even for one response id"
    await log.flush()
    entries = await client.xrange(STREAM)
    assert len(entries) == 2
    fields = entries[0][1]
    assert fields[b"id"] == b"r1"
    assert fields[b"outcome_id"] == first.encode()
    assert fields[b"tokens"] == b"12"
    assert fields[b"budget"] == b'{"samples":4}'
    assert fields[b"score"] == b""
    await log.stop()
    await client.aclose()


@pytest.mark.full
async def test_outcomes_survive_a_redis_restart_in_order(tmp_path: Path) -> None:
    server = EmbeddedRedis().start()
    metrics = Metrics()
    client, log = _log(server.url, tmp_path, metrics)
    try:
        await log.append({"id": "before"})
        await _until(lambda: log.pending == 0)
        server.kill()
        for i in range(5):
            await log.append({"id": f"down-{i}"})
        assert log.pending == 5
        await _until(lambda: metrics.redis_up._value.get() == 0)
        assert metrics.outcomes_buffered._value.get() == 5
        server.start()
        await _until(lambda: log.pending == 0)
        # The restarted server kept no data (no persistence); what it has now is the spool.
        ids = [f[b"id"].decode() for _, f in await client.xrange(STREAM)]
        assert ids == [f"down-{i}" for i in range(5)]
        assert metrics.redis_up._value.get() == 1
    finally:
        await log.stop()
        await client.aclose()
        server.cleanup()


async def test_the_memory_queue_is_used_only_when_the_spool_cannot_be_written(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    metrics = Metrics()
    client, log = _log(f"redis://127.0.0.1:{free_port()}/0", blocker / "spool", metrics, 3)
    try:
        for i in range(5):
            await log.append({"id": str(i)})
        assert [e["id"] for e in log.memory] == ["2", "3", "4"]
        assert log.dropped == 2
        assert metrics.outcomes_dropped._value.get() == 2
        problems = await log.problems()
        assert "unusable" in problems["outcome_spool"], problems
        assert problems["redis"] == "unreachable"
    finally:
        await log.stop(flush_timeout_s=0.2)
        await client.aclose()


async def test_the_stream_is_trimmed_only_when_maxlen_is_set(
    redis_url: str, tmp_path: Path
) -> None:
    for maxlen, spool in ((None, tmp_path / "a"), (10, tmp_path / "b")):
        client, log = _log(redis_url, spool, Metrics(), maxlen=maxlen)
        await client.delete(STREAM)
        await asyncio.gather(*(log.append({"id": str(i)}) for i in range(600)))
        await log.flush()
        length = await client.xlen(STREAM)
        if maxlen is None:
            assert length == 600
        else:
            assert length < 600, "an approximate MAXLEN drops the oldest whole nodes"
        await log.stop()
        await client.aclose()


@pytest.mark.full
async def test_a_full_redis_keeps_outcomes_in_the_spool_and_readiness_says_why(
    tmp_path: Path,
) -> None:
    server = EmbeddedRedis(maxmemory_mb=2).start()
    cfg = load_config(env={})
    cfg.redis.url = server.url
    cfg.redis.spool_dir = str(tmp_path)
    cfg.redis.reconnect_backoff_max_ms = 100
    rt = build_runtime(cfg, backend=FakeBackend.canned(["Answer: 42"]))
    assert rt.outcomes is not None
    filler = sync_redis.Redis.from_url(server.url)
    try:
        written = 0
        try:
            while written < 100_000:
                filler.set(f"filler:{written}", "x" * 1024)
                written += 1
        except sync_redis.ResponseError as exc:
            assert "maxmemory" in str(exc)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=rt.http_app), base_url="http://t"
        ) as client:
            chat = {"messages": [{"role": "user", "content": "What is 6*7?"}]}
            r = await client.post("/v1/chat/completions", json=chat)
            assert r.status_code == 200, r.text
            await _until(lambda: rt.metrics.redis_full._value.get() == 1)
            assert rt.outcomes.pending == 1
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert "full" in ready.json()["problems"]["redis"], ready.json()
            filler.delete(*[f"filler:{i}" for i in range(written)])
            await _until(lambda: rt.outcomes is not None and rt.outcomes.pending == 0)
            ids = [f[b"id"].decode() for _, f in filler.xrange(cfg.redis.outcomes_stream)]
            assert ids == [r.json()["id"]]
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.json()
            assert rt.metrics.redis_full._value.get() == 0
    finally:
        await rt.outcomes.stop()
        filler.close()
        server.cleanup()
