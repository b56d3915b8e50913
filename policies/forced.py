"""Pricing a strategy the request forces (``acr.strategy`` or ``reasoning_effort``): a pure
function from what is known about the arm to its ``Decision``.

What the client chose is kept unless its own time limit cannot be met even on an idle
backend: the request's deadline (or the latency budget it set itself), never the service's
SLO, and never a load prediction (strategies are anytime: under load they return their
best answer at the deadline instead).
"""

from __future__ import annotations

from difficulty.estimate import DifficultyEstimate
from policies.base import Strategy
from policies.bounds import shrink_budget
from policies.budget import Budget
from policies.decision import Decision, Source
from policies.latency import SLO, Load, predict_latency_ms
from policies.request import RequestSpec
from policies.selector import ArmStats


def forced_decision(
    cls: type[Strategy],
    budget: Budget,
    est: DifficultyEstimate,
    stats: ArmStats | None,
    *,
    spec: RequestSpec,
    source: Source,
    slo: SLO,
    load: Load,
    policy_version: str,
) -> Decision:
    """The decision that runs ``cls`` with ``budget`` (shrunk only to meet the request's own
    time limit); ``stats`` is the arm as the router prices it (None: an arm it does not
    know, priced by its budget alone)."""
    tokens = stats.tokens_mean if stats else float(budget.max_tokens * budget.samples)
    lat_ms = stats.latency_ms_mean if stats else 0.0
    own_limits = [x for x in (spec.deadline_ms, spec.latency_budget_ms) if x]
    limit = min(own_limits) if own_limits else slo.latency_budget_ms
    own = slo.model_copy(update={"latency_budget_ms": limit, "headroom": 1.0})
    idle = load.model_copy(update={"inflight": 0, "queued_tokens": 0.0, "elapsed_ms": 0.0})
    parallel = est.parallel(cls.parallel_samples(budget))
    lat_full = predict_latency_ms(
        tokens, lat_ms, idle, cls.calls(budget), cls.name, tokens / parallel
    )
    kept, cost, _, shrunk = shrink_budget(cls, budget, tokens, lat_ms, own, idle, est.parallel)
    parallel = est.parallel(cls.parallel_samples(kept))
    lat = predict_latency_ms(
        cost,
        lat_ms * cost / tokens if tokens else lat_ms,
        load,
        cls.calls(kept),
        cls.name,
        cost / parallel,
    )
    why = "strategy named in request" if source == "explicit" else f"reasoning_effort={spec.effort}"
    if shrunk:
        why += (
            f"; budget shrunk to samples={kept.samples} beam={kept.beam_width} "
            f"because {budget.samples} samples x {budget.beam_width} beams need about "
            f"{lat_full:.0f} ms even on an idle backend, past the request's {limit:.0f} ms"
        )
    return Decision(
        strategy=cls.name,
        arm=cls.arm_name(kept),
        budget=kept,
        reason=why,
        source=source,
        predicted_success=est.probs.get(cls.arm_name(budget)),
        predicted_latency_ms=lat,
        predicted_cost_tokens=cost,
        policy_version=policy_version,
        difficulty_bin=est.bin,
        difficulty=est.difficulty,
        downgraded=shrunk,
        task=est.kind,
        features=est.features,
    )
