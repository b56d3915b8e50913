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

import random
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from difficulty.estimate import DifficultyEstimate
from policies.budget import Budget
from policies.decision import ArmScore, Decision, Source
from policies.latency import SLO, Load, predict_latency_ms


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
    serial_tokens: float | None = Field(
        default=None, ge=0, description="Tokens generated one after another (not batched)."
    )
    reuses_probe: bool = Field(
        default=False, description="The probe's completion already is this arm's answer."
    )
    continues_probe: bool = Field(
        default=False, description="This arm continues the cut probe instead of redoing it."
    )

    @property
    def posterior_mean(self) -> float:
        """Mean of the shared success posterior."""
        return self.alpha / (self.alpha + self.beta)


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
    if arm.reuses_probe and est.probe_verdict is not None:
        # Greedy decoding is deterministic: an exact verdict on the probe is the verdict on
        # the arm that would return it.
        return 1.0 if est.probe_verdict >= 0.5 else 0.0
    online = (draw if draw is not None else arm.posterior_mean) - arm.prior_mean
    return min(1.0, max(0.0, arm.p_model + online))


def _cost(arm: ArmStats, est: DifficultyEstimate) -> float:
    if arm.reuses_probe:
        return 0.0  # the probe already produced this answer
    if arm.continues_probe:
        return max(1.0, arm.tokens_mean - est.probe_tokens)  # only the rest is generated
    return arm.tokens_mean


def score_arms(
    est: DifficultyEstimate,
    arms: Sequence[ArmStats],
    slo: SLO,
    load: Load,
    draws: Mapping[str, float] | None = None,
) -> list[ArmScore]:
    """Every arm's predicted success, cost, latency, utility and feasibility (pure)."""
    # Predictions are means; keep headroom so that their spread stays inside the SLO.
    remaining_ms = (slo.latency_budget_ms - load.elapsed_ms) * slo.headroom
    out: list[ArmScore] = []
    for arm in arms:
        p = _p_success(arm, est, None if draws is None else draws.get(arm.name))
        cost = _cost(arm, est)
        latency = (
            0.0
            if arm.reuses_probe
            else predict_latency_ms(
                cost,
                arm.latency_ms_mean,
                load,
                arm.calls,
                arm.strategy,
                None
                if arm.serial_tokens is None
                else arm.serial_tokens * cost / max(1.0, arm.tokens_mean),
            )
        )
        feasible = latency <= remaining_ms and cost + est.probe_tokens <= slo.cost_cap_tokens
        utility = p - slo.lambda_per_1k_tokens * cost / 1000.0
        out.append(
            # Internal values, already typed: skip validation on the hot path.
            ArmScore.model_construct(
                arm=arm.name,
                p_success=round(p, 4),
                cost_tokens=round(cost, 1),
                latency_ms=round(latency, 1),
                utility=round(utility, 5),
                feasible=feasible,
            )
        )
    return out


def _best(cands: Sequence[ArmScore]) -> ArmScore:
    # Ties go to the cheaper arm: equal utility never justifies more compute.
    return max(cands, key=lambda c: (c.utility, -c.cost_tokens))


def _why(
    chosen: ArmScore, cands: Sequence[ArmScore], slo: SLO, load: Load, est: DifficultyEstimate
) -> tuple[str, bool]:
    """(explanation of the choice among feasible arms, downgraded?)."""
    best_unconstrained = _best(cands)
    if best_unconstrained.arm == chosen.arm:
        return f"best utility (P - {slo.lambda_per_1k_tokens:g}/1k tok) among feasible arms", False
    return (
        f"{best_unconstrained.arm} would predict {best_unconstrained.latency_ms:.0f} ms "
        f"/ {best_unconstrained.cost_tokens:.0f} tok; within SLO "
        f"{slo.latency_budget_ms - load.elapsed_ms:.0f} ms and cap "
        f"{slo.cost_cap_tokens:.0f} tok the best is {chosen.arm}"
    ), True


