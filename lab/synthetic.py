"""Synthetic item labels with a known difficulty structure, for tests and smoke runs.

Each item has a latent per-sample solve rate ``q``; the probe's entropy rises as ``q`` falls,
greedy succeeds with probability ``q`` (and the exact verifier says so), and sampling arms
succeed as "any of N samples". A router trained on these must find that structure, which is
what the training tests check (AUROC well above 0.5), without any model or Redis.
"""

from __future__ import annotations

import random
from typing import Any

from policies.registry import default_arms

TOKENS_PER_SAMPLE = 50


def synthetic_item(rng: random.Random, i: int) -> dict[str, Any]:
    """One item-label record (the format ``lab.labels`` writes)."""
    if rng.random() < 0.6:
        nums = sorted(rng.randint(1, 13) for _ in range(4))
        text = " ".join(map(str, nums))
        kind = "game24"
        q = min(0.95, max(0.0, rng.betavariate(1.2, 2.0) - 0.05 * sum(n > 10 for n in nums)))
    else:
        k = rng.randint(2, 8)
        expr = str(rng.randint(1, 99))
        for _ in range(k - 1):
            expr += rng.choice("+-*") + str(rng.randint(1, 99))
        text = f"What is {expr}?"
        kind = "arithmetic"
        q = min(0.95, max(0.0, 1.0 - 0.12 * k + rng.gauss(0, 0.08)))
    greedy_ok = rng.random() < min(1.0, q * 1.2)
    ent = max(0.01, 1.2 * (1 - q) + rng.gauss(0, 0.15))
    probe = {
        "tokens": TOKENS_PER_SAMPLE,
        "finish_reason": "stop",
        "mean_entropy": ent,
        "max_entropy": ent * 2.5,
        "mean_nll": ent * 0.7,
        "has_answer": True,
        "verifier_score": 1.0 if greedy_ok else 0.0,
    }
    samples = [rng.random() < q for _ in range(32)]
    arms: dict[str, dict[str, Any]] = {}
    for arm in default_arms():
        if arm.strategy == "single_pass":
            arms[arm.name] = {"correct": greedy_ok, "tokens": TOKENS_PER_SAMPLE, "latency_ms": 60}
        elif arm.strategy == "bounded_reasoning":
            ok = greedy_ok or rng.random() < q * 0.3
            arms[arm.name] = {"correct": ok, "tokens": 90, "latency_ms": 110}
        elif arm.strategy == "beam_search":
            ok = rng.random() < 1 - (1 - q) ** 10
            arms[arm.name] = {"correct": ok, "tokens": 600, "latency_ms": 500}
        else:
            n = int(arm.budget["samples"])
            batch = int(arm.budget["batch_size"])
            first = next((j for j, s in enumerate(samples[:n]) if s), None)
            used = n if first is None else min(n, (first // batch + 1) * batch)
            arms[arm.name] = {
                "correct": first is not None,
                "tokens": used * TOKENS_PER_SAMPLE,
                "latency_ms": 30.0 * used / batch * 3,
            }
    return {"id": i, "text": text, "kind": kind, "q": round(q, 4), "probe": probe, "arms": arms}


def synthetic_items(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` synthetic item-label records, reproducible from ``seed``."""
    rng = random.Random(seed)
    return [synthetic_item(rng, i) for i in range(n)]
