"""Labelling prompts for the router: the probe plus the outcome of every arm, per prompt.

For each prompt it runs the greedy probe (with logprobs) and one pool of ``samples``
temperature samples, grades every completion, and replays the sampling strategies on the
pool exactly as ``policies.self_consistency`` / ``policies.best_of_n`` spend compute with
the verifier serving has for the task (Game of 24: exact; arithmetic: none, so votes):

- ``self_consistency@N`` (batches of ``b``): stops at a batch with an exactly verified
  sample or when the vote is settled (Adaptive-Consistency, P >= 0.95); majority answer.
- ``best_of_n@N`` (one batch of N): the verified sample, else the majority answer.
- ``single_pass`` (and ``bounded_reasoning``, also greedy): the probe, if it finished.

Arms that are not "draw samples" (bounded reasoning, beam search) are run for real by an
injected ``run_arm`` (built on the strategy registry by the caller). Latency of pool-derived
arms comes from timing calls at each batch size once (``time_batches``); online statistics
refine it.
Output: one JSON line per prompt (``difficulty.train.rows_from_item`` reads it).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from backends.base import Backend, ChatMessage, Completion, GenerationRequest, GenerationResult
from backends.verifiers.base import Verifier
from backends.verifiers.numeric import extract_answer, normalize_answer
from difficulty.model import ArmSpec
from difficulty.probe import has_answer, summarise
from policies.registry import default_arms

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
    await backend.generate(  # warm-up: the first call pays one-off costs
        GenerationRequest(messages=messages_for(text), n=1, max_tokens=8, temperature=0.0)
    )
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


@dataclass
class Sample:
    """One pooled sample: graded correct?, tokens, voted answer, exact verdict, mean logprob."""

    ok: bool
    tokens: int
    answer: str | None
    verified: bool | None
    logprob: float

    def row(self) -> list[Any]:
        """Compact JSON form ``[ok, tokens, answer, verified, logprob]``."""
        return [int(self.ok), self.tokens, self.answer, self.verified, round(self.logprob, 4)]

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> Sample:
        """Inverse of ``row`` (older two-field rows: verified = ok)."""
        if len(r) < 5:
            return cls(bool(r[0]), int(r[1]), None, bool(r[0]), 0.0)
        return cls(bool(r[0]), int(r[1]), r[2], r[3], float(r[4]))


def _vote(answers: Sequence[str | None]) -> list[tuple[str, int]]:
    # Same as policies.common.vote; a test keeps them equal.
    return Counter(a for a in answers if a is not None).most_common()


def _leader_ahead(v1: int, v2: int) -> float:
    # Same as policies.common.prob_leader_ahead.
    n = v1 + v2 + 1
    return sum(math.comb(n, k) for k in range(v1 + 1)) / 2**n


def _majority(pool: Sequence[Sample]) -> Sample | None:
    ranking = _vote([s.answer for s in pool])
    if not ranking:
        return max(pool, key=lambda s: s.logprob) if pool else None
    top = [s for s in pool if s.answer == ranking[0][0]]
    return max(top, key=lambda s: s.logprob)


def simulate_self_consistency(
    pool: Sequence[Sample], n: int, batch: int, threshold: float = 0.95
) -> tuple[Sample | None, int]:
    """What ``SelfConsistency`` returns from these samples: (chosen, samples drawn).

    Batches of ``batch`` up to ``n``; stop at a batch with an exactly verified sample, or when
    P(leader ahead) >= ``threshold``; then the verified (best log-prob) or majority sample.
    """
    drawn: list[Sample] = []
    while len(drawn) < n:
        new = list(pool[len(drawn) : len(drawn) + min(batch, n - len(drawn))])
        if not new:
            break
        drawn += new
        if any(s.verified for s in new):
            ok = [s for s in drawn if s.verified]
            return max(ok, key=lambda s: s.logprob), len(drawn)
        ranking = _vote([s.answer for s in drawn])
        if ranking:
            v2 = ranking[1][1] if len(ranking) > 1 else 0
            if _leader_ahead(ranking[0][1], v2) >= threshold:
                break
    return _majority(drawn), len(drawn)


def simulate_best_of_n(pool: Sequence[Sample], n: int, exact: bool) -> Sample | None:
    """What ``BestOfN`` returns: the verified sample with an exact checker, else the majority."""
    drawn = list(pool[:n])
    if exact:
        return max(drawn, key=lambda s: (1.0 if s.verified else 0.0, s.logprob), default=None)
    return _majority(drawn)


def pool_arms(
    samples: Sequence[Sample],
    arms: Sequence[ArmSpec],
    batch_ms: dict[int, float],
    exact: bool = True,
) -> dict[str, dict[str, Any]]:
    """Outcomes of the sampling arms, replaying the strategies on one pool of samples."""
    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        if arm.strategy not in ("self_consistency", "best_of_n"):
            continue
        n = int(arm.budget.get("samples", 16))
        b = int(arm.budget.get("batch_size", n))
        if n > len(samples):
            continue
        if arm.strategy == "self_consistency":
            chosen, used = simulate_self_consistency(samples, n, b)
        else:
            chosen, used = simulate_best_of_n(samples, n, exact), n
        batches = -(-used // b)
        out[arm.name] = {
            "correct": bool(chosen is not None and chosen.ok),
            "tokens": sum(s.tokens for s in samples[:used]),
            "latency_ms": round(batches * batch_ms.get(b, batch_ms.get(max(batch_ms), 0.0)), 2),
            "samples": used,
        }
    return out


def _sample(
    c: Completion, item: LabelItem, grader: Verifier | None, verifier: Verifier | None, exact: bool
) -> Sample:
    lps = c.token_logprobs or []
    return Sample(
        ok=bool(_verify(grader, item, c.text)),
        tokens=c.tokens,
        answer=normalize_answer(extract_answer(c.text)),
        verified=bool(_verify(verifier, item, c.text)) if exact else None,
        logprob=sum(lps) / len(lps) if lps else -math.inf,
    )


async def label_chunk(
    backend: Backend,
    items: list[LabelItem],
    verifier_for: VerifierFor,
    *,
    grader_for: VerifierFor | None = None,
    probe_tokens: int,
    samples: int,
    sample_max_tokens: int,
    temperature: float,
    seed: int,
    arms: Sequence[ArmSpec],
    batch_ms: dict[int, float],
) -> list[dict[str, Any]]:
    """Probe + sample pool for a chunk of prompts in shared batches; one record per prompt.

    ``verifier_for`` is what serving uses (it drives early stops and the probe's verdict);
    ``grader_for`` decides correctness (defaults to the verifier).
    """
    grader_for = grader_for or verifier_for
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
                logprobs=True,
            )
        )
    results = await generate_many(backend, reqs)
    records = []
    for i, it in enumerate(items):
        verifier, grader = verifier_for(it.text), grader_for(it.text)
        exact = verifier is not None and verifier.exact
        probe_c: Completion = results[2 * i].completions[0]
        mean_ent, max_ent, nll = summarise(probe_c)
        probe_ok = bool(_verify(grader, it, probe_c.text))
        probe = {
            "tokens": probe_c.tokens,
            "finish_reason": probe_c.finish_reason,
            "mean_entropy": mean_ent,
            "max_entropy": max_ent,
            "mean_nll": nll,
            "has_answer": has_answer(probe_c.text),
            "verifier_score": (1.0 if _verify(verifier, it, probe_c.text) else 0.0)
            if exact
            else None,
        }
        pool = [_sample(c, it, grader, verifier, exact) for c in results[2 * i + 1].completions]
        arm_out = pool_arms(pool, arms, batch_ms, exact)
        # The probe is single pass's own request when it had single pass's token budget
        # (greedy either way); a shorter probe stands for it only when it finished.
        if probe_c.finish_reason == "stop" or probe_tokens >= sample_max_tokens:
            greedy = {
                "correct": probe_ok,
                "tokens": probe_c.tokens,
                "latency_ms": round(batch_ms.get(1, 0.0), 2),
            }
            arm_out["single_pass"] = dict(greedy)
            # Bounded reasoning is greedy too; when the greedy answer ends within the probe,
            # its trace is the same one, unless a step checker makes it back up and re-sample
            # (exact verifiers: then it is run for real).
            if (
                any(a.strategy == "bounded_reasoning" for a in arms)
                and has_answer(probe_c.text)
                and not exact
            ):
                arm_out["bounded_reasoning"] = dict(greedy)
        records.append(
            {
                "text": it.text,
                "kind": it.kind,
                "reference": it.reference,
                "source": it.source,
                "exact_verifier": exact,
                "probe": probe,
                "probe_text": probe_c.text,
                "pass_rate": round(sum(s.ok for s in pool) / max(1, len(pool)), 4),
                "pool": [s.row() for s in pool],
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

    ``run_arm`` is injected (``lab.router_eval.strategy_runner`` builds one on the strategy
    registry).
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
        and arm.name not in rec["arms"]
    ]
    await asyncio.gather(*jobs)


async def label_items(
    backend: Backend,
    items: list[LabelItem],
    verifier_for: VerifierFor,
    *,
    grader_for: VerifierFor | None = None,
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
            grader_for=grader_for,
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
