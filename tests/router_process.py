"""The router's HTTP app over the bundled model in a process of its own, for kill tests.

``python -m tests.router_process --port P --redis-url URL --spool-dir DIR --stream S``
loads the model, then (with ``--wait``) waits for a line on stdin before it builds the
runtime, so a test can load a replacement while the process it replaces still runs and
let it open the spool only after that one is killed. It serves with uvicorn (whose
lifespan starts the outcome log, replaying the spool) until it is killed.
"""

from __future__ import annotations

import argparse
import sys

import uvicorn

from router.commands.bench import load_model
from router.config import load_config
from router.serving.runtime import build_runtime


def main() -> None:
    """Parse the arguments, load the model, serve the router on 127.0.0.1."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--spool-dir", required=True)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--wait", action="store_true", help="build the runtime after a stdin line")
    ap.add_argument("--classifier-path", help="router model (a .json one loads in no time)")
    args = ap.parse_args()
    backend = load_model(None, "cpu", 1, name="acr-bundled")
    if args.wait:
        print("loaded", flush=True)
        sys.stdin.readline()
    cfg = load_config(env={})
    cfg.redis.url = args.redis_url
    cfg.redis.spool_dir = args.spool_dir
    cfg.redis.outcomes_stream = args.stream
    cfg.redis.socket_timeout_ms = 300
    cfg.redis.reconnect_backoff_max_ms = 200
    cfg.policy.classifier_path = args.classifier_path
    runtime = build_runtime(cfg, backend=backend)
    uvicorn.run(runtime.http_app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
