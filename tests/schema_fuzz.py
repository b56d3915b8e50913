"""Schema-driven fuzzing of a running service: schemathesis generates requests from the
service's own OpenAPI document (schema-valid ones and schema-violating ones) in worker
processes, a thread pool sends them while more are generated, and every response is tallied
by endpoint, generation mode and status.

``fuzz(base_url, plan)`` returns a ``FuzzReport``; ``FuzzReport.summary()`` is the table a
test prints. Used by ``tests/test_fuzz_api.py`` against the real deployment.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.generation.modes import GenerationMode

#: (method, path, mode) -> how many requests to generate for it
Plan = Mapping[tuple[str, str, str], int]
#: one request as ``requests.Session.request`` keyword arguments
Request = dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """One request's result: status (0 when the client could not send it) and, for an
    error, whether the body was OpenAI's envelope and its code."""

    method: str
    path: str
    mode: str
    status: int
    envelope: bool = True
    code: str | None = None
    body: str = ""


@dataclass
class FuzzReport:
    """Every outcome of a run and how long it took."""

    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    generation_seconds: float = 0.0

    @property
    def sent(self) -> list[Outcome]:
        """The outcomes the service answered (requests the client could send)."""
        return [o for o in self.outcomes if o.status]

    def count(self, path: str | None = None, mode: str | None = None) -> Counter[str]:
        """Responses by status class (2xx, 4xx, 5xx) for ``path`` and ``mode`` (None: all)."""
        return Counter(
            f"{o.status // 100}xx"
            for o in self.sent
            if (path is None or o.path == path) and (mode is None or o.mode == mode)
        )

    def summary(self) -> str:
        """A table: requests per endpoint and mode, by status; error codes of valid data."""
        by_key: dict[tuple[str, str, str], Counter[int]] = {}
        for o in self.outcomes:
            by_key.setdefault((o.method.upper(), o.path, o.mode), Counter())[o.status] += 1
        lines = [
            f"{len(self.sent)} responses ({len(self.outcomes) - len(self.sent)} unsendable) in "
            f"{self.seconds:.1f} s ({len(self.sent) / max(self.seconds, 1e-9):.1f}/s; "
            f"generation {self.generation_seconds:.1f} s)",
            f"{'endpoint':34} {'mode':9} {'total':>6}  statuses",
        ]
        for (method, path, mode), statuses in sorted(by_key.items()):
            shown = " ".join(f"{s or 'unsent'}:{n}" for s, n in sorted(statuses.items()))
            total = sum(statuses.values())
            lines.append(f"{method + ' ' + path:34} {mode:9} {total:6d}  {shown}")
        codes = Counter(
            (o.path, o.code) for o in self.sent if o.mode == "positive" and o.status >= 400
        )
        if codes:
            lines.append("error codes of schema-valid requests:")
            lines += [f"  {p} {c}: {n}" for (p, c), n in codes.most_common()]
        return "\n".join(lines)


def fuzz(
    base_url: str,
    plan: Plan,
    *,
    workers: int = 16,
    generators: int = 2,
    chunk: int = 200,
    timeout_s: float = 60,
) -> FuzzReport:
    """Generate ``plan``'s requests from ``base_url``'s ``/openapi.json`` in ``generators``
    processes (``chunk`` requests per task, each with its own hypothesis seed) and send them
    with ``workers`` threads as the chunks arrive; returns the report."""
    tasks = [
        (method, path, mode, min(chunk, count - start), seed)
        for (method, path, mode), count in plan.items()
        for seed, start in enumerate(range(0, count, chunk))
    ]
    report = FuzzReport()
    local = threading.local()
    sends: list[Future[Outcome]] = []
    started = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")  # never fork a process that runs Ray
    with (
        ProcessPoolExecutor(generators, mp_context=spawn) as makers,
        ThreadPoolExecutor(workers) as senders,
    ):
        made = {makers.submit(generate, base_url, *task): task for task in tasks}
        for done in as_completed(made):
            _, path, mode, _, _ = made[done]
            for kwargs in done.result():
                sends.append(senders.submit(_send, local, kwargs, path, mode, timeout_s))
        report.generation_seconds = time.perf_counter() - started
        report.outcomes = [f.result() for f in sends]
    report.seconds = time.perf_counter() - started
    return report


def generate(
    base_url: str, method: str, path: str, mode: str, count: int, seed: int
) -> list[Request]:
    """``count`` requests (``requests`` keyword arguments) for the operation ``method path``
    of ``base_url``'s OpenAPI document in generation ``mode`` (``positive``: valid by the
    schema, ``negative``: violating it), drawn with hypothesis ``seed``. An operation with
    fewer distinct requests (a GET without parameters has one) has them repeated."""
    spec = httpx.get(base_url + "/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(spec)
    op = next(
        o for o in _operations(schema) if o.method.upper() == method.upper() and o.path == path
    )
    made: list[Request] = []

    @hypothesis.seed(seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(op.as_strategy(generation_mode=GenerationMode(mode)))
    def collect(case: Any) -> None:
        if len(made) < count:
            made.append(case.as_transport_kwargs(base_url=base_url))

    collect()
    return [made[i % len(made)] for i in range(count)] if made else []


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def _send(
    local: threading.local, kwargs: dict[str, Any], path: str, mode: str, timeout_s: float
) -> Outcome:
    session = getattr(local, "session", None)
    if session is None:
        session = local.session = requests.Session()
    method = str(kwargs["method"])
    try:
        resp = session.request(**kwargs, timeout=timeout_s)
    except (requests.exceptions.InvalidHeader, ValueError, UnicodeError):
        return Outcome(method, path, mode, 0)  # not sendable (a header requests refuses)
    if resp.status_code < 400:
        return Outcome(method, path, mode, resp.status_code)
    try:
        err = resp.json()["error"]
        envelope = set(err) == {"message", "type", "param", "code"} and bool(err["message"])
        code = err.get("code")
    except (ValueError, KeyError, TypeError):
        envelope, code = False, None
    return Outcome(method, path, mode, resp.status_code, envelope, code, resp.text[:300])
