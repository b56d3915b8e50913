"""``acr bench``: datasets, arm parsing, grading, summaries, the Pareto frontier, the plot."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from backends.base import GenerationRequest
from router.commands.bench import (
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


def test_arms_may_set_a_strategys_own_options_and_only_its_own() -> None:
    from router.commands.bench import arm_options

    spec = "self_consistency:samples=32,threshold=0.9,adaptive=0"
    _, strategy, budget = parse_arm(spec)
    assert (strategy, budget.samples) == ("self_consistency", 32)
    assert arm_options(spec) == {"threshold": 0.9, "adaptive": False}
    assert arm_options("best_of_n:samples=4") == {}
    with pytest.raises(ValueError, match="unknown budget field 'threshold'"):
        parse_arm("best_of_n:threshold=0.9")


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
    m = Item("c", "Janet has 3 apples and buys 15. How many now?", "math", "18")
    assert grade(m, "She has 3 + 15 = 18 apples.\n#### 18")
    assert grade(m, "So the answer is $\\boxed{18}$.") and not grade(m, "The answer is 17.")


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
    # The oracle is known only after the fact: drawn for reference, never on the frontier.
    oracle = {"row": "oracle", "accuracy": 1.0, "mean_tokens": 1.0}
    assert pareto([*summary, oracle]) == ["single_pass", "best_of_n:samples=4"]
    plot(summary, tmp_path / "p.png", "test")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_run_bench_writes_per_item_json_groups_extra_rows_and_the_plot(tmp_path: Path) -> None:
    from policies.base import StrategyResult
    from router.commands.bench import run_bench

    items = [
        Item("a", "4 9 10 13", "game24", numbers=(4, 9, 10, 13), group="rows 900-901"),
        Item("b", "What is 2+3?", "arithmetic", "5", group="2 operands"),
    ]

    def script(prompt: str, i: int, req: GenerationRequest) -> str:
        return SOLUTION if "4 9 10 13" in prompt else "Answer: 5"

    async def always_six(item: Item) -> StrategyResult:
        # A later policy's row: any async callable item -> StrategyResult.
        return StrategyResult("mine", "Answer: 6", "6", [], 3, 9, 1, 0, 1.0, 1, "answered")

    be = FakeBackend(script)
    out = tmp_path / "b.json"
    result = run_bench(
        items,
        ["single_pass", "best_of_n:samples=4"],
        out,
        backend=be,
        extra_rows={"mine": always_six},
        auto=False,
        progress=False,
    )
    saved = json.loads(out.read_text())
    assert saved["summary"] == result["summary"]
    rows = {s["row"]: s for s in saved["summary"]}
    assert set(rows) == {"single_pass", "best_of_n:samples=4", "mine", "oracle"}
    assert rows["single_pass"]["accuracy"] == 1.0 and rows["mine"]["accuracy"] == 0.0
    assert rows["mine"]["mean_tokens"] == 10.0
    recs = [r for r in saved["records"] if r["row"] == "best_of_n:samples=4"]
    assert {r["item"] for r in recs} == {"a", "b"}
    for r in recs:
        assert r["strategy"] == "best_of_n" and r["correct"] is True
        assert r["tokens"] == r["visible_tokens"] + r["hidden_tokens"] + r["verifier_tokens"]
        assert r["latency_ms"] >= 0 and r["samples"] == 4
    # Every token the fake generated is in some fixed row's records (oracle repeats them).
    fixed = [r for r in saved["records"] if r["row"] in ("single_pass", "best_of_n:samples=4")]
    assert sum(r["tokens"] for r in fixed) == be.generated_tokens
    groups = {(g["row"], g["group"]) for g in saved["by_group"]}
    assert ("single_pass", "2 operands") in groups and ("mine", "rows 900-901") in groups
    assert out.with_suffix(".png").stat().st_size > 1000


def test_item_seeds_are_stable_across_processes() -> None:
    import subprocess
    import sys

    from router.commands.bench import item_seed

    code = (
        "from router.commands.bench import Item, item_seed; "
        "print(item_seed(Item('g24-5', 'x', 'game24')))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert int(other.stdout) == item_seed(Item("g24-5", "x", "game24"))


def test_the_pool_row_serves_each_item_on_the_backend_its_profile_allows(tmp_path: Path) -> None:
    from router.commands.bench import run_bench
    from router.config import BackendConfig, load_config

    pool = load_config(env={})
    pool.backends = [
        BackendConfig(name="acr-bundled", profiles=["game24"]),
        # a server nobody runs: were an item sent there, the row would fail
        BackendConfig(
            name="elsewhere", kind="openai", base_url="http://127.0.0.1:9/v1", profiles=["open"]
        ),
    ]
    items = [Item(f"g{i}", "4 9 10 13", "game24", numbers=(4, 9, 10, 13)) for i in range(3)]
    result = run_bench(
        items,
        ["single_pass"],
        tmp_path / "b.json",
        backend=FakeBackend.canned([SOLUTION]),
        pool=pool,
        auto=False,
        oracle=False,
        progress=False,
    )
    rows = {s["row"]: s for s in result["summary"]}
    assert rows["pool"]["accuracy"] == 1.0 and rows["pool"]["items"] == 3
    labels = {r["strategy"] for r in result["records"] if r["row"] == "pool"}
    assert labels and all(label.startswith("pool:acr-bundled:") for label in labels)
