"""The selector with numbers only: no clock, no Redis, no model."""

from __future__ import annotations

import random

import pytest

from difficulty.estimate import DifficultyEstimate
from policies.bounds import shrink_budget
from policies.budget import Budget
from policies.decision import Decision
from policies.latency import SLO, Load, predict_latency_ms
from policies.registry import strategy_class
from policies.selector import ArmStats, thompson_draws
from policies.selector import select as select_priced
from router.http.responses import decision_headers, decision_object


def arm(
    name: str,
    p: float,
    tokens: float,
    latency_ms: float,
    *,
    strategy: str | None = None,
    samples: int = 1,
    prior: float | None = None,
    succ: float = 0.0,
    fail: float = 0.0,
) -> ArmStats:
    prior = p if prior is None else prior
    strategy = strategy or name.split("@")[0]
    # Greedy single pass, as configured: only then is the greedy probe its answer.
    temperature = 0.0 if strategy == "single_pass" else 0.8
    return ArmStats(
        name=name,
        strategy=strategy,
        budget=Budget(samples=samples, batch_size=min(samples, 4), temperature=temperature),
        p_model=p,
        prior_mean=prior,
        alpha=prior * 20 + succ,
        beta=(1 - prior) * 20 + fail,
        tokens_mean=tokens,
        latency_ms_mean=latency_ms,
    )


def ladder(p_single: float, p4: float, p16: float) -> list[ArmStats]:
    return [
        arm("single_pass", p_single, 50, 100),
        arm("self_consistency@4", p4, 200, 150, samples=4),
        arm("self_consistency@16", p16, 800, 600, samples=16),
    ]


def select(
    est: DifficultyEstimate, arms: list[ArmStats], slo: SLO, load: Load, **kw: object
) -> Decision:
    """``select`` over arms priced as the policy prices them: each strategy says whether it
    reuses or continues the probe for this estimate."""
    priced = [
        a.model_copy(
            update={
                "reuses_probe": strategy_class(a.strategy).reuses_probe(a.budget, est),
                "continues_probe": strategy_class(a.strategy).continues_probe(a.budget, est),
            }
        )
        for a in arms
    ]
    return select_priced(est, priced, slo, load, **kw)  # type: ignore[arg-type]


SLO_LOOSE = SLO(latency_budget_ms=10_000, cost_cap_tokens=4096, lambda_per_1k_tokens=0.05)
IDLE = Load(capacity_tokens_per_s=2000)


def est(**kw: object) -> DifficultyEstimate:
    return DifficultyEstimate(kind="game24", difficulty=0.5, bin=2, **kw)  # type: ignore[arg-type]


def test_a_verified_probe_is_returned_as_single_pass_at_no_extra_cost() -> None:
    d = select(
        est(probe_tokens=50, probe_reusable=True, probe_verdict=1.0),
        ladder(0.3, 0.7, 0.95),
        SLO_LOOSE,
        IDLE,
    )
    assert d.strategy == "single_pass"
    assert d.reuse_probe
    assert d.predicted_success == 1.0
    assert d.predicted_cost_tokens == 50  # the probe's tokens only
    assert "verified" in d.reason


def test_a_refuted_probe_rules_out_single_pass_and_buys_samples() -> None:
    d = select(
        est(probe_tokens=50, probe_reusable=True, probe_verdict=0.0),
        ladder(0.9, 0.7, 0.95),
        SLO_LOOSE,
        IDLE,
    )
    assert d.arm == "self_consistency@16"
    single = next(c for c in d.candidates if c.arm == "single_pass")
    assert single.p_success == 0.0


def test_cheap_compute_buys_the_most_accurate_arm_and_dear_compute_the_cheapest() -> None:
    arms = ladder(0.3, 0.6, 0.9)
    cheap = select(est(), arms, SLO_LOOSE, IDLE)
    dear = select(est(), arms, SLO_LOOSE.model_copy(update={"lambda_per_1k_tokens": 1.0}), IDLE)
    assert cheap.arm == "self_consistency@16"
    # At 1.0 per 1k tokens: 0.3-0.05=0.25, 0.6-0.2=0.40, 0.9-0.8=0.10.
    assert dear.arm == "self_consistency@4"


