"""SLO-aware selection: a pure function from (difficulty, SLO, live stats, load) to a Decision.

``select`` scores every arm (a strategy with a budget) by

    utility = P(success) - lambda * predicted_cost_tokens / 1000

and picks the best arm whose predicted latency fits the latency budget and whose predicted
cost fits the cost cap. P(success) is the router model's item-level probability corrected by
what the shared online posterior of the (task kind, difficulty bin, arm) has learned since
training (posterior mean minus the training prior); with exploration it is a Thompson draw
instead of the mean. Latency is predicted from the arm's observed unloaded latency and,
under load, from the tokens already queued ahead and the backend's live throughput
(processor sharing), so a deep queue makes expensive arms infeasible and the selector
*downgrades* (fewer samples, smaller beams) before the SLO is missed. Nothing here reads a
clock, Redis or a random generator: the caller passes ``now``-derived loads and pre-drawn
Thompson samples, so tests are numbers only.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from policies.base import Budget

Source = Literal["auto", "effort", "explicit", "cache", "fallback"]


class ArmStats(BaseModel):
    """Everything the selector knows about one arm for this request's difficulty bin."""

    model_config = ConfigDict(extra="forbid")

    name: str
    strategy: str
    budget: Budget
    p_model: float = Field(ge=0, le=1, description="Router model's P(success) for this item.")
    prior_mean: float = Field(ge=0, le=1, description="Training success rate of (bin, arm).")
    alpha: float = Field(gt=0, description="Online Beta posterior (prior pseudo-counts incl.).")
    beta: float = Field(gt=0)
    tokens_mean: float = Field(ge=0, description="Expected generated tokens of this arm.")
    latency_ms_mean: float = Field(ge=0, description="Expected latency when unloaded, ms.")
    calls: float = Field(default=1.0, ge=0, description="Expected sequential backend calls.")

    @property
    def posterior_mean(self) -> float:
        """Mean of the shared success posterior."""
        return self.alpha / (self.alpha + self.beta)


class DifficultyEstimate(BaseModel):
    """The difficulty module's verdict on one request (cacheable: no prompt text)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "open"
    difficulty: float = Field(default=0.5, ge=0, le=1)
    bin: int = Field(default=0, ge=0)
    ood: bool = Field(default=False, description="Task kind unseen in training.")
    probs: dict[str, float] = Field(default_factory=dict, description="arm -> P(success)")
    probe_tokens: int = Field(default=0, ge=0, description="Tokens the probe spent.")
    probe_reusable: bool = Field(default=False, description="Probe is a full greedy answer.")
    probe_finished: bool = Field(
        default=False, description="The probe ended by itself (not at its token cap)."
    )
    exact_verifier: bool = Field(
        default=False, description="An exact checker judges this task (samplers stop early)."
    )
    probe_verdict: float | None = Field(
        default=None, description="Exact verifier's score of the probe answer, if any."
    )
    features: dict[str, float] | None = None


class SLO(BaseModel):
    """The request's objective and constraints (config defaults, per-request overrides)."""

    model_config = ConfigDict(extra="forbid")

    latency_budget_ms: float = Field(gt=0)
    cost_cap_tokens: float = Field(gt=0)
    lambda_per_1k_tokens: float = Field(ge=0)
    headroom: float = Field(
        default=0.8, gt=0, le=1, description="Share of the latency budget predictions may use."
    )


