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
from typing import Any

import ray
from ray import serve
from rich.console import Console

from router.config import AppConfig, ConfigError, load_config
from router.serving.app import bind_app
from router.serving.embedded_redis import EmbeddedRedis

log = logging.getLogger("acr.serve")

APP_NAME = "acr"


class LocalService:
    """Ray + Serve + (embedded) Redis + the router app, started by ``start()``.

    ``url`` is the HTTP base (``http://host:port``); ``stop()`` tears everything down.
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

    def start(self) -> LocalService:
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
        serve.run(bind_app(self.config), name=APP_NAME, route_prefix="/", blocking=False)
        return self

    def stop(self) -> None:
        """Shut down Serve, Ray and the embedded Redis (if this object started it).

        Serve first: the ingress flushes its outcome spool at its graceful shutdown, while
        the embedded Redis still runs."""
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
    """Start the service, print how to reach it, block until Ctrl-C; returns an exit code."""
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
        "press Ctrl-C to stop"
    )
    stop = threading.Event()

    def _handler(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    try:
        while not stop.is_set():
            time.sleep(0.2)
    finally:
        console.print("shutting down...")
        svc.stop()
    return 0
