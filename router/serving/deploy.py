"""The router as a declarative Serve config, deployed the way ``serve deploy`` and KubeRay do.

``serve_config`` is what ``acr serve`` deploys, and what the Helm chart's ``serveConfigV2``
renders: one application built by ``router.serving.app:app_builder`` from the config inline
in its args, less the live sections, which go to the ingress as its ``user_config``. Serve
then tells the two kinds of change apart by itself: a new ``user_config`` reaches every
running ingress replica through ``reconfigure`` (nothing restarts), new args rebuild the
application as a rolling update.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from router.config import AppConfig
from router.live_config import base_sections, live_sections

#: the import path every deployment of the router builds from
IMPORT_PATH = "router.serving.app:app_builder"
#: the ingress deployment, which takes the live sections as its ``user_config``
INGRESS = "RouterIngress"


def serve_config(
    config: AppConfig, *, name: str, live: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The Serve deploy config (``ServeDeploySchema``'s shape) of the application ``name``
    serving ``config``; ``live`` replaces its live sections as given (unvalidated: the
    ingress validates them and refuses a bad one while the running one serves)."""
    user_config = dict(live) if live is not None else live_sections(config)
    return {
        "http_options": {"host": config.server.host, "port": config.server.port},
        "applications": [
            {
                "name": name,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "args": {"config": base_sections(config)},
                "deployments": [{"name": INGRESS, "user_config": user_config}],
            }
        ],
    }


def deploy(config: dict[str, Any]) -> None:
    """Hand ``config`` (``serve_config``'s) to the running Serve controller, as
    ``serve deploy`` does; returns at once (``wait_running`` waits)."""
    # The same call `serve run config.yaml` makes: Ray has no public Python API that
    # deploys a declarative config, and only a declarative deploy updates in place.
    client = _get_global_client()
    if client is None:
        raise RuntimeError("Serve is not running: call serve.start() first")
    client.deploy_apps(ServeDeploySchema(**config))


class DeployFailed(RuntimeError):
    """Serve could not build or start the application; the message is Serve's."""


def wait_running(name: str, timeout_s: float = 600.0, since: float | None = None) -> None:
    """Block until the application ``name`` is RUNNING; raises ``DeployFailed`` with Serve's
    message when it fails, ``TimeoutError`` past ``timeout_s``. ``since`` (a
    ``time.time()``) ignores a status Serve reported before that deploy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(name)
        fresh = app is not None and (since is None or app.last_deployed_time_s >= since)
        if app is not None and fresh:
            if app.status == "RUNNING":
                return
            if app.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise DeployFailed(f"application {name!r} {app.status}: {app.message}")
        time.sleep(0.25)
    raise TimeoutError(f"application {name!r} not RUNNING after {timeout_s:.0f} s")
