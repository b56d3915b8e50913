"""Offline evaluation of the router on labelled prompts: auto, fixed arms, oracle, targets.

Given item labels of *benchmark* prompts (``lab.labels``: each prompt's greedy probe and
every arm's correctness and tokens), this replays the adaptive policy prompt by prompt
(online updates included, no load) and compares it with every fixed arm, fixed-N best-of-N
(no early stop: N samples always drawn) and the oracle (the cheapest arm that solves each
prompt, known after the fact). Tokens always include the probe's.

Because the arms' outcomes are fixed per prompt, sweeping lambda costs no model time, which
is how "accuracy at equal mean tokens" is measured.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from difficulty.estimate import DifficultyEstimate
from difficulty.probe import ProbeSummary
from difficulty.profiles import Task, TaskProfiles
from lab.labels import Sample, simulate_best_of_n
from policies.adaptive import AdaptivePolicy
from policies.base import StrategyResult
from policies.latency import SLO, Load
from policies.single_pass import SinglePass

#: the task profiles serving matches prompts to (their kind and verifier)
PROFILES = TaskProfiles()


def item_task(item: dict[str, Any]) -> Task:
    """The task of a labelled item: its recorded kind (else the one serving matches) with the
    verifier serving uses for its text."""
    task = PROFILES.match(item["text"])
    return Task(item.get("kind") or task.kind, task.verifier)


def estimate_item(
    policy: AdaptivePolicy, item: dict[str, Any], probe: ProbeSummary | None
) -> DifficultyEstimate:
    """The policy's difficulty estimate of a labelled item from its labelled ``probe``."""
    task = item_task(item)
    return policy.estimator.estimate(
        item["text"],
        probe,
        kind=task.kind,
        exact_verifier=task.exact,
        probe_tokens=probe.tokens if probe else 0,
        answer_tokens=policy.pricer.budget_of(SinglePass.name, None, None).max_tokens,
    )