class Load(BaseModel):
    """The backend's state when deciding (measured by ``policies.adaptive.LoadTracker``).

    ``queued_tokens`` is the predicted number of tokens in-flight requests still have to
    generate; ``capacity_tokens_per_s`` the backend's aggregate decode throughput when busy;
    ``elapsed_ms`` the time this request already spent (probe, queueing) against its budget.
    """

    model_config = ConfigDict(extra="forbid")

    inflight: int = Field(default=0, ge=0)
    queued_tokens: float = Field(default=0.0, ge=0)
    capacity_tokens_per_s: float = Field(default=2000.0, gt=0)
    elapsed_ms: float = Field(default=0.0, ge=0)
    overhead_ms: float = Field(default=2.0, ge=0, description="Fixed per-request overhead.")
    utilization: float = Field(
        default=0.0, ge=0, description="Offered tokens/s over capacity (recent window)."
    )
    slowdown: float = Field(
        default=1.0, gt=0, description="Observed over predicted latency, learned live."
    )
    slowdown_by_strategy: dict[str, float] = Field(
        default_factory=dict,
        description="The same ratio per strategy, where one has been observed (a strategy "
        "that makes several sequential calls can run slower than one call's model says).",
    )
    call_ms: float = Field(
        default=0.0, ge=0, description="Recent latency of one backend call (probe, pass)."
    )


class Candidate(BaseModel):
    """One arm as scored for the explanation of a decision."""

    arm: str
    p_success: float
    cost_tokens: float
    latency_ms: float
    utility: float
    feasible: bool


class Decision(BaseModel):
    """What the router decided for one request, and why.

    ``public()`` is the ``router`` object of responses and of ``/v1/route``; ``headers()`` the
    ``x-acr-*`` response headers. ``reuse_probe`` tells the service that the probe's greedy
    completion *is* the single-pass answer (do not generate it again); ``continue_probe``
    that single pass should continue the probe, which its token limit cut short.
    """

    model_config = ConfigDict(extra="forbid")

    decision_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:16])
    strategy: str
    arm: str
    budget: Budget
    reason: str
    source: Source = "auto"
    predicted_success: float | None = None
    predicted_latency_ms: float | None = None
    predicted_cost_tokens: float | None = None
    policy_version: str = ""
    difficulty_bin: int | None = None
    difficulty: float | None = None
    explored: bool = False
    probe_tokens: int = 0
    reuse_probe: bool = False
    continue_probe: bool = False
    downgraded: bool = False
    candidates: list[Candidate] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """The JSON ``router`` object of responses and of ``/v1/route``."""
        return {
            "strategy": self.strategy,
            "arm": self.arm,
            "budget": self.budget.model_dump(),
            "reason": self.reason,
            "source": self.source,
            "predicted_success": _round(self.predicted_success),
            "predicted_latency_ms": _round(self.predicted_latency_ms, 1),
            "predicted_cost_tokens": _round(self.predicted_cost_tokens, 1),
            "policy_version": self.policy_version,
            "difficulty_bin": self.difficulty_bin,
            "difficulty": _round(self.difficulty),
            "explored": self.explored,
            "downgraded": self.downgraded,
            "probe_tokens": self.probe_tokens,
            "reuse_probe": self.reuse_probe,
            "continue_probe": self.continue_probe,
            "candidates": [c.model_dump() for c in self.candidates],
        }

    def headers(self) -> dict[str, str]:
        """``x-acr-*`` response headers (ASCII only, short)."""
        h = {
            "x-acr-strategy": self.strategy,
            "x-acr-arm": self.arm,
            "x-acr-budget-tokens": str(self.budget.max_tokens),
            "x-acr-budget-samples": str(self.budget.samples),
            "x-acr-reason": self.reason.encode("ascii", "replace").decode()[:200],
            "x-acr-source": self.source,
            "x-acr-policy-version": self.policy_version,
            "x-acr-explored": "1" if self.explored else "0",
            "x-acr-probe-tokens": str(self.probe_tokens),
        }
        if self.difficulty_bin is not None:
            h["x-acr-difficulty-bin"] = str(self.difficulty_bin)
        if self.predicted_success is not None:
            h["x-acr-predicted-success"] = f"{self.predicted_success:.3f}"
        if self.predicted_latency_ms is not None:
            h["x-acr-predicted-latency-ms"] = f"{self.predicted_latency_ms:.0f}"
        if self.predicted_cost_tokens is not None:
            h["x-acr-predicted-cost-tokens"] = f"{self.predicted_cost_tokens:.0f}"
        return h


