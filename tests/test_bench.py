"""``acr bench``: datasets, arm parsing, grading, summaries, the Pareto frontier, the plot."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from backends.base import GenerationRequest
from router.bench import (
    Item,
    grade,
    load_items,
    pareto,
    parse_arm,
    plot,
    run_row,
    strategy_runner,
    summarise,
)
from tests.fakes import FakeBackend

SOLUTION = (
    "13-9=4 (left: 4 4 10)\n10-4=6 (left: 4 6)\n4*6=24 (left: 24)\nAnswer: (13-9)*(10-4) = 24"
)


def test_arms_parse_into_strategy_and_budget_and_bad_ones_say_what_is_valid() -> None:
    name, strategy, budget = parse_arm("best_of_n:samples=8,temperature=0.5")
    assert (name, strategy, budget.samples, budget.temperature) == (
        "best_of_n:samples=8,temperature=0.5",
        "best_of_n",
        8,
        0.5,
    )
    with pytest.raises(ValueError, match="valid: single_pass"):
        parse_arm("dfs")
    with pytest.raises(ValueError, match="unknown budget field 'beams'"):
        parse_arm("beam_search:beams=3")


def test_datasets_load_game24_rows_arithmetic_and_jsonl(game24_csv: Path, tmp_path: Path) -> None:
    items = load_items("game24", rows="0-2,900-901", path=game24_csv)
    assert [i.id for i in items] == ["g24-0", "g24-1", "g24-2", "g24-900", "g24-901"]
    assert all(len(i.numbers) == 4 for i in items)
    ar = load_items("arithmetic", per_count=2)
    assert len(ar) == 14 and all(i.reference for i in ar)
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"question": "2+2?", "answer": "so\n#### 4"}) + "\n")
    (q,) = load_items("jsonl", path=f)
    assert q.reference == "4"
    with pytest.raises(ValueError, match="valid: game24"):
        load_items("mmlu")


def test_grading_is_exact() -> None:
    g = Item("a", "4 9 10 13", "game24", numbers=(4, 9, 10, 13))
    assert grade(g, SOLUTION) and not grade(g, "Answer: 4*6 = 24")
    a = Item("b", "What is 2+3?", "arithmetic", "5")
    assert grade(a, "Answer: 5") and not grade(a, "Answer: 6")


def test_rows_record_every_item_and_the_frontier_drops_dominated_rows(tmp_path: Path) -> None:
    items = [Item(f"i{k}", "4 9 10 13", "game24", numbers=(4, 9, 10, 13)) for k in range(4)]

    def script(prompt: str, i: int, req: GenerationRequest) -> str:
        return SOLUTION if i == 3 else "Answer: 1+1 = 24"

    be = FakeBackend(script)
    records = []
    for spec in ("single_pass", "best_of_n:samples=4", "best_of_n:samples=8"):
        name, strat, budget = parse_arm(spec)
        runner = strategy_runner(be, strat, budget, 5.0)
        records += asyncio.run(run_row(name, runner, items, 2, lambda: None))
    summary = summarise(records)
    acc = {s["row"]: s["accuracy"] for s in summary}
    assert acc == {"single_pass": 0.0, "best_of_n:samples=4": 1.0, "best_of_n:samples=8": 1.0}
    assert pareto(summary) == ["single_pass", "best_of_n:samples=4"]
    plot(summary, tmp_path / "p.png", "test")
    assert (tmp_path / "p.png").stat().st_size > 1000