def test_a_hopeless_item_gets_the_free_probe_answer_not_more_compute() -> None:
    d = select(est(probe_tokens=50, probe_reusable=True), ladder(0.01, 0.02, 0.03), SLO_LOOSE, IDLE)
    assert d.arm == "single_pass" and d.reuse_probe
    assert "worth" in d.reason


def test_a_deep_queue_downgrades_to_fewer_samples_before_missing_the_slo() -> None:
    arms = ladder(0.3, 0.6, 0.9)
    slo = SLO_LOOSE.model_copy(update={"latency_budget_ms": 1500})
    idle = select(est(), arms, slo, IDLE)
    busy = select(
        est(), arms, slo, Load(inflight=10, queued_tokens=4000, capacity_tokens_per_s=2000)
    )
    assert idle.arm == "self_consistency@16"
    assert busy.arm == "self_consistency@4"
    assert busy.downgraded
    assert busy.predicted_latency_ms is not None and busy.predicted_latency_ms <= 1500


def test_when_no_arm_fits_the_fastest_is_taken_and_marked_downgraded() -> None:
    slo = SLO_LOOSE.model_copy(update={"latency_budget_ms": 50})
    d = select(est(), ladder(0.3, 0.6, 0.9), slo, IDLE)
    assert d.arm == "single_pass"
    assert d.downgraded
    assert "no arm fits" in d.reason


def test_time_already_spent_counts_against_the_latency_budget() -> None:
    slo = SLO_LOOSE.model_copy(update={"latency_budget_ms": 1000})
    fresh = select(est(), ladder(0.3, 0.6, 0.9), slo, IDLE)
    late = select(est(), ladder(0.3, 0.6, 0.9), slo, IDLE.model_copy(update={"elapsed_ms": 700}))
    assert fresh.arm == "self_consistency@16"
    assert late.arm == "self_consistency@4"


def test_the_cost_cap_excludes_arms_that_would_spend_more() -> None:
    slo = SLO_LOOSE.model_copy(update={"cost_cap_tokens": 300})
    d = select(est(probe_tokens=50), ladder(0.3, 0.6, 0.9), slo, IDLE)
    assert d.arm == "self_consistency@4"
    assert d.predicted_cost_tokens == 250


def test_online_failures_lower_an_arms_predicted_success() -> None:
    arms = ladder(0.3, 0.6, 0.9)
    arms[2] = arm("self_consistency@16", 0.9, 800, 600, samples=16, prior=0.9, fail=60)
    d = select(est(), arms, SLO_LOOSE, IDLE)
    c16 = next(c for c in d.candidates if c.arm == "self_consistency@16")
    # Posterior mean 18/80 = 0.225 vs prior 0.9: the item's 0.9 is corrected down by 0.675.
    assert c16.p_success == pytest.approx(0.225, abs=1e-3)
    assert d.arm == "self_consistency@4"


def test_exploration_happens_on_at_most_the_configured_share_of_requests() -> None:
    rng = random.Random(7)
    arms = ladder(0.3, 0.6, 0.9)
    drawn = sum(thompson_draws(arms, rng, 0.05) is not None for _ in range(20_000))
    assert 0.04 < drawn / 20_000 < 0.06
    assert all(thompson_draws(arms, rng, 0.0) is None for _ in range(1000))


def test_a_thompson_draw_that_changes_the_choice_is_marked_explored() -> None:
    arms = ladder(0.3, 0.6, 0.9)
    draws = {"single_pass": 0.3, "self_consistency@4": 0.99, "self_consistency@16": 0.1}
    d = select(est(), arms, SLO_LOOSE, IDLE, draws=draws)
    assert d.arm == "self_consistency@4"
    assert d.explored
    assert "greedy choice was self_consistency@16" in d.reason
    same = select(est(), arms, SLO_LOOSE, IDLE, draws={a.name: a.prior_mean for a in arms})
    assert not same.explored


