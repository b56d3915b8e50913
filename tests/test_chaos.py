"""Chaos on the real stack: Redis killed and restarted mid-load, a model replica killed
mid-load. Every accepted request's outcome must reach the stream; no request may fail
beyond the retry budget."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator

import pytest
import redis

from lab.load_test import run_load
from router.config import AutoscalingConfig, load_config
from router.serving.embedded_redis import EmbeddedRedis, free_port
from router.serving.local import APP_NAME, LocalService

pytestmark = pytest.mark.full

STREAM = "acr:outcomes:chaos"


@pytest.fixture(scope="module")
def aof_redis() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(appendonly=True).start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def service(aof_redis: EmbeddedRedis) -> Iterator[LocalService]:
    cfg = load_config(env={})
    cfg.server.port = free_port()
    cfg.redis.url = aof_redis.url
    cfg.redis.outcomes_stream = STREAM
    cfg.redis.socket_timeout_ms = 300
    cfg.redis.reconnect_backoff_max_ms = 500
    # Two small replicas so that killing one leaves another to retry on.
    cfg.model.num_cpus = 0.5
    cfg.model.autoscaling = AutoscalingConfig(min_replicas=2, max_replicas=2)
    svc = LocalService(cfg).start()
    yield svc
    svc.stop()


def _stream_ids(url: str) -> collections.Counter[str]:
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        return collections.Counter(f["id"] for _, f in r.xrange(STREAM) if f.get("id"))
    finally:
        r.close()


def test_killing_redis_mid_load_loses_no_outcome(
    service: LocalService, aof_redis: EmbeddedRedis
) -> None:
    result = asyncio.run(
        run_load(
            service.url,
            concurrency=3,
            duration_s=8,
            max_requests=300,
            events=[(2.0, aof_redis.kill), (4.5, aof_redis.start)],
        )
    )
    assert result.errors == 0, result.summary()
    assert len(result.ids) > 10
    missing: set[str] = set(result.ids)
    for _ in range(60):  # the spool drains in the background once Redis is back
        counts = _stream_ids(aof_redis.url)
        missing = set(result.ids) - set(counts)
        if not missing:
            break
        time.sleep(0.25)
    assert not missing, f"{len(missing)} of {len(result.ids)} outcomes never reached Redis"
    twice = {i: n for i, n in counts.items() if i in set(result.ids) and n > 1}
    assert not twice, f"outcomes written more than once: {twice}"


def test_killing_a_model_replica_mid_load_fails_no_request(service: LocalService) -> None:
    import ray

    def kill_one_replica() -> None:
        names = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if "ModelReplica" in a["name"] and APP_NAME in a["name"]
        ]
        assert len(names) >= 2, names
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)

    result = asyncio.run(
        run_load(
            service.url,
            concurrency=3,
            duration_s=8,
            max_requests=300,
            events=[(2.0, kill_one_replica)],
        )
    )
    assert result.errors == 0, result.summary()
    assert result.statuses[200] > 10
