"""The Helm chart's Serve config on a real ``ray start`` cluster, deployed with ``serve deploy``
as KubeRay deploys ``serveConfigV2``, changed and disrupted while 4 clients (the official
``openai`` client) keep asking: policy changes, a refused config, replicas stopped, a model
rollout. Every request must be answered and every answered request's outcome must reach
the outcome stream.

The tests share one cluster and one load (module fixtures, in file order): each phase
starts from a RUNNING application and leaves it RUNNING.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from helm_python import HelmError

from router.config import AppConfig
from router.live_config import revision, with_live
from router.serving.embedded_redis import EmbeddedRedis
from tests.load_clients import Load
from tests.ray_cluster import RayCluster
from tests.test_helm_chart import render

pytestmark = pytest.mark.full

APP = "acr"
#: how long each phase keeps the load on after its change (the whole module: over 60 s)
SETTLE_S = float(os.environ.get("ACR_LIVE_SETTLE_S", "12"))
#: a decision must follow a new config within this
FOLLOW_S = 5.0


def chart_config(redis_url: str, spool_dir: Path, port: int, **router: Any) -> dict[str, Any]:
    """The chart's rendered ``serveConfigV2`` with ``router`` values, pointed at this
    machine's Redis, spool directory and a free HTTP port (what differs from a pod)."""
    values = {
        "router": {"server": {"max_request_timeout_ms": 60_000}, **router},
        "serve": {"model": {"minReplicas": 2, "maxReplicas": 2}},
    }
    rayservice = render(values)["RayService"][0]
    config: dict[str, Any] = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    base = config["applications"][0]["args"]["config"]
    base["redis"]["url"] = redis_url
    base["redis"]["spool_dir"] = str(spool_dir)
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    return config


def ingress_user_config(config: dict[str, Any]) -> dict[str, Any]:
    deployments = config["applications"][0]["deployments"]
    uc: dict[str, Any] = next(d for d in deployments if d["name"] == "RouterIngress")["user_config"]
    return uc


def expected_revision(config: dict[str, Any]) -> str:
    base = AppConfig(**config["applications"][0]["args"]["config"])
    return revision(with_live(base, ingress_user_config(config), "test"))


class Deployed:
    """The cluster, its app's URL, the load, and how to deploy a changed chart config."""

    def __init__(self, cluster: RayCluster, redis_url: str, spool: Path, port: int) -> None:
        self.cluster = cluster
        self.redis_url = redis_url
        self.spool = spool
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.load = Load(f"{self.url}/v1")
        self.deploys = 0
        #: how long each `serve deploy` command took (a Python start, then the REST call)
        self.cli_s: list[float] = []

    def config(self, **router: Any) -> dict[str, Any]:
        return chart_config(self.redis_url, self.spool, self.port, **router)

    def deploy(self, config: dict[str, Any]) -> float:
        """``serve deploy`` ``config``; returns when Serve had it (the command returned)."""
        self.deploys += 1
        t = time.time()
        self.cluster.deploy(config, name=f"serve-{self.deploys}.yaml")
        self.cli_s.append(time.time() - t)
        return time.time()

    def readyz(self) -> dict[str, Any]:
        r: dict[str, Any] = httpx.get(f"{self.url}/readyz", timeout=10).json()
        return r


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    from tests.llama_server import free_port

    tmp = tmp_path_factory.mktemp("live-cluster")
    server = EmbeddedRedis().start()
    cluster = RayCluster(tmp)
    try:
        cluster.start()
        d = Deployed(cluster, server.url, tmp / "spool", free_port())
        since = d.deploy(d.config())
        cluster.wait_running(APP, since)
        yield d
        d.load.stop()
    finally:
        cluster.stop()
        server.cleanup()


def settle(load: Load, seconds: float = SETTLE_S) -> None:
    time.sleep(seconds)
    assert load.answers, "no request was answered at all"


def test_the_charts_serve_config_answers_the_official_client(deployed: Deployed) -> None:
    deployed.load.start()
    settle(deployed.load, 6)
    answered = [a for a in deployed.load.answers if a.ok]
    assert answered and not deployed.load.failed(), deployed.load.failed()[:3]
    first = deployed.config()
    assert {a.revision for a in answered} == {expected_revision(first)}


def test_three_policy_changes_under_load_fail_nothing_and_restart_no_model_replica(
    deployed: Deployed,
) -> None:
    load = deployed.load
    models = deployed.cluster.replica_pids(APP, "ModelReplica")
    ingress = deployed.cluster.replica_pids(APP, "RouterIngress")
    assert len(models) == 2 and len(ingress) == 1
    follow, applied = [], []
    for lam in (0.2, 0.6, 0.9):
        config = deployed.config(policy={"lambda_per_1k_tokens": lam})
        rev = expected_revision(config)
        t = deployed.deploy(config)
        while deployed.readyz()["config"]["revision"] != rev and time.time() < t + 30:
            time.sleep(0.05)
        applied.append(time.time() - t)
        took = load.first_decision_under(rev, t, 30)
        assert took is not None, f"no decision under lambda {lam} ({rev}) in 30 s"
        follow.append(took)
        answered = [a for a in load.since(t + took) if a.ok]
        # the revision names the lambda; decisions that weighed utility say it too
        weighed = [a.reason for a in answered if a.revision == rev and "/1k tok" in a.reason]
        assert all(f"{lam}/1k tok" in r for r in weighed), weighed[:3]
        settle(load, 4)
    cli = [round(s, 2) for s in deployed.cli_s[-3:]]
    print(
        f"\nserve deploy took {cli} s; returned -> ingress applied: "
        f"{[round(s, 2) for s in applied]} s; "
        f"-> first decision under it: {[round(s, 2) for s in follow]} s"
    )
    assert max(follow) <= FOLLOW_S, follow
    assert not load.failed(), load.failed()[:3]
    assert deployed.cluster.replica_pids(APP, "ModelReplica") == models
    assert deployed.cluster.replica_pids(APP, "RouterIngress") == ingress


