"""The bench's ``auto`` and ``oracle`` rows (router/commands/bench.py) with a scripted backend."""

from __future__ import annotations

from router.commands.bench import Item, auto_runner, oracle_records
from tests.fakes import FakeBackend

SOLVED = "Answer: 4*6*1*1 = 24"  # shorter than the config's 24-token probe


async def test_the_auto_row_counts_the_probe_and_reuses_a_verified_one() -> None:
    backend = FakeBackend(lambda prompt, i, req: SOLVED)
    run = auto_runner(backend, None, timeout_s=10)
    item = Item("g24-x", "1 1 4 6", "game24", numbers=(1, 1, 4, 6))
    res = await run(item)
    # The greedy probe solved it: the answer is the probe, generated once.
    assert res.strategy == "auto:single_pass"
    assert len(backend.calls) == 1
    assert res.completion_tokens == len(SOLVED)


async def test_the_auto_row_adds_probe_tokens_when_it_searches() -> None:
    backend = FakeBackend(
        lambda prompt, i, req: "Answer: 1+1+4+6 = 24" if req.temperature == 0 else SOLVED
    )
    run = auto_runner(backend, None, timeout_s=10)
    res = await run(Item("g24-y", "1 1 4 6", "game24", numbers=(1, 1, 4, 6)))
    assert res.strategy.startswith("auto:") and res.strategy != "auto:single_pass"
    probe = len("Answer: 1+1+4+6 = 24")
    assert res.hidden_tokens >= probe
    assert sum(len(SOLVED) for _ in backend.calls[1:]) <= res.completion_tokens


def test_the_oracle_row_takes_the_cheapest_solving_arm_per_item() -> None:
    recs = [
        {"row": "single_pass", "item": "a", "correct": False, "tokens": 50},
        {"row": "best_of_n:samples=16", "item": "a", "correct": True, "tokens": 800},
        {"row": "self_consistency", "item": "a", "correct": True, "tokens": 300},
        {"row": "single_pass", "item": "b", "correct": False, "tokens": 40},
        {"row": "best_of_n:samples=16", "item": "b", "correct": False, "tokens": 700},
        {"row": "auto", "item": "b", "correct": True, "tokens": 10},
    ]
    out = {
        r["item"]: r
        for r in oracle_records(recs, ["single_pass", "best_of_n:samples=16", "self_consistency"])
    }
    assert out["a"]["correct"] and out["a"]["tokens"] == 300
    assert out["a"]["strategy"] == "oracle:self_consistency"
    assert not out["b"]["correct"] and out["b"]["tokens"] == 40  # auto is not a fixed arm
