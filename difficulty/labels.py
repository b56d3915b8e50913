"""Labelling prompts for the router: the probe plus the outcome of every arm, per prompt.

For each prompt it runs the greedy probe (with logprobs) and one pool of ``samples``
temperature samples, checks every completion with the exact verifier, and derives the
sampling arms' outcomes from the pool exactly as the strategies spend compute when an exact
verifier is present:

- ``self_consistency@N`` (batches of ``b``, stops at the first verified sample): correct iff
  one of the first N samples verifies; tokens = all samples of the batches drawn until then.
- ``best_of_n@N`` (one batch of N): correct iff one of N verifies; tokens = all N samples.
- ``single_pass``: the greedy probe (it is the same request), if it finished.

Arms that are not "draw samples" (bounded reasoning, beam search) are run for real by an
injected ``run_arm`` (built on the strategy registry by the caller). Latency of pool-derived
arms comes from timing calls at each batch size once (``time_batches``); online statistics
refine it.
Output: one JSON line per prompt (``difficulty.train.rows_from_item`` reads it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from backends.base import Backend, ChatMessage, Completion, GenerationRequest, GenerationResult
from backends.verifiers.base import Verifier
from difficulty.model import ArmSpec, default_arms
from difficulty.probe import has_answer, summarise

VerifierFor = Callable[[str], Verifier | None]


@dataclass
class LabelItem:
    """A prompt to label: its text, known answer (if any) and task kind."""

    text: str
    reference: str | None = None
    kind: str | None = None
    source: str = ""


def messages_for(text: str) -> list[ChatMessage]:
    """The chat the strategies send for a benchmark prompt (one user turn)."""
    return [ChatMessage(role="user", content=text)]


async def generate_many(
    backend: Backend, requests: list[GenerationRequest]
) -> list[GenerationResult]:
    """All requests, batched into shared forward passes when the backend can do that."""
    batch = getattr(backend, "generate_batch_sync", None)
    if callable(batch):
        out = await asyncio.to_thread(batch, requests)
        return list(out)
    return list(await asyncio.gather(*(backend.generate(r) for r in requests)))


async def time_batches(
    backend: Backend, text: str, sizes: Sequence[int], max_tokens: int, repeats: int = 2
) -> dict[int, float]:
    """Mean wall ms of one sampling call of each batch size (latency of pool-derived arms)."""
    out: dict[int, float] = {}
    for n in sizes:
        walls = []
        for r in range(repeats):
            req = GenerationRequest(
                messages=messages_for(text), n=n, max_tokens=max_tokens, temperature=0.8, seed=r
            )
            t0 = time.perf_counter()
            await backend.generate(req)
            walls.append((time.perf_counter() - t0) * 1000)
        out[n] = sum(walls) / len(walls)
    return out


def _verify(verifier: Verifier | None, item: LabelItem, text: str) -> bool | None:
    if verifier is None:
        return None
    try:
        return verifier.score(item.text, text, item.reference) >= 0.5
    except Exception:  # noqa: BLE001 - a candidate the checker cannot parse is wrong
        return False


def pool_arms(
    samples: list[tuple[bool, int]],
    arms: Sequence[ArmSpec],
    batch_ms: dict[int, float],
) -> dict[str, dict[str, Any]]:
    """Outcomes of the sampling arms from one pool of (verified, tokens) samples, in order."""
    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        if arm.strategy not in ("self_consistency", "best_of_n"):
            continue
        n = int(arm.budget.get("samples", 16))
        b = int(arm.budget.get("batch_size", n))
        if n > len(samples):
            continue
        pool = samples[:n]
        first = next((i for i, (ok, _) in enumerate(pool) if ok), None)
        if arm.strategy == "self_consistency":
            used = n if first is None else min(n, (first // b + 1) * b)
        else:
            used = n
        batches = -(-used // b)
        out[arm.name] = {
            "correct": first is not None,
            "tokens": sum(t for _, t in pool[:used]),
            "latency_ms": round(batches * batch_ms.get(b, batch_ms.get(max(batch_ms), 0.0)), 2),
            "samples": used,
        }
    return out


async def label_chunk(
    backend: Backend,
    items: list[LabelItem],
    verifier_for: VerifierFor,
    *,
    probe_tokens: int,
    samples: int,
    sample_max_tokens: int,
    temperature: float,
    seed: int,
    arms: Sequence[ArmSpec],
    batch_ms: dict[int, float],
) -> list[dict[str, Any]]:
    """Probe + sample pool for a chunk of prompts in shared batches; one record per prompt."""
    reqs: list[GenerationRequest] = []
    for i, it in enumerate(items):
        msgs = messages_for(it.text)
        reqs.append(
            GenerationRequest(
                messages=msgs, n=1, max_tokens=probe_tokens, temperature=0.0, logprobs=True
            )
        )
        reqs.append(
            GenerationRequest(
                messages=msgs,
                n=samples,
                max_tokens=sample_max_tokens,
                temperature=temperature,
                seed=seed + i,
            )
        )
    results = await generate_many(backend, reqs)
    records = []
    for i, it in enumerate(items):
        verifier = verifier_for(it.text)
        probe_c: Completion = results[2 * i].completions[0]
        pool: list[Completion] = results[2 * i + 1].completions
        mean_ent, max_ent, nll = summarise(probe_c)
        probe_ok = _verify(verifier, it, probe_c.text)
        exact = verifier is not None and verifier.exact
        probe = {
            "tokens": probe_c.tokens,
            "finish_reason": probe_c.finish_reason,
            "mean_entropy": mean_ent,
            "max_entropy": max_ent,
            "mean_nll": nll,
            "has_answer": has_answer(probe_c.text),
            "verifier_score": (1.0 if probe_ok else 0.0) if exact else None,
        }
        verdicts = [(bool(_verify(verifier, it, c.text)), c.tokens) for c in pool]
        arm_out = pool_arms(verdicts, arms, batch_ms)
        if probe_c.finish_reason == "stop":
            arm_out["single_pass"] = {
                "correct": bool(probe_ok),
                "tokens": probe_c.tokens,
                "latency_ms": round(batch_ms.get(1, 0.0), 2),
            }
        records.append(
            {
                "text": it.text,
                "kind": it.kind,
                "reference": it.reference,
                "source": it.source,
                "probe": probe,
                "probe_text": probe_c.text,
                "pass_rate": round(sum(v for v, _ in verdicts) / max(1, len(verdicts)), 4),
                "pool": [[int(v), t] for v, t in verdicts],
                "arms": arm_out,
            }
        )
    return records


ArmRunner = Callable[[LabelItem, ArmSpec], Awaitable[tuple[bool, int, float]]]
"""Runs one arm on one prompt for real: returns (correct, tokens, latency ms)."""


async def run_real_arms(
    records: list[dict[str, Any]],
    items: list[LabelItem],
    arms: Sequence[ArmSpec],
    run_arm: ArmRunner,
    concurrency: int = 8,
) -> None:
    """Run the arms a pool cannot stand for (bounded reasoning, beam search) for real.

    ``run_arm`` is injected (``policies.labelling.strategy_runner`` builds one on the strategy
    registry) because ``difficulty`` must not import ``policies``.
    """
    sem = asyncio.Semaphore(concurrency)

    async def one(rec: dict[str, Any], it: LabelItem, arm: ArmSpec) -> None:
        async with sem:
            ok, tokens, wall_ms = await run_arm(it, arm)
            rec["arms"][arm.name] = {
                "correct": bool(ok),
                "tokens": int(tokens),
                "latency_ms": round(wall_ms, 2),
            }

    jobs = [
        one(rec, it, arm)
        for rec, it in zip(records, items, strict=True)
        for arm in arms
        if arm.strategy not in ("self_consistency", "best_of_n", "single_pass")
    ]
    await asyncio.gather(*jobs)


async def label_items(
    backend: Backend,
    items: list[LabelItem],
    verifier_for: VerifierFor,
    *,
    probe_tokens: int = 64,
    samples: int = 32,
    sample_max_tokens: int = 96,
    temperature: float = 0.8,
    seed: int = 0,
    chunk: int = 16,
    arms: Sequence[ArmSpec] | None = None,
    run_arm: ArmRunner | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Label ``items``; returns one record per item (see the module docstring)."""
    arms = list(arms or default_arms())
    sizes = sorted(
        {1} | {int(a.budget.get("batch_size", a.budget.get("samples", 1))) for a in arms}
    )
    batch_ms = await time_batches(backend, items[0].text, sizes, sample_max_tokens)
    records: list[dict[str, Any]] = []
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        recs = await label_chunk(
            backend,
            part,
            verifier_for,
            probe_tokens=probe_tokens,
            samples=samples,
            sample_max_tokens=sample_max_tokens,
            temperature=temperature,
            seed=seed + start * 1000,
            arms=arms,
            batch_ms=batch_ms,
        )
        if run_arm is not None:
            await run_real_arms(recs, part, arms, run_arm)
        records.extend(recs)
        if progress is not None:
            progress(len(records), len(items))
    for r in records:
        r["batch_ms"] = batch_ms
    return records