def test_an_invalid_policy_is_refused_and_the_running_one_keeps_serving(
    deployed: Deployed,
) -> None:
    load = deployed.load
    running = deployed.readyz()["config"]["revision"]
    # `helm upgrade` refuses it already (the chart's schema is the config's) ...
    with pytest.raises(HelmError, match="bogus_knob"):
        deployed.config(policy={"lambda_per_1k_tokens": 0.9, "bogus_knob": 3})
    # ... and a Serve config edited by hand reaches the ingress, which refuses it
    config = deployed.config(policy={"lambda_per_1k_tokens": 0.9})
    ingress_user_config(config)["policy"]["bogus_knob"] = 3
    t = deployed.deploy(config)
    deadline = time.time() + 30
    while time.time() < deadline and not deployed.readyz()["config"]["refused"]:
        time.sleep(0.2)
    ready = deployed.readyz()
    assert ready["status"] == "ready"
    assert "policy.bogus_knob" in ready["config"]["refused"]["reason"]
    assert ready["config"]["revision"] == running
    metrics = httpx.get(f"{deployed.url}/metrics", timeout=10).text
    assert "acr_config_refused 1.0" in metrics
    settle(load, 4)
    after = [a for a in load.since(t) if a.ok]
    assert after and {a.revision for a in after} == {running}
    assert not load.failed(), load.failed()[:3]
    # a valid config afterwards applies and clears the refusal
    deployed.deploy(deployed.config(policy={"lambda_per_1k_tokens": 0.9}))
    time.sleep(2)
    assert deployed.readyz()["config"]["refused"] is None


def test_a_model_replica_stopped_with_sigterm_under_load_fails_nothing(
    deployed: Deployed,
) -> None:
    load = deployed.load
    models = deployed.cluster.replica_pids(APP, "ModelReplica")
    assert len(models) == 2
    t = time.time()
    os.kill(models[0], signal.SIGTERM)
    settle(load, 8)
    assert load.since(t), "no request started after the stop"
    assert not load.failed(), load.failed()[:3]
    deployed.cluster.wait_running(APP, 0)


def test_a_scale_down_from_two_model_replicas_to_one_under_load_fails_nothing(
    deployed: Deployed,
) -> None:
    load = deployed.load
    config = deployed.config(policy={"lambda_per_1k_tokens": 0.9})
    for d in config["applications"][0]["deployments"]:
        if d["name"] == "ModelReplica":
            d["num_replicas"] = 1
    t = deployed.deploy(config)
    deadline = time.time() + 120
    while time.time() < deadline and len(deployed.cluster.replica_pids(APP, "ModelReplica")) != 1:
        time.sleep(0.5)
    assert len(deployed.cluster.replica_pids(APP, "ModelReplica")) == 1
    settle(load, 4)
    assert load.since(t) and not load.failed(), load.failed()[:3]


def test_the_ingress_stopped_with_sigterm_answers_what_it_accepted(deployed: Deployed) -> None:
    load = deployed.load
    (ingress,) = deployed.cluster.replica_pids(APP, "RouterIngress")
    t = time.time()
    os.kill(ingress, signal.SIGTERM)
    deadline = time.time() + 120
    while time.time() < deadline and deployed.cluster.replica_pids(APP, "RouterIngress") in (
        [],
        [ingress],
    ):
        time.sleep(0.5)
    settle(load, 6)
    failed = load.failed()
    assert not failed, failed[:3]
    assert any(a.ok for a in load.since(t + 1))


def test_a_model_rollout_under_load_fails_nothing(deployed: Deployed) -> None:
    load = deployed.load
    old = deployed.cluster.replica_pids(APP, "ModelReplica")
    config = deployed.config(
        policy={"lambda_per_1k_tokens": 0.9}, model={"batch_wait_timeout_ms": 7}
    )
    t = deployed.deploy(config)
    deployed.cluster.wait_running(APP, t)
    deadline = time.time() + 180
    while time.time() < deadline and set(deployed.cluster.replica_pids(APP, "ModelReplica")) & set(
        old
    ):
        time.sleep(0.5)
    assert not set(deployed.cluster.replica_pids(APP, "ModelReplica")) & set(old), (
        "old replicas still up"
    )
    settle(load, 6)
    assert not load.failed(), load.failed()[:3]


def test_every_answered_request_has_its_outcome_in_the_stream(deployed: Deployed) -> None:
    answers = deployed.load.stop()
    assert max(a.ended for a in answers) - min(a.started for a in answers) >= 60
    ids = {a.response_id for a in answers if a.ok}
    client = redis.Redis.from_url(deployed.redis_url, decode_responses=True)
    seen: set[str] = set()
    deadline = time.time() + 60
    while time.time() < deadline and not ids <= seen:
        entries = client.xrange("acr:outcomes")
        seen = {f.get("id", "") for _, f in entries}
        time.sleep(1)
    missing = ids - seen
    spans = sorted(a.ended - a.started for a in answers if a.ok)
    print(
        f"\n{len(answers)} requests over {answers[-1].ended - answers[0].started:.0f} s, "
        f"{len(ids)} answered, {len(missing)} outcomes missing; latency p50 "
        f"{spans[len(spans) // 2]:.2f} s, max {spans[-1]:.2f} s"
    )
    assert not missing, sorted(missing)[:5]
