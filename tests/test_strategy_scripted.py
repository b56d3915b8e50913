"""Every strategy against a scripted backend: answers, stopping, deadlines, accounting."""

from __future__ import annotations

import time

import pytest

from backends.base import ChatMessage, GenerationRequest
from policies.base import Problem, StrategyError
from policies.beam_search import MAX_EXPANSIONS_PER_STATE
from policies.budget import Budget
from policies.registry import STRATEGIES, get_strategy
from policies.stopping import prob_leader_ahead
from tasks.game24_checker import Game24Verifier
from tests.fakes import FakeBackend, with_verifier

SOLUTION = (
    "13-9=4 (left: 4 4 10)\n10-4=6 (left: 4 6)\n4*6=24 (left: 24)\nAnswer: (13-9)*(10-4) = 24"
)
WRONG = "4+6=12 (left: 9 12 13)\n12+13=24 (left: 9 24)\nAnswer: 12+13 = 24"
PUZZLE = Problem(text="4 9 10 13", messages=[ChatMessage(role="user", content="4 9 10 13")])


def whole(correct_every: int):  # type: ignore[no-untyped-def]
    """Sample i is the solution when i % correct_every == correct_every - 1."""

    def script(prompt: str, i: int, req: GenerationRequest) -> str:
        return SOLUTION if i % correct_every == correct_every - 1 else WRONG

    return script


def stepwise(prompt: str, i: int, req: GenerationRequest) -> str:
    """Next line of the solution for even samples, an invalid step for odd ones."""
    done = prompt.count("\n") - 1
    good = SOLUTION.split("\n")
    if i % 2 == 0 and done < len(good):
        return good[done] + "\n"
    return "4+4=9 (left: 9 10 13)\n"


FAR = 1e12


@pytest.mark.parametrize("name", list(STRATEGIES))
async def test_accounting_sums_match_what_the_backend_generated(name: str) -> None:
    be = FakeBackend(stepwise if name == "beam_search" else whole(3))
    budget = Budget(samples=8, batch_size=4, beam_width=2, expansions=4, max_tokens=200)
    res = await get_strategy(name).run(with_verifier(PUZZLE, Game24Verifier()), be, budget, FAR)
    assert res.visible_tokens + res.hidden_tokens == be.generated_tokens
    # One token per character: the shown text is the visible tokens, except the "Answer: "
    # that budget forcing writes into the prompt itself (not generated).
    if res.stop_reason != "budget":
        assert res.visible_tokens == len(res.text) or name == "beam_search"
    assert res.visible_tokens <= len(res.text)
    assert res.strategy == name
    assert res.wall_ms >= 0


async def test_single_pass_is_greedy_and_one_sample() -> None:
    be = FakeBackend(whole(1))
    res = await get_strategy("single_pass").run(
        with_verifier(PUZZLE, None), be, Budget(temperature=0.0), FAR
    )
    assert [r.n for r in be.calls] == [1]
    assert be.calls[0].temperature == 0.0
    assert res.answer == "(13-9)*(10-4) = 24"
    assert res.stop_reason == "answered"


async def test_single_pass_continues_a_greedy_prefix_instead_of_generating_it_again() -> None:
    import dataclasses

    prefix = SOLUTION[:20]

    def script(prompt: str, i: int, req: GenerationRequest) -> str:
        return SOLUTION[len(prefix) :] if prompt.endswith(prefix) else SOLUTION

    be = FakeBackend(script)
    problem = dataclasses.replace(PUZZLE, prefix=prefix, prefix_tokens=len(prefix))
    budget = Budget(max_tokens=200, temperature=0.0)
    res = await get_strategy("single_pass").run(
        with_verifier(problem, Game24Verifier()), be, budget, FAR
    )
    assert res.text == SOLUTION and res.score == 1.0
    assert res.answer == "(13-9)*(10-4) = 24"
    call = be.calls[0]
    assert call.prompt is not None and call.prompt.endswith(prefix)
    assert call.max_tokens == 200 - len(prefix)
    # Only the continuation is new work; the prefix was counted by whoever generated it.
    assert res.completion_tokens == be.generated_tokens == len(SOLUTION) - len(prefix)


async def test_bounded_reasoning_cuts_after_the_answer_and_counts_the_rest_hidden() -> None:
    be = FakeBackend(lambda p, i, r: SOLUTION + "\nmore chatter after the answer")
    res = await get_strategy("bounded_reasoning").run(
        with_verifier(PUZZLE, None), be, Budget(max_tokens=500), FAR
    )
    assert res.text == SOLUTION
    assert res.hidden_tokens > 0
    assert res.visible_tokens + res.hidden_tokens == be.generated_tokens


