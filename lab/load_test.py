"""A bounded loopback load generator (``acr bench-load`` and the chaos tests).

``concurrency`` clients send requests back to back for ``duration_s`` seconds or until
``max_requests`` are sent, whichever comes first; events (kill Redis, kill a replica) can be
scheduled at given offsets. Only loopback URLs are accepted: this is a test tool, never
pointed at someone else's server.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx

LOOPBACK = ("127.0.0.1", "localhost", "::1")

DEFAULT_BODIES: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "4 9 10 13"}], "reasoning_effort": "low"},
    {"messages": [{"role": "user", "content": "What is 12+7-3?"}], "reasoning_effort": "low"},
    {"messages": [{"role": "user", "content": "1 2 3 4"}], "reasoning_effort": "medium"},
]


@dataclass
class LoadResult:
    """What a load run saw: per-status counts, latencies of successes, response ids."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    transport_errors: int = 0
    wall_s: float = 0.0

    @property
    def errors(self) -> int:
        """Responses that were not 200, plus connections that failed outright."""
        return sum(n for s, n in self.statuses.items() if s != 200) + self.transport_errors

    def summary(self) -> dict[str, Any]:
        """Throughput, p50/p99 latency and error counts as a JSON-able dict."""
        lat = sorted(self.latencies_ms)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, round(q * (len(lat) - 1)))] if lat else 0.0

        return {
            "sent": self.sent,
            "ok": self.statuses.get(200, 0),
            "errors": self.errors,
            "statuses": dict(self.statuses),
            "transport_errors": self.transport_errors,
            "wall_s": round(self.wall_s, 2),
            "throughput_rps": round(self.statuses.get(200, 0) / self.wall_s, 2)
            if self.wall_s
            else 0.0,
            "p50_ms": round(pct(0.5), 1),
            "p99_ms": round(pct(0.99), 1),
            "mean_ms": round(statistics.fmean(lat), 1) if lat else 0.0,
        }


Event = tuple[float, Callable[[], Awaitable[None] | None]]


async def run_load(
    url: str,
    *,
    concurrency: int = 4,
    duration_s: float = 10.0,
    max_requests: int = 1000,
    bodies: Sequence[dict[str, Any]] = DEFAULT_BODIES,
    events: Sequence[Event] = (),
    timeout_s: float = 60.0,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """Drive ``url`` (loopback only) and return what happened."""
    host = urlparse(url).hostname or ""
    if host not in LOOPBACK:
        raise ValueError(f"load tests only target loopback addresses, not {host!r}")
    result = LoadResult()
    start = time.monotonic()
    stop_at = start + duration_s

    async def client_loop(client: httpx.AsyncClient, worker: int) -> None:
        i = worker
        while time.monotonic() < stop_at and result.sent < max_requests:
            body = bodies[i % len(bodies)]
            i += concurrency
            result.sent += 1
            t0 = time.perf_counter()
            try:
                resp = await client.post("/v1/chat/completions", json=body)
            except httpx.HTTPError:
                result.transport_errors += 1
                continue
            result.statuses[resp.status_code] += 1
            if resp.status_code == 200:
                result.latencies_ms.append((time.perf_counter() - t0) * 1000)
                result.ids.append(resp.json()["id"])

    async def fire(at: float, action: Callable[[], Awaitable[None] | None]) -> None:
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        out = action()
        if asyncio.iscoroutine(out):
            await out

    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(
        base_url=url, timeout=timeout_s, limits=limits, headers=headers
    ) as client:
        await asyncio.gather(
            *(client_loop(client, w) for w in range(concurrency)),
            *(fire(at, action) for at, action in events),
        )
    result.wall_s = time.monotonic() - start
    return result
