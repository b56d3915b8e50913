"""The decision cache: a prompt's difficulty estimate kept for a while, shared by replicas,
so that a repeated prompt is decided without probing it again."""

from __future__ import annotations

import hashlib

from difficulty.estimate import DifficultyEstimate
from policies.store import PolicyStore


def prompt_hash(text: str) -> str:
    """Normalised prompt hash (case and whitespace folded): the cache key, and the id of a
    prompt in logs (no prompt text is stored)."""
    norm = " ".join(text.lower().split())
    return hashlib.sha256(norm.encode("utf-8", "replace")).hexdigest()[:32]


class DecisionCache:
    """Estimates by prompt hash in ``store`` for ``ttl_s`` seconds (0 turns it off)."""

    def __init__(self, store: PolicyStore, ttl_s: int) -> None:
        self.store = store
        self.ttl_s = ttl_s

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
        cached = await self.store.cache_get(key)
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
            await self.store.cache_put(key, {"estimate": est.model_dump(), "arm": arm}, self.ttl_s)
