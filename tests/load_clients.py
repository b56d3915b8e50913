"""Steady load for tests that change a running service: ``clients`` threads, each with the
official ``openai`` client, asking Game of 24 puzzles back to back and keeping every
answer (or failure) with its time, response id and the ``router`` object's revision."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import openai


@dataclass(frozen=True)
class Answer:
    """One request as a client saw it."""

    started: float
    ended: float
    ok: bool
    response_id: str = ""
    revision: str = ""
    reason: str = ""
    error: str = ""


@dataclass
class Load:
    """``clients`` threads asking ``base_url`` until ``stop``; ``answers`` grows as they
    finish."""

    base_url: str
    clients: int = 4
    timeout_s: float = 120.0
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        """Start the clients; returns self."""
        for i in range(self.clients):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> list[Answer]:
        """Let each client finish its request in flight, then return every answer."""
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 10)
        return list(self.answers)

    def since(self, t: float) -> list[Answer]:
        """Answers to requests started at or after ``t`` (``time.time()``)."""
        with self._lock:
            return [a for a in self.answers if a.started >= t]

    def first_decision_under(self, rev: str, since: float, timeout_s: float) -> float | None:
        """Seconds from ``since`` to the first request decided under the config revision
        ``rev`` (its start, or ``since`` for one that waited in a queue meanwhile); None
        when none comes within ``timeout_s``."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            hits = [a.started for a in self.since(since - 120) if a.revision == rev]
            if hits:
                return max(0.0, min(hits) - since)
            time.sleep(0.05)
        return None

    def failed(self) -> list[Answer]:
        """Every request that did not get a 2xx answer."""
        with self._lock:
            return [a for a in self.answers if not a.ok]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        client = openai.OpenAI(
            base_url=self.base_url, api_key="unused", timeout=self.timeout_s, max_retries=0
        )
        while not self._stop.is_set():
            numbers = " ".join(str(rng.randint(1, 13)) for _ in range(4))
            started = time.time()
            try:
                reply: Any = client.chat.completions.create(
                    model="acr-bundled",
                    messages=[{"role": "user", "content": numbers}],
                )
                router = (reply.model_extra or {}).get("router") or {}
                answer = Answer(
                    started,
                    time.time(),
                    True,
                    response_id=reply.id,
                    revision=router.get("config_revision", ""),
                    reason=router.get("reason", ""),
                )
            except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                answer = Answer(started, time.time(), False, error=f"{type(exc).__name__}: {exc}")
            with self._lock:
                self.answers.append(answer)
