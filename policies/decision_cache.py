"""The decision cache: a request's difficulty estimate kept for a while, shared by
replicas, so that a repeated request is decided without probing it again.

The key is everything that changes the estimate: every message with its role (system
prompts included) or the raw prompt, the stop strings, the task profile, and the tenant
(the API key) where keys are in use, so one tenant's entries never decide another's.
"""

from __future__ import annotations

import hashlib
import json

from difficulty.estimate import DifficultyEstimate
from policies.base import Problem
from policies.store import PolicyStore


def prompt_hash(text: str) -> str:
    """Normalised prompt hash (case and whitespace folded): the cache key, and the id of a
    prompt in logs (no prompt text is stored)."""
    norm = " ".join(text.lower().split())
    return hashlib.sha256(norm.encode("utf-8", "replace")).hexdigest()[:32]


def _fold(text: str) -> str:
    # Runs of whitespace do not change what a prompt asks.
    return " ".join(text.split())


def cache_key(problem: Problem, tenant: str) -> str:
    """The decision-cache key of ``problem`` asked by ``tenant`` ("" when keys are off)."""
    messages = [[m.role, _fold(m.text)] for m in problem.messages or []]
    ident = {
        "tenant": tenant,
        "messages": messages,
        "prompt": _fold(problem.prompt) if problem.prompt is not None else None,
        "stop": sorted(problem.stop),
        "task": problem.task.kind,
        "think": problem.think is not None,
    }
    raw = json.dumps(ident, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:40]


class DecisionCache:
    """Estimates by prompt hash in ``store`` for ``ttl_s`` seconds (0 turns it off), under
    ``namespace`` (the live config's revision): an entry made under another revision (its
    probe length, router model or bounds) is never read."""

    def __init__(self, store: PolicyStore, ttl_s: int, namespace: str = "") -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.namespace = namespace

    def _key(self, key: str) -> str:
        return f"{self.namespace}:{key}" if self.namespace else key

    @property
    def enabled(self) -> bool:
        """Whether entries are kept at all."""
        return self.ttl_s > 0

    async def get(self, key: str) -> DifficultyEstimate | None:
        """The cached estimate of ``key``, or None (absent, expired or unreadable).

        A cached estimate carries no probe: nothing was generated for this request, so there
        is no completion to reuse and no probe tokens to count.
        """
        if not self.enabled:
            return None
        cached = await self.store.cache_get(self._key(key))
        if cached is None:
            return None
        try:
            est = DifficultyEstimate.model_validate(cached["estimate"])
        except (KeyError, ValueError, TypeError):
            return None
        return est.model_copy(update={"probe_tokens": 0, "probe_reusable": False})

    async def put(self, key: str, est: DifficultyEstimate, arm: str) -> None:
        """Keep ``est`` (and the arm it led to) for ``ttl_s`` seconds."""
        if self.enabled:
            await self.store.cache_put(
                self._key(key), {"estimate": est.model_dump(), "arm": arm}, self.ttl_s
            )
