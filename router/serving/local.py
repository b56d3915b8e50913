"""Run the whole service on this machine: Ray, Serve, the app and (if needed) Redis.

``acr serve`` calls ``serve_forever``; tests and benchmarks use ``LocalService`` to start
and stop the same stack in-process.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import ray
from ray import serve
from rich.console import Console

from router.config import AppConfig, ConfigError, load_config, parse_config, read_config_file
from router.live_config import base_sections, split
from router.serving.deploy import INGRESS, DeployFailed, deploy, serve_config, wait_running
from router.serving.embedded_redis import EmbeddedRedis

log = logging.getLogger("acr.serve")

APP_NAME = "acr"


class LocalService:
    """Ray + Serve + (embedded) Redis + the router app, started by ``start()``.

    The app is deployed as a declarative Serve config (``router.serving.deploy``), as in a
    cluster, so that ``reload`` applies a file's live sections in place and rebuilds the
    application (a rolling update) only when another section changed. ``url`` is the HTTP
    base (``http://host:port``); ``stop()`` tears everything down.
    """

    def __init__(self, config: AppConfig, *, num_cpus: int | None = None) -> None:
        self.config = config
        self.num_cpus = num_cpus
        self.redis: EmbeddedRedis | None = None

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        host = self.config.server.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return f"http://{shown}:{self.config.server.port}"

    def start(self, timeout_s: float = 600.0) -> LocalService:
        """Start every part; returns self once the app is serving."""
        if not self.config.redis.url:
            self.redis = EmbeddedRedis(
                port=self.config.redis.embedded_port,
                maxmemory_mb=self.config.redis.embedded_maxmemory_mb,
            ).start()
            self.config.redis.url = self.redis.url
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if not ray.is_initialized():
            ray.init(
                num_cpus=self.num_cpus or os.cpu_count() or 2,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
                configure_logging=False,
            )
        serve.start(
            http_options={"host": self.config.server.host, "port": self.config.server.port},
        )
        since = time.time()
        deploy(serve_config(self.config, name=APP_NAME))
        wait_running(APP_NAME, timeout_s, since)
        return self

    def reload(self, path: Path | None) -> str:
        """Read ``path`` again and deploy it: its live sections as the ingress's
        ``user_config`` (the ingress validates and applies them in place, or refuses them
        and keeps serving), the rest as the application's args (unchanged args rebuild
        nothing). Returns what was done, for the log; a file that cannot be read or whose
        other sections are invalid is not deployed (``ConfigError``)."""
        raw, source = read_config_file(path)
        base_raw, live_raw = split(raw)
        base = parse_config(base_raw, source)
        self._keep_serving_as_now(base)
        running = base_sections(self.config)
        changed = sorted(k for k, v in base_sections(base).items() if running.get(k) != v)
        since = time.time()
        deploy(serve_config(base, name=APP_NAME, live=live_raw))
        if changed:
            log.warning("%s: %s changed: rebuilding the application", source, ", ".join(changed))
            wait_running(APP_NAME, since=since)
        self.config = base
        return f"deployed {source}" + (f" (rebuilt: {', '.join(changed)})" if changed else "")

    def _keep_serving_as_now(self, config: AppConfig) -> None:
        """What a reload cannot change in place stays as started: the HTTP address (Serve's
        proxy binds it once) and an embedded Redis."""
        config.server.host = self.config.server.host
        config.server.port = self.config.server.port
        if self.redis is not None:
            config.redis.url = self.redis.url

    def drain(self) -> None:
        """Let the ingress refuse new requests and finish those it has (their model
        replicas still up); logs what it left running past the longest request deadline."""
        status = serve.status().applications.get(APP_NAME)
        if status is None or status.status != "RUNNING":
            return
        handle = serve.get_deployment_handle(INGRESS, APP_NAME)
        timeout_s = self.config.server.max_request_timeout_ms / 1000 + 30
        left = handle.drain.remote().result(timeout_s=timeout_s)
        if left:
            log.warning("%d requests still running after the drain deadline", left)

    def stop(self) -> None:
        """Drain, then shut down Serve, Ray and the embedded Redis (if this object started
        it).

        The ingress drains first (``drain``); then the application is deleted, which Serve
        does gracefully: the ingress flushes its outcome spool while the embedded Redis
        still runs."""
        try:
            self.drain()
            serve.delete(APP_NAME, _blocking=True)
        except Exception:  # noqa: BLE001 - a failed drain must not keep the rest running
            log.exception("draining the application failed; shutting down")
        try:
            serve.shutdown()
        finally:
            if ray.is_initialized():
                ray.shutdown()
            if self.redis is not None:
                self.redis.cleanup()
                self.redis = None


def serve_forever(
    config_path: Path | None, *, host: str | None = None, port: int | None = None
) -> int:
    """Start the service, print how to reach it, block until Ctrl-C or SIGTERM (SIGHUP
    reloads ``config_path``); returns an exit code."""
    console = Console(stderr=True)
    try:
        config = load_config(config_path)
        if host is not None:
            config.server.host = host
        if port is not None:
            config.server.port = port
    except (ConfigError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    svc = LocalService(config)
    with console.status("starting Ray, Redis and the model replicas..."):
        svc.start()
    redis_note = "embedded" if svc.redis is not None else "configured"
    console.print(f"[green]adaptive compute router serving at {svc.url}[/green]")
    console.print(f"model: {config.model.name}; redis ({redis_note}): {config.redis.url}")
    console.print(
        "try:\n  curl -s "
        f"{svc.url}/v1/chat/completions -H 'content-type: application/json' \\\n"
        '    -d \'{"model": "' + config.model.name + '", "messages": '
        '[{"role": "user", "content": "4 9 10 13"}]}\'\n'
        + ("send SIGHUP to reload the config file; " if config_path is not None else "")
        + "press Ctrl-C to stop"
    )
    stop = threading.Event()
    hup = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: hup.set())
    try:
        while not stop.is_set():
            if hup.is_set():
                hup.clear()
                _reload(svc, config_path, console)
            time.sleep(0.2)
    finally:
        console.print("shutting down: draining requests in flight...")
        svc.stop()
    return 0


def _reload(svc: LocalService, path: Path | None, console: Console) -> None:
    """SIGHUP: deploy ``path`` again; a file that cannot be deployed is logged and the
    running config stays."""
    if path is None:
        log.warning("SIGHUP: no config file to reload (started on the defaults)")
        return
    try:
        console.print(f"SIGHUP: {svc.reload(path)}")
    except (ConfigError, ValueError, DeployFailed, TimeoutError) as exc:
        log.error("SIGHUP: config %s refused; the running one stays: %s", path, exc)
        console.print(f"[red]SIGHUP: {path} refused; the running config stays:\n{exc}[/red]")
