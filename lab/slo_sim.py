"""A discrete-event load test of the policy against a shared, batching backend (virtual time).

What it answers: with a latency SLO and offered load at k times what always-search can
sustain, which share of requests meets the SLO under the adaptive policy, and under a fixed
strategy? It replays labelled prompts (``lab.labels`` records: each prompt's probe and
every arm's tokens and correctness), so no model runs and minutes of traffic take seconds.

Backend model: *capped processor sharing*. The backend generates at most ``capacity_tok_s``
tokens/s in total, shared equally among active jobs, and a job can use at most ``width x
single_seq_tok_s`` (a 16-sample batch decodes 16 rows at once, a greedy decode one). This is
how a continuous-batching server behaves to first order, and the two rates are measured on
the real backend (``lab.labels.time_batches``). The policy sees only what it would see
in production: its own ``LoadTracker`` (in flight, tokens owed, learned throughput) driven by
the virtual clock.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from typing import Any

from backends.base import Backend, BackendError, ChatMessage, GenerationRequest, GenerationResult
from difficulty.probe import ProbeSummary
from lab.replay import estimate_item
from policies.adaptive import AdaptivePolicy
from policies.base import StrategyResult
from policies.decision import Decision
from policies.latency import SLO


@dataclass
class _Job:
    rid: int
    remaining: float
    width: int
    phase: str  # "probe" | "arm"
    tokens: float


@dataclass
class _Req:
    rid: int
    item: dict[str, Any]
    arrival: float
    decision: Decision | None = None
    arm: str = ""
    tokens: float = 0.0
    correct: bool = False
    done: float | None = None
    decided_at: float = 0.0


@dataclass
class SimResult:
    """Per-request outcomes and the summary of one simulated run."""

    mode: str
    latencies_ms: list[float] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    arms: dict[str, int] = field(default_factory=dict)

    def summary(self, slo_ms: float) -> dict[str, Any]:
        """SLO attainment, latency percentiles, mean tokens, accuracy, arm mix."""
        lat = sorted(self.latencies_ms)
        n = len(lat)

        def pct(q: float) -> float:
            return round(lat[min(n - 1, int(q * n))], 1) if n else math.nan

        return {
            "mode": self.mode,
            "requests": n,
            "slo_ms": slo_ms,
            "slo_met": round(sum(v <= slo_ms for v in lat) / n, 4) if n else math.nan,
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "mean_tokens": round(sum(self.tokens) / n, 1) if n else math.nan,
            "accuracy": round(sum(self.correct) / n, 4) if n else math.nan,
            "arms": dict(sorted(self.arms.items(), key=lambda kv: -kv[1])),
        }


def width_of(arm: str, item: dict[str, Any]) -> int:
    """Rows an arm decodes in parallel (its batch), from the arm name."""
    if arm.startswith("self_consistency@"):
        n = int(arm.split("@")[1])
        return min(n, 8 if n >= 16 else 4)
    if arm.startswith("best_of_n@"):
        return int(arm.split("@")[1])
    if arm == "beam_search":
        return 8
    return 1


def _rates(jobs: list[_Job], capacity: float, single: float) -> list[float]:
    # Water-filling: equal shares of capacity, no job above its own width x single rate.
    caps = [j.width * single for j in jobs]
    order = sorted(range(len(jobs)), key=lambda i: caps[i])
    rates = [0.0] * len(jobs)
    left, k = capacity, len(jobs)
    for idx in order:
        share = left / k
        rates[idx] = min(caps[idx], share)
        left -= rates[idx]
        k -= 1
    return rates


def _result(tokens: float, correct: bool, wall_ms: float = 0.0) -> StrategyResult:
    return StrategyResult(
        strategy="sim",
        text="",
        answer=None,
        candidates=[],
        prompt_tokens=0,
        visible_tokens=int(tokens),
        hidden_tokens=0,
        verifier_tokens=0,
        wall_ms=wall_ms,
        samples=1,
        stop_reason="budget",
        score=1.0 if correct else 0.0,
    )


class _Sim:
    """State of one simulated run (virtual clock, active jobs, requests)."""

    def __init__(
        self,
        items: list[dict[str, Any]],
        mode: str,
        policy: AdaptivePolicy | None,
        slo_ms: float,
        capacity_tok_s: float,
        single_seq_tok_s: float,
    ) -> None:
        self.items, self.mode, self.policy = items, mode, policy
        self.slo_ms = slo_ms
        self.capacity, self.single = capacity_tok_s, single_seq_tok_s
        self.now = 0.0
        self.jobs: list[_Job] = []
        self.reqs: dict[int, _Req] = {}
        self.out = SimResult(mode=mode)
        if policy is not None:
            policy.clock = lambda: self.now
            policy.tracker.clock = policy.clock
        self.slo = SLO(
            latency_budget_ms=slo_ms,
            cost_cap_tokens=policy.settings.cost_cap_tokens if policy else 1e9,
            lambda_per_1k_tokens=policy.settings.lambda_per_1k_tokens if policy else 0.0,
        )

    def start_arm(self, r: _Req, arm: str, tokens: float) -> None:
        r.arm = arm
        r.tokens += tokens
        self.out.arms[arm] = self.out.arms.get(arm, 0) + 1
        if tokens <= 0:
            r.done = self.now
        else:
            self.jobs.append(_Job(r.rid, tokens, width_of(arm, r.item), "arm", tokens))

    async def finish(self, r: _Req) -> None:
        self.out.latencies_ms.append(((r.done or self.now) - r.arrival) * 1000)
        self.out.tokens.append(r.tokens)
        self.out.correct.append(r.correct)
        if self.policy is not None and r.decision is not None:
            res = _result(r.tokens, r.correct, ((r.done or self.now) - r.decided_at) * 1000)
            await self.policy.record(r.decision, res, None, now=self.now)

    async def decide(self, r: _Req, probe: ProbeSummary | None) -> None:
        pol = self.policy
        assert pol is not None
        it = r.item
        est = estimate_item(pol, it, probe)
        load = pol.tracker.snapshot(self.now, elapsed_ms=(self.now - r.arrival) * 1000)
        d = await pol.choose(est, self.slo, load)
        r.decision = d
        r.decided_at = self.now
        # The probe was admitted as its own job; count only the arm's tokens here.
        arm_tokens = (d.predicted_cost_tokens or 0.0) - d.probe_tokens
        pol.tracker.begin(
            d.decision_id,
            arm_tokens,
            self.slo_ms / 500,
            self.now,
            predicted_ms=d.predicted_latency_ms or 0.0,
            strategy=d.strategy,
        )
        if d.reuse_probe:
            r.correct = bool(probe and (probe.verifier_score or 0) >= 0.5)
            self.start_arm(r, d.arm, 0.0)
            return
        arm = it["arms"].get(d.arm)
        if arm is None:  # an arm without labels for this item: count it as a failure
            arm = {"correct": False, "tokens": d.predicted_cost_tokens or 0.0}
        r.correct = bool(arm["correct"])
        tokens = float(arm["tokens"])
        if d.continue_probe and probe:
            # Single pass continues the cut probe: its first tokens are the probe's.
            tokens = max(0.0, tokens - float(probe.tokens))
        self.start_arm(r, d.arm, tokens)

    async def arrive(self, rid: int, item: dict[str, Any]) -> None:
        r = _Req(rid, item, self.now)
        self.reqs[rid] = r
        if self.mode != "auto":
            arm = item["arms"][self.mode]
            r.correct = bool(arm["correct"])
            self.start_arm(r, self.mode, float(arm["tokens"]))
        else:
            pol = self.policy
            assert pol is not None
            probe = item.get("probe")
            if probe and pol.should_probe(self.slo, pol.tracker.snapshot(self.now)):
                tok = float(probe["tokens"])
                r.tokens += tok
                pol.tracker.begin(f"probe-{rid}", tok, self.slo_ms / 500, self.now)
                self.jobs.append(_Job(rid, tok, 1, "probe", tok))
            else:
                await self.decide(r, None)
        if r.done is not None:
            await self.finish(r)

    async def complete(self, j: _Job) -> None:
        r = self.reqs[j.rid]
        if j.phase == "probe":
            if self.policy is not None:
                self.policy.tracker.end(f"probe-{r.rid}", j.tokens, self.now)
                self.policy.tracker.observe_call((self.now - r.arrival) * 1000)
            await self.decide(r, ProbeSummary.model_validate(r.item["probe"]))
            if r.done is not None:
                await self.finish(r)
        else:
            r.done = self.now
            await self.finish(r)

    def advance(self, t_next: float, rates: list[float]) -> list[_Job]:
        dt = t_next - self.now
        for j, rt in zip(self.jobs, rates, strict=True):
            j.remaining -= rt * dt
        self.now = t_next
        done = [j for j in self.jobs if j.remaining <= 1e-6]
        self.jobs = [j for j in self.jobs if j.remaining > 1e-6]
        return done


async def simulate(
    items: list[dict[str, Any]],
    *,
    mode: str,
    policy: AdaptivePolicy | None,
    rate_per_s: float,
    n_requests: int,
    slo_ms: float,
    capacity_tok_s: float,
    single_seq_tok_s: float,
    seed: int = 0,
) -> SimResult:
    """Run ``n_requests`` Poisson arrivals; ``mode`` is ``auto`` or a fixed arm name.

    Returns per-request latency, tokens (probe included) and correctness; ``summary(slo_ms)``
    gives the SLO attainment.
    """
    rng = random.Random(seed)
    sim = _Sim(items, mode, policy, slo_ms, capacity_tok_s, single_seq_tok_s)
    events: list[tuple[float, int, int]] = []
    t = 0.0
    for i in range(n_requests):
        t += rng.expovariate(rate_per_s)
        events.append((t, i, rng.randrange(len(items))))
    heapq.heapify(events)
    while events or sim.jobs:
        rates = _rates(sim.jobs, capacity_tok_s, single_seq_tok_s) if sim.jobs else []
        t_done = min(
            (sim.now + j.remaining / rt for j, rt in zip(sim.jobs, rates, strict=True) if rt > 0),
            default=math.inf,
        )
        t_arr = events[0][0] if events else math.inf
        for j in sim.advance(min(t_done, t_arr), rates):
            await sim.complete(j)
        if t_arr <= t_done and events:
            _, rid, idx = heapq.heappop(events)
            await sim.arrive(rid, items[idx])
    return sim.out


class ReplayBackend(Backend):
    """Stands in for the model in replays: the probe's outcome comes from the labels."""

    name = "replay"

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Never called by ``simulate``; replays read completions from the labels."""
        raise BackendError("the replay backend does not generate", retryable=False)

    async def render_chat(self, messages: list[ChatMessage]) -> str:
        """The last message's text."""
        return messages[-1].content if messages else ""