def fixed_arm_rows(items: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Accuracy and mean tokens of every arm labelled on all items."""
    names = set.intersection(*(set(it["arms"]) for it in items)) if items else set()
    out = {}
    for name in sorted(names):
        acc = float(np.mean([bool(it["arms"][name]["correct"]) for it in items]))
        tok = float(np.mean([float(it["arms"][name]["tokens"]) for it in items]))
        out[name] = {"accuracy": round(acc, 4), "mean_tokens": round(tok, 1)}
    return out


def best_of_n_curve(
    items: Sequence[dict[str, Any]], ns: Sequence[int] = (1, 2, 4, 8, 16, 32)
) -> dict[int, dict[str, float]]:
    """Fixed-N best-of-N: N samples always drawn; the verified one where serving has an exact
    checker, else the majority answer (``BestOfN``'s rule). Needs the labels' ``pool``."""
    out = {}
    for n in ns:
        accs, toks = [], []
        for it in items:
            pool = [Sample.from_row(r) for r in it.get("pool") or []]
            if len(pool) < n:
                break
            chosen = simulate_best_of_n(pool, n, bool(it.get("exact_verifier", True)))
            accs.append(bool(chosen is not None and chosen.ok))
            toks.append(sum(s.tokens for s in pool[:n]))
        else:
            out[n] = {
                "accuracy": round(float(np.mean(accs)), 4),
                "mean_tokens": round(float(np.mean(toks)), 1),
            }
    return out


def tokens_for_accuracy(curve: dict[int, dict[str, float]], accuracy: float) -> float | None:
    """Mean tokens fixed-N best-of-N needs to reach ``accuracy`` (log-linear in N between
    measured points); None when even the largest N falls short."""
    pts = sorted((v["accuracy"], v["mean_tokens"]) for v in curve.values())
    if not pts:
        return None
    if accuracy <= pts[0][0]:
        return pts[0][1]
    for (a0, t0), (a1, t1) in zip(pts, pts[1:], strict=False):
        if a0 <= accuracy <= a1:
            if a1 == a0:
                return t0
            f = (accuracy - a0) / (a1 - a0)
            return math.exp(math.log(t0) + f * (math.log(t1) - math.log(t0)))
    return None


def oracle_row(items: Sequence[dict[str, Any]], arms: Sequence[str]) -> dict[str, float]:
    """Cheapest arm that solves each prompt; unsolved prompts cost the cheapest arm."""
    accs, toks = [], []
    for it in items:
        cands = [
            (float(it["arms"][a]["tokens"]), bool(it["arms"][a]["correct"]))
            for a in arms
            if a in it["arms"]
        ]
        solved = [t for t, ok in cands if ok]
        accs.append(bool(solved))
        toks.append(min(solved) if solved else min(t for t, _ in cands))
    return {
        "accuracy": round(float(np.mean(accs)), 4),
        "mean_tokens": round(float(np.mean(toks)), 1),
    }


def _cheapest_solver(item: dict[str, Any], arms: Sequence[str]) -> str:
    """The oracle's pick: the cheapest arm that solved ``item``, else the cheapest arm."""
    cands = [(float(item["arms"][a]["tokens"]), a) for a in arms if a in item["arms"]]
    solved = [c for c in cands if item["arms"][c[1]]["correct"]]
    return min(solved or cands)[1]


def _base_unless_failed(item: dict[str, Any], arms: Sequence[str], base: str) -> str:
    """Keep ``base`` unless it failed on ``item`` and another arm solved it."""
    if item["arms"].get(base, {}).get("correct"):
        return base
    return next((a for a in arms if item["arms"].get(a, {}).get("correct")), base)


def oracle_repeatability(
    first: Sequence[dict[str, Any]],
    second: Sequence[dict[str, Any]],
    arms: Sequence[str],
    base: str,
) -> dict[str, Any]:
    """How much of the oracle's edge over ``base`` repeats in an independent labelling run.

    ``first`` and ``second`` label the same prompts with different sampling seeds. Per-item
    choices are made with hindsight from ``first`` and scored on ``second``: the oracle's own
    rule (cheapest arm that solved it) and ``base`` unless it failed and another arm solved it.
    Whatever a choice made with knowledge of a whole previous run cannot recover, no policy
    that sees only the prompt (and a probe) can either; the rest of the oracle's edge is
    sampling luck.
    """
    by_text = {it["text"]: it for it in first}
    pairs = [(by_text[it["text"]], it) for it in second if it["text"] in by_text]
    if not pairs:
        raise ValueError("the two labellings share no prompts")

    def score(pick: Any) -> dict[str, float]:
        outcomes = [b["arms"].get(pick(a), {}) for a, b in pairs]
        acc = float(np.mean([bool(o.get("correct")) for o in outcomes]))
        tok = float(np.mean([float(o.get("tokens") or 0) for o in outcomes]))
        return {"accuracy": round(acc, 4), "mean_tokens": round(tok, 1)}

    seconds = [b for _, b in pairs]
    base_row = fixed_arm_rows(seconds)[base]
    oracle = oracle_row(seconds, arms)
    hind = score(lambda a: _base_unless_failed(a, arms, base))
    gap = oracle["accuracy"] - base_row["accuracy"]
    return {
        "items": len(pairs),
        "base": {"arm": base, **base_row},
        "oracle": oracle,
        "oracle_picks_from_first_run": score(lambda a: _cheapest_solver(a, arms)),
        "base_unless_failed_in_first_run": hind,
        "gap_recovered_with_hindsight": None
        if gap <= 0
        else round((hind["accuracy"] - base_row["accuracy"]) / gap, 4),
    }


def _result(tokens: float, ok: bool) -> StrategyResult:
    return StrategyResult(
        strategy="replay",
        text="",
        answer=None,
        candidates=[],
        prompt_tokens=0,
        visible_tokens=int(tokens),
        hidden_tokens=0,
        verifier_tokens=0,
        wall_ms=0.0,
        samples=1,
        stop_reason="budget",
        score=1.0 if ok else 0.0,
    )


async def replay_auto(
    items: Sequence[dict[str, Any]],
    policy: AdaptivePolicy,
    *,
    use_probe: bool = True,
    shuffle_seed: int | None = 0,
    learn: bool = True,
) -> dict[str, Any]:
    """Auto's accuracy and mean tokens (probe included) over ``items``, in a shuffled order.

    Each prompt: estimate from its labelled probe, ``choose`` (no load, the configured SLO),
    look up the chosen arm's labelled outcome, and record it (online learning) if ``learn``.
    """
    order = list(range(len(items)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    slo = SLO(
        latency_budget_ms=policy.settings.latency_slo_ms,
        cost_cap_tokens=policy.settings.cost_cap_tokens,
        lambda_per_1k_tokens=policy.settings.lambda_per_1k_tokens,
    )
    load = Load(capacity_tokens_per_s=policy.settings.capacity_tokens_per_s)
    correct: list[bool] = []
    tokens: list[float] = []
    mix: dict[str, int] = {}
    explored = 0
    for i in order:
        it = items[i]
        probe = ProbeSummary.model_validate(it["probe"]) if use_probe else None
        est = estimate_item(policy, it, probe)
        d = await policy.choose(est, slo, load)
        explored += d.explored
        if d.reuse_probe:
            ok, tok = bool((it["probe"].get("verifier_score") or 0) >= 0.5), 0.0
            if it["probe"].get("verifier_score") is None:
                ok = bool(it["arms"].get("single_pass", {}).get("correct"))
        else:
            arm = it["arms"].get(d.arm) or {"correct": False, "tokens": d.predicted_cost_tokens}
            ok, tok = bool(arm["correct"]), float(arm["tokens"] or 0.0)
            if d.continue_probe and probe is not None:
                # Single pass continues the cut probe: its first tokens are the probe's.
                tok = max(0.0, tok - probe.tokens)
        correct.append(ok)
        tokens.append(tok + (probe.tokens if probe else 0))
        mix[d.arm] = mix.get(d.arm, 0) + 1
        if learn:
            await policy.record(d, _result(tok, ok), None)
    return {
        "accuracy": round(float(np.mean(correct)), 4),
        "mean_tokens": round(float(np.mean(tokens)), 1),
        "explored": explored,
        "arms": dict(sorted(mix.items(), key=lambda kv: -kv[1])),
    }


async def sweep_lambda(
    items: Sequence[dict[str, Any]],
    make_policy: Any,
    lambdas: Sequence[float],
) -> list[dict[str, Any]]:
    """``replay_auto`` at each lambda (a fresh policy and store each time)."""
    out = []
    for lam in lambdas:
        pol = make_policy(lam)
        row = await replay_auto(items, pol)
        out.append({"lambda_per_1k_tokens": lam, **row})
    return out


def accuracy_at_tokens(points: Sequence[dict[str, Any]], tokens: float) -> float | None:
    """Auto's accuracy at a mean-token budget, from the upper envelope of swept points."""
    pts = sorted((p["mean_tokens"], p["accuracy"]) for p in points)
    env: list[tuple[float, float]] = []
    for t, a in pts:
        if not env or a > env[-1][1]:
            env.append((t, a))
    if not env or tokens < env[0][0]:
        return None
    for (t0, a0), (t1, a1) in zip(env, env[1:], strict=False):
        if t0 <= tokens <= t1:
            return a0 + (a1 - a0) * (tokens - t0) / (t1 - t0) if t1 > t0 else a1
    return env[-1][1]