async def test_bounded_reasoning_forces_an_answer_when_the_budget_runs_out() -> None:
    def script(prompt: str, i: int, req: GenerationRequest) -> str:
        return (
            "(13-9)*(10-4) = 24" if prompt.endswith("Answer: ") else "13-9=4 (left: 4 4 10)\n" * 5
        )

    be = FakeBackend(script)
    res = await get_strategy("bounded_reasoning").run(
        with_verifier(PUZZLE, None), be, Budget(max_tokens=30), FAR
    )
    assert res.stop_reason == "budget"
    assert res.answer == "(13-9)*(10-4) = 24"
    assert len(be.calls) == 2
    assert res.visible_tokens + res.hidden_tokens == be.generated_tokens


async def test_best_of_n_draws_all_samples_in_one_call_and_keeps_the_verified_one() -> None:
    be = FakeBackend(whole(5))
    res = await get_strategy("best_of_n").run(
        with_verifier(PUZZLE, Game24Verifier()), be, Budget(samples=8), FAR
    )
    assert [r.n for r in be.calls] == [8]
    assert res.score == 1.0 and res.text == SOLUTION
    assert res.stop_reason == "verified"


async def test_best_of_n_without_a_verifier_takes_the_majority_answer() -> None:
    answers = ["Answer: 5", "Answer: 7", "Answer: 5", "Answer: 9"]
    be = FakeBackend(lambda p, i, r: answers[i % 4])
    res = await get_strategy("best_of_n").run(
        with_verifier(PUZZLE, None), be, Budget(samples=4), FAR
    )
    assert res.answer == "5"


async def test_self_consistency_stops_once_the_leader_is_settled() -> None:
    be = FakeBackend(lambda p, i, r: "Answer: 42")
    res = await get_strategy("self_consistency").run(
        with_verifier(Problem(text="What is 40+2?", prompt="What is 40+2?"), None),
        be,
        Budget(samples=16, batch_size=4),
        FAR,
    )
    assert res.stop_reason == "settled"
    assert res.samples == 4
    assert res.answer == "42"


async def test_self_consistency_keeps_sampling_while_answers_disagree() -> None:
    answers = ["Answer: 1", "Answer: 2", "Answer: 3", "Answer: 1"]
    be = FakeBackend(lambda p, i, r: answers[i % 4])
    res = await get_strategy("self_consistency").run(
        with_verifier(Problem(text="q", prompt="q"), None),
        be,
        Budget(samples=12, batch_size=4),
        FAR,
    )
    assert res.samples == 12
    assert res.stop_reason == "budget"
    assert res.answer == "1"


async def test_self_consistency_gives_up_when_every_sample_disagrees() -> None:
    counter = {"n": 0}

    def distinct(p: str, i: int, r: GenerationRequest) -> str:
        counter["n"] += 1
        return f"Answer: {counter['n']}"

    res = await get_strategy("self_consistency").run(
        with_verifier(Problem(text="q", prompt="q"), None),
        FakeBackend(distinct),
        Budget(samples=16, batch_size=4),
        FAR,
    )
    assert res.stop_reason == "dispersed" and res.samples == 4
    # The futility rule off: the same stream runs to the sample budget.
    counter["n"] = 0
    off = await STRATEGIES["self_consistency"](dispersed_share=0.0).run(
        with_verifier(Problem(text="q", prompt="q"), None),
        FakeBackend(distinct),
        Budget(samples=16, batch_size=4),
        FAR,
    )
    assert off.stop_reason == "budget" and off.samples == 16


async def test_the_settled_rule_keeps_sampling_a_scattered_vote_and_stops_a_unanimous_one() -> None:
    counter = {"n": 0}

    def distinct(p: str, i: int, r: GenerationRequest) -> str:
        counter["n"] += 1
        return f"Answer: {counter['n']}"

    settled = STRATEGIES["self_consistency"](rule="settled")
    problem = with_verifier(Problem(text="q", prompt="q"), None)
    scattered = await settled.run(
        problem, FakeBackend(distinct), Budget(samples=16, batch_size=4), FAR
    )
    assert scattered.stop_reason == "budget" and scattered.samples == 16
    same = await settled.run(
        problem, FakeBackend(lambda p, i, r: "Answer: 7"), Budget(samples=16, batch_size=4), FAR
    )
    assert same.stop_reason == "settled" and same.samples == 4 and same.answer == "7"