def _choose(
    cands: Sequence[ArmScore], slo: SLO, load: Load, est: DifficultyEstimate
) -> tuple[ArmScore, str, bool]:
    """(chosen arm's score, why it was chosen, downgraded?) for ``select``.

    The best feasible arm when there is one; otherwise the fastest arm within the cost cap
    (or the fastest overall), which always counts as a downgrade.
    """
    feasible = [c for c in cands if c.feasible]
    if feasible:
        chosen = _best(feasible)
        why, downgraded = _why(chosen, cands, slo, load, est)
        return chosen, why, downgraded
    within_cap = [c for c in cands if c.cost_tokens + est.probe_tokens <= slo.cost_cap_tokens]
    chosen = min(within_cap or cands, key=lambda c: (c.latency_ms, c.cost_tokens))
    why = (
        f"no arm fits the latency budget {slo.latency_budget_ms - load.elapsed_ms:.0f} ms "
        f"(queue {load.inflight} req / {load.queued_tokens:.0f} tok); fastest arm"
    )
    return chosen, why, True


def _greedy_arm(greedy_cands: Sequence[ArmScore], fallback: str) -> str:
    """The arm the greedy (draw-free) scores would choose, ``fallback`` when none is
    feasible; ``select`` compares it with its choice to tell exploration apart."""
    greedy_feasible = [c for c in greedy_cands if c.feasible]
    return _best(greedy_feasible).arm if greedy_feasible else fallback


def _probe_why(
    arm: ArmStats,
    chosen: ArmScore,
    cands: Sequence[ArmScore],
    why: str,
    downgraded: bool,
    est: DifficultyEstimate,
) -> str:
    """``why`` as the reason states it, restated when the choice returns the probe's answer."""
    if arm.reuses_probe and est.probe_verdict is not None and est.probe_verdict >= 0.5:
        return "probe answer verified by the exact checker; returned as is"
    if arm.reuses_probe and chosen.p_success < 0.05 and not downgraded:
        return f"no arm is worth its cost (P <= {max(c.p_success for c in cands):.2f}); " + why
    return why


def _reason(
    est: DifficultyEstimate, chosen: ArmScore, why: str, explored_from: str | None, source: Source
) -> str:
    """The decision's human-readable reason: where the item falls, the chosen arm's
    prediction and ``why``; ``explored_from`` is the greedy choice exploration replaced."""
    where = f"bin {est.bin} ({est.kind}, difficulty {est.difficulty:.2f})"
    if est.ood:
        where = f"bin {est.bin} ({est.kind}: task type unseen in training, base rates + online)"
    reason = (
        f"{where}: {chosen.arm} "
        f"P={chosen.p_success:.2f} cost={chosen.cost_tokens:.0f} tok "
        f"lat={chosen.latency_ms:.0f} ms; {why}"
    )
    if explored_from is not None:
        reason += f"; exploring (greedy choice was {explored_from})"
    if source == "cache":
        reason = "cached difficulty estimate; " + reason
    return reason


def select(
    est: DifficultyEstimate,
    arms: Sequence[ArmStats],
    slo: SLO,
    load: Load,
    *,
    draws: Mapping[str, float] | None = None,
    policy_version: str = "",
    source: Source = "auto",
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
    chosen, why, downgraded = _choose(cands, slo, load, est)
    greedy_choice = _greedy_arm(greedy_cands, chosen.arm)
    explored = draws is not None and greedy_choice != chosen.arm
    arm = by_name[chosen.arm]
    why = _probe_why(arm, chosen, cands, why, downgraded, est)
    return Decision(
        strategy=arm.strategy,
        arm=arm.name,
        budget=arm.budget,
        reason=_reason(est, chosen, why, greedy_choice if explored else None, source),
        source=source,
        predicted_success=chosen.p_success,
        predicted_latency_ms=chosen.latency_ms,
        predicted_cost_tokens=chosen.cost_tokens + est.probe_tokens,
        policy_version=policy_version,
        difficulty_bin=est.bin,
        difficulty=est.difficulty,
        explored=explored,
        probe_tokens=est.probe_tokens,
        reuse_probe=arm.reuses_probe,
        continue_probe=arm.continues_probe,
        downgraded=downgraded,
        candidates=cands,
        task=est.kind,
        features=est.features,
    )


def beta_prior(success_rate: float, strength: float) -> tuple[float, float]:
    """Beta(alpha, beta) with mean ``success_rate`` and ``strength`` pseudo-observations."""
    p = min(max(success_rate, 1e-3), 1 - 1e-3)
    s = max(strength, 1e-3)
    return p * s, (1 - p) * s
