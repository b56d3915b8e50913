"""The SLO load test in virtual time: auto keeps the SLO where always-search cannot."""

from __future__ import annotations

from difficulty.train import fit_router_model, rows_from_item
from lab.slo_sim import ReplayBackend, simulate, width_of
from lab.synthetic import synthetic_items
from policies.adaptive import AdaptivePolicy
from policies.registry import default_arms
from policies.settings import PolicySettings, StrategiesSettings


async def test_at_twice_the_load_always_search_sustains_auto_meets_the_slo() -> None:
    train = [r for it in synthetic_items(150, seed=2) for r in rows_from_item(it)]
    model = fit_router_model(
        train, version="sim", probe_tokens=50, arms=default_arms(), holdout=0.0
    )
    items = synthetic_items(120, seed=9)
    capacity, single = 5000.0, 470.0
    search_tokens = sum(it["arms"]["best_of_n@16"]["tokens"] for it in items) / len(items)
    rate = 2 * capacity / search_tokens  # twice what always-search can sustain
    kw = {
        "rate_per_s": rate,
        "n_requests": 600,
        "slo_ms": 1500.0,
        "capacity_tok_s": capacity,
        "single_seq_tok_s": single,
    }
    always = await simulate(items, mode="best_of_n@16", policy=None, **kw)  # type: ignore[arg-type]
    policy = AdaptivePolicy(
        PolicySettings(exploration_rate=0.0, capacity_tokens_per_s=capacity),
        StrategiesSettings(),
        backend=ReplayBackend(),
        model=model,
    )
    auto = await simulate(items, mode="auto", policy=policy, **kw)  # type: ignore[arg-type]
    s_always, s_auto = always.summary(1500.0), auto.summary(1500.0)
    assert s_always["slo_met"] < 0.5
    assert s_auto["slo_met"] >= 0.99
    assert s_auto["mean_tokens"] < s_always["mean_tokens"] / 2


def test_arms_decode_as_wide_as_their_batch() -> None:
    assert width_of("single_pass", {}) == 1
    assert width_of("best_of_n@16", {}) == 16
    assert width_of("self_consistency@4", {}) == 4
    assert width_of("self_consistency@32", {}) == 8
