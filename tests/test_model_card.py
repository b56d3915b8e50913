"""The bundled model's card: recipe and thread schedule, and the measured block from a bench."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.bundled.model_card import card_measurements, write_model_card


def _expert(seconds: float, schedule: list[tuple[int, int]]) -> dict[str, object]:
    recipe = {
        "n_layer": 4,
        "n_embd": 192,
        "n_head": 6,
        "n_positions": 192,
        "lr": 0.002,
        "warmup_steps": 30,
        "min_lr_fraction": 0.05,
        "weight_decay": 0.1,
        "batch_size": 32,
        "steps": 3500,
        "bf16_autocast": True,
        "attn_implementation": "eager",
        "activation_function": "gelu",
        "arithmetic_random_order": True,
    }
    return {
        "recipe": recipe,
        "parameters": 1_821_696,
        "train_seconds": seconds,
        "torch_threads": schedule[0][1],
        "thread_schedule": schedule,
        "final_loss": 0.1,
        "train_puzzles": 1046,
        "heldout_puzzles": 316,
    }


def _report() -> dict[str, object]:
    game = {
        "items": 100,
        "greedy": 0.16,
        "per_sample": 0.10512,
        "best_of_n": {1: 0.10512},
        "entropy_auroc": 0.8634,
        "pass_rates": [0.0, 0.5],
    }
    return {
        "temperature": 0.8,
        "samples": 32,
        "game24_900_999": game,
        "game24_0_99": dict(game),
        "arithmetic": {
            "items": 700,
            "by_operands": {2: {"greedy": 0.89}},
            "entropy_auroc": 0.93149,
            "pass_rates": [1.0],
        },
        "arithmetic_2_operands": {"greedy": 0.9, "greedy_95": (0.87123, 0.92345)},
        "speed": {"speedup_16_vs_1": 7.4123},
    }


def test_the_card_names_the_attention_kernel_the_activation_and_when_an_expert_took_every_core(
    tmp_path: Path,
) -> None:
    training = {
        "seed": 0,
        "parallel": True,
        "cpu_cores": 2,
        "wall_seconds": 900.0,
        "experts": {
            "game24": _expert(600.0, [(0, 1)]),
            "arithmetic": _expert(890.0, [(0, 1), (1900, 2)]),
        },
    }
    text = write_model_card(tmp_path, training, None).read_text()
    assert "eager attention, gelu activation" in text
    assert "890.0 s on 1 thread(s), then 2 thread(s) from step 1900" in text
    assert "600.0 s on 1 thread(s);" in text
    assert "## Measured" not in text


def test_the_measured_block_rounds_the_bench_and_leaves_out_per_item_rates(
    tmp_path: Path,
) -> None:
    measured = card_measurements(_report(), "python -m lab bench-model --update-card")
    assert measured["command"] == "python -m lab bench-model --update-card"
    assert measured["game24_900_999"]["per_sample"] == 0.105
    assert "pass_rates" not in measured["arithmetic"]
    assert measured["arithmetic_2_operands"]["greedy_95"] == [0.871, 0.923]
    assert measured["speed"]["speedup_16_vs_1"] == 7.412
    training = {
        "seed": 0,
        "parallel": True,
        "cpu_cores": 2,
        "wall_seconds": 900.0,
        "experts": {"game24": _expert(600.0, [(0, 1)]), "arithmetic": _expert(890.0, [(0, 1)])},
    }
    text = write_model_card(tmp_path, training, measured).read_text()
    block = json.loads(text.split("```json")[1].split("```")[0])
    assert block["arithmetic"]["entropy_auroc"] == 0.931
    assert block["game24_0_99"]["best_of_n"] == {"1": 0.105}


@pytest.mark.parametrize(
    ("split", "inline", "expected"),
    [
        (0.0, False, None),
        (1.0, True, "each two-digit product with its units and tens parts and their sum"),
        (0.5, False, "50% of two-digit products as tens and units on lines of their own"),
    ],
)
def test_the_card_says_how_the_arithmetic_data_writes_products(
    tmp_path: Path, split: float, inline: bool, expected: str | None
) -> None:
    arithmetic = _expert(890.0, [(0, 1)])
    recipe = dict(arithmetic["recipe"])  # type: ignore[call-overload]
    recipe.update(arithmetic_split_products=split, arithmetic_inline_split=inline)
    arithmetic["recipe"] = recipe
    training = {
        "seed": 0,
        "parallel": True,
        "cpu_cores": 2,
        "wall_seconds": 900.0,
        "experts": {"game24": _expert(600.0, [(0, 1)]), "arithmetic": arithmetic},
    }
    text = " ".join(write_model_card(tmp_path, training, None).read_text().split())
    if expected is None:
        assert "two-digit product" not in text
    else:
        assert expected in text