def test_an_unknown_stopping_rule_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="settled, beta"):
        STRATEGIES["self_consistency"](rule="fancy")  # type: ignore[arg-type]


async def test_self_consistency_stops_at_the_first_exactly_verified_answer() -> None:
    be = FakeBackend(lambda p, i, r: SOLUTION if i == 2 else WRONG)
    res = await get_strategy("self_consistency").run(
        with_verifier(PUZZLE, Game24Verifier()), be, Budget(samples=16, batch_size=4), FAR
    )
    assert res.stop_reason == "verified"
    assert res.samples == 4
    assert res.text == SOLUTION


def test_the_beta_criterion_needs_more_agreement_when_votes_are_split() -> None:
    assert prob_leader_ahead(4, 0) > 0.95
    assert prob_leader_ahead(3, 0) < 0.95
    assert prob_leader_ahead(6, 3) < prob_leader_ahead(6, 1) < prob_leader_ahead(6, 0)


async def test_beam_search_prunes_invalid_steps_and_finds_the_solution() -> None:
    be = FakeBackend(stepwise)
    res = await get_strategy("beam_search").run(
        with_verifier(PUZZLE, Game24Verifier()),
        be,
        Budget(beam_width=2, expansions=4, max_steps=6),
        FAR,
    )
    assert res.stop_reason == "verified"
    assert res.text == SOLUTION
    # One call per live state per depth; each call shares its state's prefix.
    assert all(r.n == 4 and r.stop == ["\n"] for r in be.calls)
    assert len(be.calls) == 4


async def test_every_strategy_returns_best_so_far_at_the_deadline() -> None:
    for name in STRATEGIES:
        be = FakeBackend(whole(1), latency_s=0.2)
        start = time.monotonic()
        res = await get_strategy(name).run(
            with_verifier(PUZZLE, Game24Verifier()),
            be,
            Budget(samples=8, batch_size=2),
            start + 0.05,
            clock=time.monotonic,
        )
        assert res.stop_reason == "deadline", name
        assert time.monotonic() - start < 0.19, f"{name} overran its deadline"


def test_unknown_strategy_names_list_the_valid_ones() -> None:
    with pytest.raises(StrategyError, match="valid: single_pass, bounded_reasoning"):
        get_strategy("dfs")


async def test_self_consistency_at_the_deadline_returns_the_vote_of_the_batches_it_got() -> None:
    # 20 characters at 10 ms each: every batch takes 0.2 s; the deadline falls in batch two.
    be = FakeBackend.canned(["x" * 11 + "Answer: 7"], token_latency_s=0.01)
    start = time.monotonic()
    res = await get_strategy("self_consistency").run(
        with_verifier(Problem(text="q", prompt="q"), None),
        be,
        Budget(samples=16, batch_size=2),
        start + 0.3,
    )
    assert res.stop_reason == "deadline"
    assert res.answer == "7" and res.samples == 2
    assert res.visible_tokens + res.hidden_tokens == be.generated_tokens == 40
    assert time.monotonic() - start < 0.38


async def test_beam_search_at_the_deadline_returns_its_best_partial_trace() -> None:
    be = FakeBackend(stepwise, token_latency_s=0.005)  # a step of ~22 tokens takes ~0.11 s
    start = time.monotonic()
    res = await get_strategy("beam_search").run(
        with_verifier(PUZZLE, Game24Verifier()), be, Budget(beam_width=2, expansions=4), start + 0.3
    )
    assert res.stop_reason == "deadline"
    assert res.text.startswith("13-9=4 (left: 4 4 10)") and res.answer is None
    assert res.visible_tokens + res.hidden_tokens == be.generated_tokens


async def test_beam_search_shares_each_state_prefix_and_dedupes_identical_proposals() -> None:
    be = FakeBackend(stepwise)
    res = await get_strategy("beam_search").run(
        with_verifier(PUZZLE, Game24Verifier()), be, Budget(beam_width=3, expansions=4), FAR
    )
    # Two distinct proposals per state (one valid, one invalid): after pruning and dedupe a
    # single state survives each depth, so there is exactly one call per depth.
    assert len(be.calls) == 4 and res.stop_reason == "verified"
    prompts = [r.prompt or "" for r in be.calls]
    assert all(b.startswith(a) for a, b in zip(prompts, prompts[1:], strict=False))
    assert res.samples == 16


