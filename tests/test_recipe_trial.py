"""Recipe trials (``python -m lab trial-recipe``) and the arithmetic curriculum they vary."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from backends.bundled.tasks import arithmetic
from lab.bundled.data import Mixture
from lab.bundled.trial import run_trial


def _operand_shares(mix: Mixture, progress: float, draws: int = 1400) -> Counter[int]:
    counts: Counter[int] = Counter()
    for _ in range(draws):
        (prompt, _reply) = mix.batch(progress, 1)[0]
        q = arithmetic.parse_expression(prompt.split(" ", 1)[1].strip())
        assert q is not None
        counts[q.operands] += 1
    return counts


def test_the_default_curriculum_is_uniform_over_operand_counts_by_the_end() -> None:
    counts = _operand_shares(Mixture([], seed=0, p_game24=0.0), progress=1.0)
    # Uniform: 200 of 1,400 draws per count; 2 operands well under the early 25% share.
    assert 140 < counts[2] < 260
    assert 140 < counts[8] < 260


def test_a_curriculum_without_a_uniform_phase_keeps_favouring_few_operands() -> None:
    counts = _operand_shares(Mixture([], seed=0, p_game24=0.0, uniform_from=None), 1.0)
    # Weights 9 - k: 2 operands 7/28 of the draws (350), 8 operands 1/28 (50).
    assert counts[2] > 280
    assert counts[8] < 100


def test_a_curriculum_progress_outside_the_run_is_rejected() -> None:
    with pytest.raises(ValueError, match="uniform_from"):
        Mixture([], seed=0, uniform_from=1.5)


def test_a_trial_trains_with_the_overrides_and_scores_the_expert(
    tmp_path: Path, game24_csv: Path
) -> None:
    result = run_trial(
        "arithmetic",
        tmp_path / "t",
        game24_csv,
        {"steps": 3, "arithmetic_uniform_from": None},
        per_count=1,
        tiny=True,
        progress=False,
    )
    assert result["recipe"]["steps"] == 3
    assert result["recipe"]["arithmetic_uniform_from"] is None
    assert set(result["scores"]["by_operands"]) == set(range(2, 9))
    # Each count's questions are split by whether they hold a product, and none is lost.
    split = result["scores"]["by_operands_and_kind"]
    assert set(split) == set(range(2, 9))
    assert all(set(kinds) <= {"with_product", "sums_only"} for kinds in split.values())
    assert all(sum(d["items"] for d in kinds.values()) == 1 for kinds in split.values())
    assert result["train_seconds"] >= 0  # recorded (3 tiny steps can round to 0.0 s)
    saved = json.loads((tmp_path / "t" / "trial.json").read_text())
    assert saved["overrides"] == {"steps": 3, "arithmetic_uniform_from": None}


def test_a_trial_rejects_an_unknown_expert_or_setting(tmp_path: Path, game24_csv: Path) -> None:
    with pytest.raises(ValueError, match="valid: game24, arithmetic"):
        run_trial("poetry", tmp_path, game24_csv, {})
    with pytest.raises(ValueError, match="valid: steps"):
        run_trial("arithmetic", tmp_path, game24_csv, {"dropout": 0.1})


def test_random_fold_orders_change_the_scratchpads_but_not_the_questions() -> None:
    plain = Mixture([], seed=3, p_game24=0.0)
    shuffled = Mixture([], seed=3, p_game24=0.0, random_fold_order=True)
    a = [pair for step in range(40) for pair in plain.batch(step / 40, 4)]
    b = [pair for step in range(40) for pair in shuffled.batch(step / 40, 4)]
    assert [p for p, _ in a] == [p for p, _ in b]
    assert sum(ra != rb for (_, ra), (_, rb) in zip(a, b, strict=True)) > 20
    pairs = zip(a, b, strict=True)
    assert all(ra.splitlines()[-1] == rb.splitlines()[-1] for (_, ra), (_, rb) in pairs)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], {}),
        (
            ["--split-products", "0", "--split-lines"],
            {"arithmetic_split_products": 0.0, "arithmetic_inline_split": False},
        ),
        (
            ["--split-products", "0.5", "--inline-split"],
            {"arithmetic_split_products": 0.5, "arithmetic_inline_split": True},
        ),
    ],
)
def test_the_trial_command_can_turn_the_shipped_product_split_off_or_change_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: list[str], expected: dict[str, object]
) -> None:
    from typer.testing import CliRunner

    from lab import cli
    from lab.cli import app

    seen: dict[str, object] = {}

    def fake_run_trial(
        expert: str, out_dir: Path, data_csv: Path, overrides: dict[str, object], **_: object
    ) -> dict[str, object]:
        seen.update(overrides)
        return {"overrides": overrides}

    monkeypatch.setattr(cli, "run_trial", fake_run_trial)
    args = ["trial-recipe", "--expert", "arithmetic", "--out-dir", str(tmp_path), *flags]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen == expected


def test_the_trial_command_rejects_a_split_share_outside_zero_to_one(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lab.cli import app

    args = ["trial-recipe", "--out-dir", str(tmp_path), "--split-products", "1.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "split-products" in result.output
