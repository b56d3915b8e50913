"""A Ray node that gets SIGTERM drains (as a KubeRay pod does when Kubernetes deletes it or
drains its node): Serve moves its replicas to another node while 4 clients keep asking,
and nothing fails or is lost.

Head without CPUs (Serve's controller and the one HTTP proxy), node A with every replica,
node B empty; the chart's Serve config; then SIGTERM to node A's ``ray start --block``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from router.serving.embedded_redis import EmbeddedRedis
from tests.llama_server import free_port
from tests.load_clients import Load
from tests.ray_cluster import RayCluster
from tests.test_live_cluster import APP, chart_config

pytestmark = pytest.mark.full

#: what the chart gives Ray's node drain with the default request deadline (120 s + 10 s)
DRAIN_TIMEOUT_S = 130.0


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[RayCluster, str]]:
    server = EmbeddedRedis().start()
    cluster = RayCluster(tmp_path, num_cpus=0)
    try:
        yield cluster.start(), server.url
    finally:
        cluster.stop()
        server.cleanup()


def test_a_node_sent_sigterm_hands_its_replicas_over_without_a_failed_request(
    two_nodes: tuple[RayCluster, str], tmp_path: Path
) -> None:
    cluster, redis_url = two_nodes
    node_a = cluster.add_worker(6, DRAIN_TIMEOUT_S)
    port = free_port()
    config = chart_config(redis_url, tmp_path / "spool", port)
    config["proxy_location"] = "HeadOnly"  # one proxy: the nodes share this machine's ports
    t = time.time()
    cluster.deploy(config)
    cluster.wait_running(APP, t)
    cluster.add_worker(6, DRAIN_TIMEOUT_S)  # node B, empty until the drain
    before = {d: cluster.replica_pids(APP, d) for d in ("RouterIngress", "ModelReplica")}
    load = Load(f"http://127.0.0.1:{port}/v1").start()
    try:
        time.sleep(8)
        stopped = time.time()
        node_a.send_signal(signal.SIGTERM)
        node_a.wait(DRAIN_TIMEOUT_S + 30)
        drained_s = time.time() - stopped
        time.sleep(8)
    finally:
        answers = load.stop()
    assert drained_s < DRAIN_TIMEOUT_S, "the node was not drained but timed out"
    failed = [a for a in answers if not a.ok]
    assert not failed, failed[:3]
    assert any(a.started > stopped + drained_s for a in answers), "nothing served after"
    for deployment, pids in before.items():
        now = cluster.replica_pids(APP, deployment)
        assert now and not set(now) & set(pids), (deployment, pids, now)
    ids = {a.response_id for a in answers}
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    seen = {f.get("id", "") for _, f in client.xrange("acr:outcomes")}
    around = [a.ended - a.started for a in answers if a.ended >= stopped]
    print(
        f"\nnode drained in {drained_s:.1f} s; {len(answers)} requests, 0 failed; "
        f"slowest around the drain {max(around):.2f} s; {len(ids - seen)} outcomes missing"
    )
    assert ids <= seen, sorted(ids - seen)[:5]
