"""A real Ray cluster started with ``ray start --head`` (as a KubeRay head pod runs it), and
Serve configs deployed to it with the ``serve deploy`` CLI through its dashboard (as
KubeRay's operator deploys ``serveConfigV2``)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.llama_server import free_port

BIN = Path(sys.executable).parent
#: the environment of the cluster's processes and of the ``serve`` CLI: no token auth (a
#: token in ~/.ray would otherwise turn it on; the dashboard listens on loopback only)
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


class RayCluster:
    """One head node with ``num_cpus`` logical CPUs; ``stop`` ends every process it
    started (found by its own temp dir, so other Ray sessions are left alone)."""

    def __init__(self, log_dir: Path, num_cpus: int = 12) -> None:
        self.log_dir = log_dir
        self.num_cpus = num_cpus
        # short: Ray's socket paths live under it
        self.temp_dir = Path(f"/tmp/acrray-{secrets.token_hex(3)}")
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        #: worker nodes (``add_worker``), each its own ``ray start --block`` process
        self.workers: list[subprocess.Popen[bytes]] = []

    @property
    def dashboard(self) -> str:
        """The dashboard's URL (Serve's REST API)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, timeout_s: float = 120.0) -> RayCluster:
        """Start the head and wait for its dashboard; returns self."""
        # A test cluster's own SIGTERM (at stop) need not drain.
        env = {**ENV, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        log = (self.log_dir / "ray-start.log").open("wb")
        self.proc = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                f"--port={self.gcs_port}",
                f"--dashboard-port={self.dashboard_port}",
                "--dashboard-host=127.0.0.1",
                "--include-dashboard=true",
                f"--num-cpus={self.num_cpus}",
                "--num-gpus=0",
                f"--temp-dir={self.temp_dir}",
                "--disable-usage-stats",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: see {self.log_dir / 'ray-start.log'}")
            try:
                if httpx.get(f"{self.dashboard}/api/version", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError("the Ray dashboard did not come up")

    def add_worker(self, num_cpus: int, drain_timeout_s: float) -> subprocess.Popen[bytes]:
        """Start a worker node (``ray start --block``, as a KubeRay worker pod runs it) that
        drains for up to ``drain_timeout_s`` when it gets SIGTERM; returns its process."""
        env = {**ENV, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": str(drain_timeout_s)}
        log = (self.log_dir / f"ray-worker-{len(self.workers)}.log").open("wb")
        proc = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--block",
                f"--address=127.0.0.1:{self.gcs_port}",
                f"--num-cpus={num_cpus}",
                "--num-gpus=0",
                "--disable-usage-stats",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.workers.append(proc)
        return proc

    def deploy(self, config: dict[str, Any], name: str = "serve.yaml") -> None:
        """``serve deploy`` ``config`` (a Serve deploy config) through the dashboard."""
        path = self.log_dir / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        subprocess.run(
            [str(BIN / "serve"), "deploy", str(path), "-a", self.dashboard],
            check=True,
            capture_output=True,
            timeout=120,
            env=ENV,
        )

    def applications(self) -> dict[str, Any]:
        """Serve's view of its applications (the REST API's ``applications``)."""
        r = httpx.get(f"{self.dashboard}/api/serve/applications/", timeout=10)
        r.raise_for_status()
        apps: dict[str, Any] = r.json().get("applications") or {}
        return apps

    def wait_running(self, app: str, since: float, timeout_s: float = 600.0) -> dict[str, Any]:
        """Wait until ``app``, deployed at or after ``since`` (``time.time()``), is RUNNING;
        returns its status. Raises with Serve's message when it fails."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.applications().get(app) or {}
            if last.get("last_deployed_time_s", 0) >= since - 1:
                if last.get("status") == "RUNNING":
                    return last
                if last.get("status") == "DEPLOY_FAILED":
                    raise RuntimeError(f"{app}: DEPLOY_FAILED: {last.get('message')}")
            time.sleep(1)
        raise TimeoutError(f"{app} not RUNNING: {last.get('status')} {last.get('message')}")

    def stop(self) -> None:
        """Stop the head, the workers and every process of this cluster."""
        for worker in self.workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-KILL", "-f", str(self.temp_dir)], check=False)

    def replica_pids(self, app: str, deployment: str) -> list[int]:
        """The process ids of ``deployment``'s RUNNING replicas, as Serve reports them."""
        deployments = (self.applications().get(app) or {}).get("deployments") or {}
        replicas = (deployments.get(deployment) or {}).get("replicas") or []
        return sorted(r["pid"] for r in replicas if r.get("state") == "RUNNING")