def test_latency_grows_with_the_tokens_queued_ahead() -> None:
    idle = predict_latency_ms(800, 400, Load(capacity_tokens_per_s=2000, overhead_ms=0))
    busy = predict_latency_ms(
        800, 400, Load(inflight=4, queued_tokens=3200, capacity_tokens_per_s=2000, overhead_ms=0)
    )
    small_jobs = predict_latency_ms(
        800, 400, Load(inflight=4, queued_tokens=200, capacity_tokens_per_s=2000, overhead_ms=0)
    )
    assert idle == 400  # measured unloaded latency dominates 800/2000 s
    assert busy == pytest.approx(2000)  # (3200 + 800) / 2000 s
    assert small_jobs == pytest.approx(500)  # (200 + 800) / 2000 s


def test_a_forced_budget_is_halved_until_it_fits_the_slo() -> None:
    slo = SLO_LOOSE.model_copy(update={"latency_budget_ms": 600, "headroom": 1.0})
    load = Load(inflight=2, queued_tokens=800, capacity_tokens_per_s=2000, overhead_ms=0)
    b, cost, lat, shrunk = shrink_budget(
        strategy_class("best_of_n"), Budget(samples=16, batch_size=16), 800, 300, slo, load
    )
    # 16 samples: (800 + 800) / 2000 s = 800 ms; 8 samples: (800 + 400) / 2000 s = 600 ms.
    assert shrunk
    assert b.samples == 8 and b.batch_size <= 8
    assert cost == 400 and lat <= 600


def test_the_decision_renders_ascii_headers_and_a_public_object() -> None:
    d = select(est(), ladder(0.3, 0.6, 0.9), SLO_LOOSE, IDLE, policy_version="v1.m")
    h = decision_headers(d)
    assert h["x-acr-strategy"] == "self_consistency"
    assert h["x-acr-arm"] == "self_consistency@16"
    assert h["x-acr-policy-version"] == "v1.m"
    assert all(v.isascii() for v in h.values())
    pub = decision_object(d)
    assert pub["predicted_success"] == pytest.approx(0.9)
    assert {c["arm"] for c in pub["candidates"]} == {a.name for a in ladder(0.3, 0.6, 0.9)}


def test_headroom_keeps_predictions_inside_a_share_of_the_budget() -> None:
    arms = ladder(0.3, 0.6, 0.9)  # self_consistency@16 predicts 602 ms unloaded
    tight = SLO_LOOSE.model_copy(update={"latency_budget_ms": 700, "headroom": 0.8})
    loose = tight.model_copy(update={"headroom": 1.0})
    assert select(est(), arms, tight, IDLE).arm == "self_consistency@4"
    assert select(est(), arms, loose, IDLE).arm == "self_consistency@16"


def test_an_arm_never_seen_is_priced_by_the_backends_learned_call_speed() -> None:
    speed = Load(call_overhead_ms=50, ms_per_token=2.0, overhead_ms=0)
    # Two sequential calls and 100 tokens generated one after another.
    assert predict_latency_ms(100, 0, speed, calls=2) == pytest.approx(2 * 50 + 100 * 2.0)
    # Batched samples: 16 x 50 tokens side by side take the time of 50 serial tokens.
    assert predict_latency_ms(800, 0, speed, serial_tokens=50) == pytest.approx(50 + 50 * 2.0)
    # What an arm was seen to take wins when it is slower than the model says.
    assert predict_latency_ms(100, 900, speed) == pytest.approx(900)


def test_ties_go_to_the_cheaper_arm() -> None:
    arms = [arm("single_pass", 0.5, 50, 100), arm("self_consistency@4", 0.5, 50, 100, samples=4)]
    d = select(est(), arms, SLO_LOOSE.model_copy(update={"lambda_per_1k_tokens": 0.0}), IDLE)
    assert d.arm == "single_pass"


def test_an_early_stopping_sampler_draws_one_batch_when_success_is_certain() -> None:
    from policies.self_consistency import expected_samples

    assert expected_samples(1.0, 16, 4) == pytest.approx(4, abs=0.05)
    assert expected_samples(0.0, 16, 4) == pytest.approx(16)
    # p = 1 - 0.5^16 means q = 0.5 per sample: 4 + 4/16 + 4/256 + 4/4096.
    assert expected_samples(1 - 0.5**16, 16, 4) == pytest.approx(4 + 4 / 16 + 4 / 256 + 4 / 4096)
