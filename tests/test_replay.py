"""Offline router evaluation helpers (``lab.replay``) on hand-made labels."""

from __future__ import annotations

from typing import Any

import pytest

from lab.replay import accuracy_at_tokens, oracle_repeatability, oracle_row

ARMS = ["single_pass", "best_of_n@16", "beam_search"]


def item(text: str, **arms: tuple[bool, float]) -> dict[str, Any]:
    return {
        "text": text,
        "arms": {a: {"correct": ok, "tokens": tok} for a, (ok, tok) in arms.items()},
    }


def test_the_oracle_takes_each_items_cheapest_solving_arm() -> None:
    items = [
        item("a", single_pass=(True, 50), best_of_n_16=(True, 800), beam_search=(True, 900)),
        item("b", single_pass=(False, 60), beam_search=(True, 1000)),
        item("c", single_pass=(False, 40), beam_search=(False, 1200)),
    ]
    for it in items:
        it["arms"] = {k.replace("_16", "@16"): v for k, v in it["arms"].items()}
    row = oracle_row(items, ARMS)
    assert row["accuracy"] == pytest.approx(2 / 3, abs=1e-3)
    assert row["mean_tokens"] == pytest.approx((50 + 1000 + 40) / 3, abs=0.1)


def test_luck_in_one_run_does_not_repeat_in_the_next_and_the_check_says_so() -> None:
    # Run 1: beam search fails "b"; best-of-16 happened to solve it. Run 2: the reverse luck
    # on "c". Single pass is deterministic and always right on "a".
    first = [
        item("a", single_pass=(True, 50), beam_search=(True, 900)),
        item(
            "b", **{"best_of_n@16": (True, 800)}, single_pass=(False, 60), beam_search=(False, 1000)
        ),
        item(
            "c", **{"best_of_n@16": (False, 800)}, single_pass=(False, 60), beam_search=(True, 1000)
        ),
    ]
    second = [
        item("a", single_pass=(True, 50), beam_search=(True, 900)),
        item(
            "b",
            **{"best_of_n@16": (False, 800)},
            single_pass=(False, 60),
            beam_search=(False, 1000),
        ),
        item(
            "c", **{"best_of_n@16": (True, 800)}, single_pass=(False, 60), beam_search=(False, 1000)
        ),
    ]
    out = oracle_repeatability(first, second, ARMS, "beam_search")
    assert out["base"]["accuracy"] == pytest.approx(1 / 3, abs=1e-3)
    assert out["oracle"]["accuracy"] == pytest.approx(2 / 3, abs=1e-3)
    # Hindsight from run 1 sends "b" to best-of-16 (lucky there, not here) and keeps beam
    # search on "c" (which fails here): nothing of the oracle's edge repeats.
    assert out["base_unless_failed_in_first_run"]["accuracy"] == pytest.approx(1 / 3, abs=1e-3)
    assert out["gap_recovered_with_hindsight"] == 0.0
    # The oracle's own picks from run 1 (single pass on "a") keep only what is deterministic.
    assert out["oracle_picks_from_first_run"]["accuracy"] == pytest.approx(1 / 3, abs=1e-3)


def test_an_edge_that_repeats_is_recovered_with_hindsight() -> None:
    run = [
        item("a", single_pass=(True, 50), beam_search=(False, 900)),
        item("b", single_pass=(False, 60), beam_search=(True, 1000)),
    ]
    out = oracle_repeatability(run, run, ARMS, "beam_search")
    assert out["gap_recovered_with_hindsight"] == 1.0


def test_two_labellings_of_different_prompts_are_refused() -> None:
    with pytest.raises(ValueError, match="share no prompts"):
        oracle_repeatability(
            [item("a", beam_search=(True, 1))],
            [item("z", beam_search=(True, 1))],
            ARMS,
            "beam_search",
        )


def test_accuracy_at_a_budget_interpolates_the_upper_envelope() -> None:
    pts = [
        {"mean_tokens": 100.0, "accuracy": 0.4},
        {"mean_tokens": 300.0, "accuracy": 0.6},
        {"mean_tokens": 200.0, "accuracy": 0.3},  # dominated: not on the envelope
    ]
    assert accuracy_at_tokens(pts, 200.0) == pytest.approx(0.5, abs=1e-3)
    assert accuracy_at_tokens(pts, 50.0) is None
    assert accuracy_at_tokens(pts, 1000.0) == pytest.approx(0.6, abs=1e-3)
