"""``acr serve --config FILE`` changed while 4 clients (the official ``openai`` client) keep
asking: SIGHUP applies the file's policy in place (no replica restarts), an invalid file is
refused while the running config serves, and SIGTERM drains: every request started before
it is answered and its outcome reaches the stream.

The tests share one ``acr serve`` process and one load (module fixtures, in file order).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from router.config import load_config
from router.live_config import revision
from router.serving.embedded_redis import EmbeddedRedis
from tests.llama_server import free_port
from tests.load_clients import Load

pytestmark = pytest.mark.full

#: how long the load runs after each change
SETTLE_S = 8.0
FOLLOW_S = 5.0


class Served:
    """The ``acr serve`` process, its config file and the load on it."""

    def __init__(self, tmp: Path, redis_url: str) -> None:
        self.path = tmp / "config.yaml"
        self.port = free_port()
        self.redis_url = redis_url
        self.spool = tmp / "spool"
        self.log = tmp / "serve.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.load = Load(f"{self.url}/v1")
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, **sections: Any) -> str:
        """Write the config file with ``sections``; returns its live revision."""
        config = {
            "server": {"port": self.port, "max_request_timeout_ms": 60_000},
            "redis": {"url": self.redis_url, "spool_dir": str(self.spool)},
            **sections,
        }
        self.path.write_text(yaml.safe_dump(config))
        try:
            return revision(load_config(self.path))
        except ValueError:
            return ""

    def start(self, timeout_s: float = 300.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--config", str(self.path)],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError("acr serve did not get ready")

    def hup(self) -> float:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        return time.time()

    def readyz(self) -> dict[str, Any]:
        r: dict[str, Any] = httpx.get(f"{self.url}/readyz", timeout=10).json()
        return r

    def replica_pids(self) -> dict[str, list[int]]:
        """This process tree's Serve replicas by deployment (from their process titles)."""
        assert self.proc is not None
        rows = subprocess.run(
            ["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        children: dict[int, list[tuple[int, str]]] = {}
        for row in rows:
            pid, ppid, args = row.split(None, 2) if len(row.split(None, 2)) == 3 else (0, 0, "")
            children.setdefault(int(ppid), []).append((int(pid), args))
        found: dict[str, list[int]] = {}
        todo = [self.proc.pid]
        while todo:
            for pid, args in children.get(todo.pop(), []):
                todo.append(pid)
                if "ServeReplica:acr:" in args:
                    # the title ends with the method running now, if any
                    name = args.split("ServeReplica:acr:")[1].split(".")[0].strip()
                    found.setdefault(name, []).append(pid)
        return {k: sorted(v) for k, v in found.items()}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("live-reload")
    server = EmbeddedRedis().start()
    s = Served(tmp, server.url)
    s.write(policy={"lambda_per_1k_tokens": 0.1})
    try:
        s.start()
        s.load.start()
        yield s
    finally:
        s.load.stop()
        s.stop()
        server.cleanup()


def test_sighup_applies_three_policy_changes_under_load_without_restarting_a_replica(
    served: Served,
) -> None:
    time.sleep(3)
    replicas = served.replica_pids()
    assert set(replicas) == {"ModelReplica", "RouterIngress"}, replicas
    follow = []
    for lam in (0.3, 0.6, 0.9):
        rev = served.write(policy={"lambda_per_1k_tokens": lam})
        t = served.hup()
        took = served.load.first_decision_under(rev, t, 30)
        assert took is not None, f"no decision under lambda {lam} ({rev}) within 30 s"
        follow.append(took)
        assert served.readyz()["config"]["revision"] == rev
        time.sleep(SETTLE_S)
    print(f"\nSIGHUP -> first decision under the new policy: {[round(s, 2) for s in follow]} s")
    assert max(follow) <= FOLLOW_S, follow
    assert not served.load.failed(), served.load.failed()[:3]
    assert served.replica_pids() == replicas


def test_an_invalid_file_is_refused_and_the_running_policy_keeps_serving(
    served: Served,
) -> None:
    running = served.readyz()["config"]["revision"]
    served.write(policy={"lambda_per_1k_tokens": 0.5, "bogus_knob": 1})
    t = served.hup()
    deadline = time.time() + 30
    while time.time() < deadline and not served.readyz()["config"]["refused"]:
        time.sleep(0.1)
    ready = served.readyz()
    assert "policy.bogus_knob" in ready["config"]["refused"]["reason"]
    assert ready["config"]["revision"] == running
    assert "acr_config_refused 1.0" in httpx.get(f"{served.url}/metrics", timeout=10).text
    # a bad section that is not live is refused before anything is deployed
    served.write(policy={"lambda_per_1k_tokens": 0.5}, model={"bogus_field": 1})
    served.hup()
    time.sleep(SETTLE_S)
    assert "model.bogus_field" in served.log.read_text()
    assert served.readyz()["config"]["revision"] == running
    after = [a for a in served.load.since(t) if a.ok]
    assert after and {a.revision for a in after} == {running}
    assert not served.load.failed(), served.load.failed()[:3]


def test_sigterm_answers_every_request_started_before_it_and_keeps_their_outcomes(
    served: Served,
) -> None:
    assert served.proc is not None
    load = served.load
    # the load runs at least 60 s in all before the stop
    time.sleep(max(0.0, 62 - (time.time() - min(a.started for a in load.answers))))
    t = time.time()
    served.proc.send_signal(signal.SIGTERM)
    code = served.proc.wait(120)
    answers = load.stop()
    assert code == 0, served.log.read_text()[-2000:]
    assert max(a.ended for a in answers) - min(a.started for a in answers) >= 60
    before = [a for a in answers if a.started < t]
    assert before and all(a.ok for a in before), [a for a in before if not a.ok][:3]
    late = {a.error.split(" - ")[0] for a in answers if a.started >= t and not a.ok}
    # refused with a 503 while draining, then nothing listens
    assert late <= {
        "InternalServerError: Error code: 503",
        "APIConnectionError: Connection error.",
        "NotFoundError: Error code: 404",
    }, late
    ids = {a.response_id for a in answers if a.ok}
    client = redis.Redis.from_url(served.redis_url, decode_responses=True)
    seen = {f.get("id", "") for _, f in client.xrange("acr:outcomes")}
    print(f"\n{len(answers)} requests, {len(ids)} answered; {len(ids - seen)} outcomes missing")
    assert ids <= seen, sorted(ids - seen)[:5]