def _round(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(float(v), nd)


def predict_latency_ms(
    cost_tokens: float,
    unloaded_ms: float,
    load: Load,
    calls: float = 1.0,
    strategy: str | None = None,
) -> float:
    """Latency of an arm that generates ``cost_tokens`` under ``load``, in ms.

    Processor sharing: a new job of size c finishes after the backend has generated c tokens
    for it plus up to c tokens for each job ahead, i.e. (min(queued, inflight * c) + c) / rate;
    work that arrives meanwhile shares the backend too, which divides the rate by (1 - rho)
    for utilisation rho (capped at 0.9). Never below the arm's measured unloaded latency. The
    live ``slowdown`` (observed / predicted latency of recent requests) corrects what this
    model misses, e.g. a batching backend's head-of-line waits; ``strategy``'s own ratio is
    used once one was observed (``Load.slowdown_by_strategy``). And an arm that makes ``calls``
    sequential backend calls takes at least ``calls`` times the latency one call has right
    now (``call_ms``, measured on the probe and single calls): a busy batching server makes
    every call wait for a decode cycle, however few tokens it needs.
    """
    if cost_tokens <= 0:
        return 0.0
    shared = min(load.queued_tokens, load.inflight * cost_tokens) + cost_tokens
    free = 1.0 - min(load.utilization, 0.9)
    loaded_ms = 1000.0 * shared / (load.capacity_tokens_per_s * free)
    per_call = calls * load.call_ms
    slowdown = load.slowdown_by_strategy.get(strategy or "", load.slowdown)
    return load.overhead_ms + max(max(unloaded_ms, loaded_ms) * slowdown, per_call)


def thompson_draws(
    arms: Sequence[ArmStats], rng: random.Random, exploration_rate: float
) -> dict[str, float] | None:
    """Posterior draws for every arm with probability ``exploration_rate``, else None.

    The gate bounds the share of requests whose choice may differ from the greedy one, which
    is what ``policy.exploration_rate`` promises.
    """
    if exploration_rate <= 0 or rng.random() >= exploration_rate:
        return None
    return {a.name: rng.betavariate(a.alpha, a.beta) for a in arms}


def _p_success(arm: ArmStats, est: DifficultyEstimate, draw: float | None) -> float:
    if arm.strategy == "single_pass" and est.probe_reusable and est.probe_verdict is not None:
        # Greedy decoding is deterministic: an exact verdict on the probe is the verdict on
        # single pass.
        return 1.0 if est.probe_verdict >= 0.5 else 0.0
    online = (draw if draw is not None else arm.posterior_mean) - arm.prior_mean
    return min(1.0, max(0.0, arm.p_model + online))


def continues_probe(strategy: str, budget: Budget, est: DifficultyEstimate) -> bool:
    """Whether ``strategy`` would continue a probe cut by its token limit: greedy single
    pass, whose first tokens are exactly the probe's."""
    return (
        strategy == "single_pass"
        and not est.probe_reusable
        and not est.probe_finished
        and est.probe_tokens > 0
        and budget.temperature == 0
        and budget.max_tokens > est.probe_tokens
    )


def _cost(arm: ArmStats, est: DifficultyEstimate) -> float:
    if arm.strategy == "single_pass" and est.probe_reusable:
        return 0.0  # the probe already produced this answer
    if continues_probe(arm.strategy, arm.budget, est):
        return max(1.0, arm.tokens_mean - est.probe_tokens)  # only the rest is generated
    return arm.tokens_mean


def score_arms(
    est: DifficultyEstimate,
    arms: Sequence[ArmStats],
    slo: SLO,
    load: Load,
    draws: Mapping[str, float] | None = None,
) -> list[Candidate]:
    """Every arm's predicted success, cost, latency, utility and feasibility (pure)."""
    # Predictions are means; keep headroom so that their spread stays inside the SLO.
    remaining_ms = (slo.latency_budget_ms - load.elapsed_ms) * slo.headroom
    out: list[Candidate] = []
    for arm in arms:
        p = _p_success(arm, est, None if draws is None else draws.get(arm.name))
        cost = _cost(arm, est)
        latency = (
            0.0
            if cost == 0 and arm.strategy == "single_pass"
            else predict_latency_ms(cost, arm.latency_ms_mean, load, arm.calls, arm.strategy)
        )
        feasible = latency <= remaining_ms and cost + est.probe_tokens <= slo.cost_cap_tokens
        utility = p - slo.lambda_per_1k_tokens * cost / 1000.0
        out.append(
            # Internal values, already typed: skip validation on the hot path.
            Candidate.model_construct(
                arm=arm.name,
                p_success=round(p, 4),
                cost_tokens=round(cost, 1),
                latency_ms=round(latency, 1),
                utility=round(utility, 5),
                feasible=feasible,
            )
        )
    return out


def _best(cands: Sequence[Candidate]) -> Candidate:
    # Ties go to the cheaper arm: equal utility never justifies more compute.
    return max(cands, key=lambda c: (c.utility, -c.cost_tokens))


def select(
    est: DifficultyEstimate,
    arms: Sequence[ArmStats],
    slo: SLO,
    load: Load,
    *,
    draws: Mapping[str, float] | None = None,
    policy_version: str = "",
) -> Decision:
    """The arm maximising P(success) - lambda * cost subject to the latency SLO and cost cap.

    Returns a ``Decision`` with the prediction and an explanation. When no arm is feasible
    it takes the fastest arm within the cost cap (or the fastest overall) and says so
    (``downgraded``). ``draws`` are Thompson samples (``thompson_draws``); the decision is
    ``explored`` when they changed the choice.
    """
    if not arms:
        raise ValueError("select needs at least one arm")
    by_name = {a.name: a for a in arms}
    cands = score_arms(est, arms, slo, load, draws)
    greedy_cands = cands if draws is None else score_arms(est, arms, slo, load, None)
    feasible = [c for c in cands if c.feasible]
    downgraded = False
    if feasible:
        chosen = _best(feasible)
        best_unconstrained = _best(cands)
        if best_unconstrained.arm != chosen.arm:
            downgraded = True
            why = (
                f"{best_unconstrained.arm} would predict {best_unconstrained.latency_ms:.0f} ms "
                f"/ {best_unconstrained.cost_tokens:.0f} tok; within SLO "
                f"{slo.latency_budget_ms - load.elapsed_ms:.0f} ms and cap "
                f"{slo.cost_cap_tokens:.0f} tok the best is {chosen.arm}"
            )
        else:
            why = f"best utility (P - {slo.lambda_per_1k_tokens:g}/1k tok) among feasible arms"
    else:
        within_cap = [c for c in cands if c.cost_tokens + est.probe_tokens <= slo.cost_cap_tokens]
        chosen = min(within_cap or cands, key=lambda c: (c.latency_ms, c.cost_tokens))
        downgraded = True
        why = (
            f"no arm fits the latency budget {slo.latency_budget_ms - load.elapsed_ms:.0f} ms "
            f"(queue {load.inflight} req / {load.queued_tokens:.0f} tok); fastest arm"
        )
    greedy_feasible = [c for c in greedy_cands if c.feasible]
    greedy_choice = _best(greedy_feasible).arm if greedy_feasible else chosen.arm
    explored = draws is not None and greedy_choice != chosen.arm
    arm = by_name[chosen.arm]
    reuse = arm.strategy == "single_pass" and est.probe_reusable
    if reuse and est.probe_verdict is not None and est.probe_verdict >= 0.5:
        why = "probe answer verified by the exact checker; returned as is"
    elif reuse and chosen.p_success < 0.05 and not downgraded:
        why = f"no arm is worth its cost (P <= {max(c.p_success for c in cands):.2f}); " + why
    where = f"bin {est.bin} ({est.kind}, difficulty {est.difficulty:.2f})"
    if est.ood:
        where = f"bin {est.bin} ({est.kind}: task type unseen in training, base rates + online)"
    reason = (
        f"{where}: {chosen.arm} "
        f"P={chosen.p_success:.2f} cost={chosen.cost_tokens:.0f} tok "
        f"lat={chosen.latency_ms:.0f} ms; {why}"
    )
    if explored:
        reason += f"; exploring (greedy choice was {greedy_choice})"
    return Decision(
        strategy=arm.strategy,
        arm=arm.name,
        budget=arm.budget,
        reason=reason,
        source="auto",
        predicted_success=chosen.p_success,
        predicted_latency_ms=chosen.latency_ms,
        predicted_cost_tokens=chosen.cost_tokens + est.probe_tokens,
        policy_version=policy_version,
        difficulty_bin=est.bin,
        difficulty=est.difficulty,
        explored=explored,
        probe_tokens=est.probe_tokens,
        reuse_probe=reuse,
        continue_probe=continues_probe(arm.strategy, arm.budget, est),
        downgraded=downgraded,
        candidates=cands,
    )


def shrink_budget(
    strategy: str, budget: Budget, tokens_mean: float, unloaded_ms: float, slo: SLO, load: Load
) -> tuple[Budget, float, float, bool]:
    """A forced strategy's budget halved (samples, beam width, expansions) until it fits.

    Returns (budget, predicted cost tokens, predicted latency ms, shrunk?). Used when
    ``reasoning_effort`` or an explicit strategy forces the arm but the queue would make it
    miss the SLO: the strategy stays, its size goes down.
    """
    remaining = (slo.latency_budget_ms - load.elapsed_ms) * slo.headroom

    def calls(b: Budget) -> float:
        if strategy == "self_consistency":
            return float(math.ceil(b.samples / max(1, b.batch_size)))
        return float(b.max_steps) if strategy == "beam_search" else 1.0

    cost = tokens_mean
    lat = predict_latency_ms(tokens_mean, unloaded_ms, load, calls(budget), strategy)
    shrunk = False
    b = budget
    while lat > remaining and (b.samples > 1 or b.beam_width > 1 or b.expansions > 1):
        scale_from = max(b.samples, 1) * max(b.beam_width, 1) * max(b.expansions, 1)
        b = b.model_copy(
            update={
                "samples": max(1, b.samples // 2),
                "batch_size": max(1, min(b.batch_size, max(1, b.samples // 2))),
                "beam_width": max(1, b.beam_width // 2) if b.samples <= 1 else b.beam_width,
                "expansions": max(1, b.expansions // 2) if b.samples <= 1 else b.expansions,
            }
        )
        scale_to = max(b.samples, 1) * max(b.beam_width, 1) * max(b.expansions, 1)
        factor = scale_to / scale_from
        cost *= factor
        unloaded_ms *= factor
        lat = predict_latency_ms(cost, unloaded_ms, load, calls(b), strategy)
        shrunk = True
    return b, cost, lat, shrunk


def expected_samples(p_success: float, samples: int, batch: int) -> float:
    """Samples an early-stopping sampler draws (batches of ``batch``, stop at the first
    verified one) when P(one of ``samples`` verifies) is ``p_success``.

    Independent samples with per-sample solve rate q = 1 - (1 - p)^(1/N); batch k is drawn
    only when the k batches before it all failed: sum_k b_k (1 - q)^(b * k).
    """
    n, b = max(1, samples), max(1, min(batch, samples))
    p = min(max(p_success, 0.0), 1 - 1e-9)
    fail = (1.0 - p) ** (1.0 / n)  # one sample fails
    total, drawn = 0.0, 0
    while drawn < n:
        size = min(b, n - drawn)
        total += size * fail**drawn
        drawn += size
    return total


def beta_prior(success_rate: float, strength: float) -> tuple[float, float]:
    """Beta(alpha, beta) with mean ``success_rate`` and ``strength`` pseudo-observations."""
    p = min(max(success_rate, 1e-3), 1 - 1e-3)
    s = max(strength, 1e-3)
    return p * s, (1 - p) * s


def utility_gap(cands: Sequence[Candidate]) -> float:
    """Utility of the best arm minus the runner-up (how clear-cut a decision was)."""
    us = sorted((c.utility for c in cands), reverse=True)
    return us[0] - us[1] if len(us) > 1 else math.inf
