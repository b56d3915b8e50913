"""Serving benchmarks through the real HTTP API (``python -m lab bench-serving``).

1. Sampling throughput: ``n=16`` samples of one prompt in one request (one shared prefill,
   one batched decode) against 16 sequential single-sample requests.
2. Overhead: p50/p99 latency of a trivial completion through the ingress against Ray
   Serve's own floor, a ``/healthz`` through the same proxy.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from router.config import load_config
from router.serving.embedded_redis import free_port
from router.serving.local import LocalService


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def _tokens(body: dict[str, Any]) -> int:
    return int(body["usage"]["completion_tokens"])


def sampling_throughput(
    client: httpx.Client, prompt: str, samples: int = 16, max_tokens: int = 64, repeats: int = 3
) -> dict[str, float]:
    """Tokens/s of one ``n=samples`` request vs ``samples`` sequential ``n=1`` requests."""
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "acr": {"strategy": "single_pass"},
    }
    batched_tps, seq_tps = [], []
    for rep in range(repeats):
        t0 = time.perf_counter()
        r = client.post("/v1/completions", json={**body, "n": samples, "seed": rep})
        r.raise_for_status()
        batched_tps.append(_tokens(r.json()) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        total = 0
        for i in range(samples):
            r = client.post("/v1/completions", json={**body, "n": 1, "seed": 1000 * rep + i})
            r.raise_for_status()
            total += _tokens(r.json())
        seq_tps.append(total / (time.perf_counter() - t0))
    b, s = statistics.median(batched_tps), statistics.median(seq_tps)
    return {"n": samples, "batched_tokens_per_s": b, "sequential_tokens_per_s": s, "speedup": b / s}


def overhead_latency(client: httpx.Client, requests: int = 200) -> dict[str, float]:
    """p50/p99 (ms) of ``/healthz``, ``/v1/route`` and a 1-token completion, same proxy."""
    health, trivial, route = [], [], []
    body = {"prompt": "1", "max_tokens": 1, "acr": {"strategy": "single_pass"}}
    route_body = {"messages": [{"role": "user", "content": "4 9 10 13"}]}
    for _ in range(requests):
        t0 = time.perf_counter()
        client.post("/v1/route", json=route_body).raise_for_status()
        route.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        client.get("/healthz").raise_for_status()
        health.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        client.post("/v1/completions", json=body).raise_for_status()
        trivial.append((time.perf_counter() - t0) * 1000)
    return {
        "requests": requests,
        "healthz_p50_ms": _percentile(health, 0.5),
        "healthz_p99_ms": _percentile(health, 0.99),
        "trivial_p50_ms": _percentile(trivial, 0.5),
        "trivial_p99_ms": _percentile(trivial, 0.99),
        "route_p50_ms": _percentile(route, 0.5),
        "route_p99_ms": _percentile(route, 0.99),
    }


def run_serving_benchmark(
    url: str | None, out_json: Path, *, requests: int = 200, samples: int = 16
) -> dict[str, Any]:
    """Run both benchmarks against ``url`` (or a freshly started local service)."""
    svc = None
    if url is None:
        cfg = load_config()
        cfg.server.port = free_port()
        svc = LocalService(cfg).start()
        url = svc.url
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            for _ in range(3):  # warm-up: first calls load kernels and fill caches
                client.post(
                    "/v1/completions",
                    json={"prompt": "4 9 10 13", "max_tokens": 8, "n": 4, "temperature": 0.8},
                )
            result = {
                "url": url,
                "sampling": sampling_throughput(client, "4 9 10 13", samples=samples),
                "overhead": overhead_latency(client, requests=requests),
            }
    finally:
        if svc is not None:
            svc.stop()
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2))
    return result