async def test_beam_search_resamples_a_dead_frontier_instead_of_giving_up() -> None:
    calls = {"n": 0}

    def script(prompt: str, i: int, req: GenerationRequest) -> str:
        if i == 0:
            calls["n"] += 1
        if calls["n"] == 1:  # the first round proposes only invalid steps
            return "4+4=9 (left: 9 10 13)\n"
        return stepwise(prompt, 0, req)

    be = FakeBackend(script)
    seeded = Problem(text=PUZZLE.text, messages=PUZZLE.messages, seed=11)
    res = await get_strategy("beam_search").run(
        with_verifier(seeded, Game24Verifier()), be, Budget(beam_width=2, expansions=3), FAR
    )
    assert res.stop_reason == "verified" and res.text == SOLUTION
    assert be.calls[0].prompt == be.calls[1].prompt  # the same state again...
    assert be.calls[0].seed != be.calls[1].seed  # ...with a fresh seed


async def test_beam_search_backtracks_to_a_set_aside_state_when_its_beam_dies() -> None:
    dead_end = "4+9=13 (left: 10 13 13)"  # valid, but the script never continues it validly
    good = SOLUTION.split("\n")

    def script(prompt: str, i: int, req: GenerationRequest) -> str:
        if prompt.endswith(dead_end + "\n"):
            return "4+4=9 (left: 9 10 13)\n"
        if prompt.endswith(": 4 9 10 13\n"):
            return (good[0] if i == 3 else dead_end) + "\n"  # the dead end is proposed 3x
        return stepwise(prompt, 0, req)

    be = FakeBackend(script)
    # Without the value check the dead end looks valid, which is what this test needs.
    blind = Game24Verifier(value_check=False)
    res = await get_strategy("beam_search").run(
        with_verifier(PUZZLE, blind), be, Budget(beam_width=1, expansions=4, max_tokens=400), FAR
    )
    assert res.stop_reason == "verified" and res.text == SOLUTION
    # The root, the dead end (proposed most often, so expanded first), then, since a failed
    # expansion counts as a step back up, the set-aside sibling rather than the dead end again.
    assert (be.calls[1].prompt or "").endswith(dead_end + "\n")
    assert (be.calls[2].prompt or "").endswith(good[0] + "\n")


async def test_beam_search_with_the_value_check_never_expands_a_dead_end() -> None:
    dead_end = "4+9=13 (left: 10 13 13)"
    good = SOLUTION.split("\n")

    def script(prompt: str, i: int, req: GenerationRequest) -> str:
        if prompt.endswith(": 4 9 10 13\n"):
            return (good[0] if i == 3 else dead_end) + "\n"
        return stepwise(prompt, 0, req)

    be = FakeBackend(script)
    res = await get_strategy("beam_search").run(
        with_verifier(PUZZLE, Game24Verifier()),
        be,
        Budget(beam_width=1, expansions=4, max_tokens=400),
        FAR,
    )
    assert res.stop_reason == "verified" and res.text == SOLUTION
    assert not any((c.prompt or "").endswith(dead_end + "\n") for c in be.calls)


async def test_beam_search_gives_up_when_the_frontier_stays_dead() -> None:
    be = FakeBackend.canned(["4+4=9 (left: 9 10 13)\n"])
    res = await get_strategy("beam_search").run(
        with_verifier(PUZZLE, Game24Verifier()),
        be,
        Budget(beam_width=2, expansions=3, max_tokens=1000),
        FAR,
    )
    assert res.stop_reason == "exhausted" and res.text == ""
    assert len(be.calls) == MAX_EXPANSIONS_PER_STATE  # the root, then its re-samples
    assert res.hidden_tokens == be.generated_tokens


async def test_beam_search_without_a_verifier_votes_over_finished_answers() -> None:
    def script(prompt: str, i: int, req: GenerationRequest) -> str:
        if "step" not in prompt:
            return ["step a", "step b", "step c", "step a"][i] + "\n"
        return "Answer: 5\n" if "step a" in prompt or "step c" in prompt else "Answer: 6\n"

    be = FakeBackend(script)
    res = await get_strategy("beam_search").run(
        with_verifier(Problem(text="q", prompt="q\n"), None),
        be,
        Budget(beam_width=3, expansions=2),
        FAR,
    )
    assert res.answer == "5" and res.stop_reason == "answered"


async def test_beam_search_stops_when_its_token_budget_is_spent() -> None:
    be = FakeBackend.canned(["13-9=4 (left: 4 4 10)\n"])  # valid but never finishing
    budget = Budget(beam_width=1, expansions=2, max_tokens=40, max_steps=20)
    res = await get_strategy("beam_search").run(with_verifier(PUZZLE, None), be, budget, FAR)
    assert res.stop_reason == "budget"
    assert be.generated_tokens <= 40 * 2 + 2 * 21  # at most one round past the budget


