"""The router's HTTP app served by uvicorn in a thread, for tests that talk to it over real
HTTP with the official ``openai`` client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from router.config import AppConfig, load_config
from router.serving.embedded_redis import free_port
from router.serving.runtime import Runtime, build_runtime


def openai_backend_config(base_url: str, name: str = "smollm2", **model: Any) -> AppConfig:
    """The router's config in front of the OpenAI-compatible server at ``base_url``."""
    cfg = load_config(env={})
    cfg.model = cfg.model.model_copy(
        update={"name": name, "kind": "openai", "base_url": base_url, **model}
    )
    return cfg


@contextmanager
def served(rt: Runtime) -> Iterator[str]:
    """``rt``'s API on a free loopback port; yields its ``/v1`` base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(rt.http_app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def router_in_front_of(base_url: str, **model: Any) -> Iterator[str]:
    """A router (its own runtime, no Redis) in front of ``base_url``; yields its URL."""
    rt = build_runtime(openai_backend_config(base_url, **model))
    with served(rt) as url:
        yield url