def test_fake_backend_canned_texts_follow_sample_index_and_prompt() -> None:
    import asyncio

    be = FakeBackend.canned({"alpha": ["A1", "A2"], "": ["Z"]})
    req = GenerationRequest(prompt="alpha?", n=3)
    res = asyncio.run(be.generate(req))
    assert [c.text for c in res.completions] == ["A1", "A2", "A1"]
    res2 = asyncio.run(be.generate(GenerationRequest(prompt="other", n=1, stop=["x"])))
    assert res2.completions[0].text == "Z"
    assert be.generated_tokens == 2 + 2 + 2 + 1


def test_budgets_come_from_config_with_request_overrides_and_fail_with_the_valid_fields() -> None:
    from policies.registry import budget_for

    cfg = Budget(samples=16, batch_size=4, max_tokens=96)
    defaults = {"self_consistency": cfg, "best_of_n": cfg}
    b = budget_for("self_consistency", defaults, {"samples": 8})
    assert (b.samples, b.batch_size, b.max_tokens) == (8, 4, 96)
    with pytest.raises(StrategyError, match="valid: max_tokens"):
        budget_for("best_of_n", defaults, {"beams": 2})
    with pytest.raises(StrategyError, match="samples"):
        budget_for("best_of_n", defaults, {"samples": 0})
    with pytest.raises(StrategyError, match="valid: single_pass"):
        budget_for("mcts", defaults, {})


def fixing(prompt: str, i: int, req: GenerationRequest) -> str:
    """Greedy invents arithmetic at step 2; a sampled continuation after step 1 is right."""
    lines = SOLUTION.split("\n")
    if req.temperature == 0.0:
        return lines[0] + "\n10-4=7 (left: 4 7)\n4*7=24 (left: 24)\nAnswer: 4*7 = 24"
    if prompt.endswith(lines[0] + "\n"):
        return "\n".join(lines[1:]) + "\nignored chatter"
    return WRONG


async def test_bounded_reasoning_backs_up_to_its_last_valid_line_with_an_exact_checker() -> None:
    be = FakeBackend(fixing)
    res = await get_strategy("bounded_reasoning").run(
        with_verifier(PUZZLE, Game24Verifier()), be, Budget(max_tokens=200, temperature=0.0), FAR
    )
    assert res.text == SOLUTION and res.stop_reason == "verified"
    assert [c.temperature for c in be.calls] == [0.0, 0.8]
    assert (be.calls[1].prompt or "").endswith("(left: 4 4 10)\n")
    assert res.samples == 2
    assert res.visible_tokens == len(SOLUTION)
    assert res.visible_tokens + res.hidden_tokens == be.generated_tokens


async def test_bounded_reasoning_without_a_checker_is_one_greedy_chain() -> None:
    be = FakeBackend(fixing)
    res = await get_strategy("bounded_reasoning").run(
        with_verifier(PUZZLE, None), be, Budget(max_tokens=200, temperature=0.0), FAR
    )
    assert len(be.calls) == 1 and res.answer == "4*7 = 24" and res.stop_reason == "answered"


async def test_bounded_reasoning_corrections_stay_within_the_thinking_budget() -> None:
    be = FakeBackend.canned([WRONG])  # every continuation is wrong from its first line
    res = await get_strategy("bounded_reasoning").run(
        with_verifier(PUZZLE, Game24Verifier()), be, Budget(max_tokens=150, temperature=0.0), FAR
    )
    assert res.stop_reason == "budget" and res.score == 0.0
    forced = be.calls[-1].max_tokens if (be.calls[-1].prompt or "").endswith("Answer: ") else 0
    assert be.generated_tokens <= 150 + forced
    assert res.visible_tokens + res.hidden_tokens == be.generated_tokens


async def test_self_consistency_does_not_settle_on_answers_an_exact_verifier_rejected() -> None:
    be = FakeBackend(lambda p, i, r: WRONG)  # the same wrong answer every time
    res = await get_strategy("self_consistency").run(
        with_verifier(PUZZLE, Game24Verifier()), be, Budget(samples=12, batch_size=4), FAR
    )
    assert res.stop_reason == "budget" and res.samples == 12
    unchecked = await get_strategy("self_consistency").run(
        with_verifier(PUZZLE, None),
        FakeBackend(lambda p, i, r: WRONG),
        Budget(samples=12, batch_size=4),
        FAR,
    )
    assert unchecked.stop_reason == "settled" and unchecked.samples == 4
