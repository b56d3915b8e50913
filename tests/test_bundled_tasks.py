"""Bundled tasks: exact solvers, traces, held-out splits and the chat template."""

from __future__ import annotations

import random
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.bundled.tasks import arithmetic, game24
from backends.bundled.tokenizer import build_tokenizer
from lab.bundled.data import HELDOUT_ROWS, Mixture, game24_splits
from tasks.bundled import model_prompt, parse_task


def test_every_solution_of_a_known_puzzle_checks_out_step_by_step() -> None:
    traces = game24.solve((4, 9, 10, 13))
    assert any(t.endswith("Answer: (13-9)*(10-4) = 24") for t in traces)
    for t in traces:
        lines = t.splitlines()
        assert all(game24.check_steps((4, 9, 10, 13), lines))
        assert game24.check_answer((4, 9, 10, 13), t)


def test_a_puzzle_that_needs_fractions_is_solved_with_exact_fractions() -> None:
    traces = game24.solve((1, 3, 4, 6))
    assert traces, "6/(1-3/4) = 24 needs fractions"
    frac = [t for t in traces if "(3/4)" in t]
    assert frac and all(all(game24.check_steps((1, 3, 4, 6), t.splitlines())) for t in frac)
    assert game24.parse_number("(8/3)") == Fraction(8, 3)


def test_unsolvable_puzzles_have_no_trace() -> None:
    assert not game24.is_solvable((1, 1, 1, 1))
    assert game24.solve((1, 1, 1, 1)) == ()


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (["13-9=4 (left: 4 4 10)", "10-4=6 (left: 4 6)", "4*6=24 (left: 24)"], [1, 1, 1]),
        (["13-9=5 (left: 4 5 10)"], [0]),  # wrong arithmetic
        (["13-9=4 (left: 4 10)"], [0]),  # wrong left list
        (["13-8=5 (left: 4 5 10)"], [0]),  # 8 is not available
        (["13-9=4 (left: 4 4 10)", "4+6=12 (left: 4 12)", "4*6=24 (left: 24)"], [1, 0, 0]),
        (["Answer: (13-9)*(10-4) = 24"], [1]),
        (["Answer: 13+9+10-4-4 = 24"], [0]),  # numbers used wrongly
    ],
)
def test_process_check_rejects_the_first_wrong_step_and_everything_after(
    steps: list[str], expected: list[int]
) -> None:
    assert [int(x) for x in game24.check_steps((4, 9, 10, 13), steps)] == expected


def test_answer_check_needs_exactly_the_four_numbers_and_24() -> None:
    assert game24.check_answer((4, 9, 10, 13), "Answer: (10-4)*(13-9) = 24")
    assert game24.check_answer((4, 9, 10, 13), "Answer: (10-4)*(13-9)")
    assert not game24.check_answer((4, 9, 10, 13), "Answer: (10-4)*(13-9)+1-1-1 = 24")
    assert not game24.check_answer((4, 9, 10, 13), "Answer: 4*6 = 24")
    assert not game24.check_answer((4, 9, 10, 13), "Answer: __import__('os') = 24")
    assert not game24.check_answer((4, 9, 10, 13), "no answer line")


def _assert_step_is_right(line: str) -> tuple[str, str]:
    """Checks one scratchpad line's arithmetic; returns its left operand and result text.

    An inline split product (``3700*7=1200+0940=1150``) must have the units and tens parts
    in the middle, each right, and their sum on the right.
    """
    lhs, *middle, rhs = line.split("=")
    if middle:
        value_text, m_text = lhs.split("*")
        value, m = arithmetic.unfixed(value_text), int(m_text)
        units, tens = (arithmetic.unfixed(x) for x in middle[0].split("+"))
        assert units == value % 10 * m and tens == (value - value % 10) * m
        assert units + tens == value * m == arithmetic.unfixed(rhs)
        return value_text, rhs
    op = "*" if "*" in lhs else ("+" if "+" in lhs else "-")
    a_text, b_text = lhs.split(op)
    a = arithmetic.unfixed(a_text)
    b = int(b_text) if op == "*" else arithmetic.unfixed(b_text)
    assert {"+": a + b, "-": a - b, "*": a * b}[op] == arithmetic.unfixed(rhs)
    return a_text, rhs


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10**6), operands=st.integers(2, 8))
def test_arithmetic_scratchpad_steps_are_each_right_and_end_in_the_answer(
    seed: int, operands: int
) -> None:
    q = arithmetic.random_question(random.Random(seed), operands)
    assert q.operands == operands
    assert q.answer() == eval(q.expression())  # noqa: S307 - digits and + - * only
    lines = q.scratchpad().splitlines()
    assert lines[-1] == f"Answer: {q.answer()}"

    for line in lines[:-1]:
        a_text, rhs = _assert_step_is_right(line)
        # Every scratchpad number is 4 digits wide, so digits line up at fixed offsets.
        assert len(a_text) == len(rhs) == arithmetic.WIDTH
    total = arithmetic.unfixed(lines[-2].split("=")[1])
    assert total == abs(q.answer())


def test_arithmetic_scratchpad_of_the_worked_example_is_exactly_as_documented() -> None:
    q = arithmetic.parse_expression("52+69-70*3")
    assert q is not None
    assert q.scratchpad().splitlines() == [
        "0700*3=0120",
        "2500+9600=1210",
        "1210-0120=1199",
        "0000-1199=9800",
        "Answer: -89",
    ]


@pytest.mark.parametrize(
    ("text", "kind", "prompt"),
    [
        ("4 9 10 13", "game24", "<24> 4 9 10 13\n"),
        ("Use 13 10 9 4 to make 24", "game24", "<24> 4 9 10 13\n"),
        ("What is 52+69-70*3?", "arithmetic", "<calc> 52+69-70*3\n"),
        ("52 + 69", "arithmetic", "<calc> 52+69\n"),
        ("What is the capital of France?", "open", "<calc> What is the capital of France?\n"),
        ("1 2 3 99", "open", "<calc> 12399\n"),
    ],
)
def test_task_detection_and_model_prompt(text: str, kind: str, prompt: str) -> None:
    assert parse_task(text).kind == kind
    assert model_prompt(text) == prompt


@settings(max_examples=150, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=40),
        st.lists(st.integers(0, 20), min_size=3, max_size=5).map(lambda x: " ".join(map(str, x))),
        st.lists(st.integers(1, 13), min_size=4, max_size=4).map(
            lambda x: "Use " + " ".join(map(str, x)) + " to make 24."
        ),
        st.builds(
            lambda s: "What is " + s + "?",
            st.from_regex(r"\d{1,2}([+*-]\d{1,2}){0,4}", fullmatch=True),
        ),
    )
)
def test_the_chat_template_gives_the_same_prompt_as_python(text: str) -> None:
    tok = _tokenizer()
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == model_prompt(text)


_TOK: list[object] = []


def _tokenizer():  # type: ignore[no-untyped-def]
    if not _TOK:
        _TOK.append(build_tokenizer())
    return _TOK[0]


def test_held_out_puzzles_never_appear_in_training(game24_csv: Path) -> None:
    splits = game24_splits(game24_csv)
    held_rows = {splits.csv_rows[i] for i in [*range(100), *range(900, 1000)]}
    assert held_rows <= set(splits.heldout)
    assert not set(splits.train) & set(splits.heldout)
    assert len(splits.train) + len(splits.heldout) == 1362
    mix = Mixture(splits.train, seed=3)
    held_prompts = {model_prompt(game24.puzzle_text(p)) for p in splits.heldout}
    banned = {model_prompt(q.text()) for q in arithmetic.heldout_questions(200)}
    for step in range(40):
        for prompt, _ in mix.batch(step / 40, 16):
            assert prompt not in held_prompts
            assert prompt not in banned


def test_value_check_rejects_a_right_step_into_a_dead_end_and_keeps_a_live_one() -> None:
    from tasks.game24_checker import Game24Verifier

    # 13-9=4 leaves 4 4 10, from which (10-4)*4 = 24; 4+9=13 leaves 10 13 13, a dead end.
    live = ["13-9=4 (left: 4 4 10)"]
    dead = ["4+9=13 (left: 10 13 13)"]
    assert game24.check_steps((4, 9, 10, 13), dead) == [True]
    assert game24.check_steps((4, 9, 10, 13), dead, require_reachable=True) == [False]
    assert game24.check_steps((4, 9, 10, 13), live, require_reachable=True) == [True]
    v = Game24Verifier()
    assert v.score_steps("4 9 10 13", dead) == [0.0]
    assert v.score_steps("4 9 10 13", live) == [1.0]
    assert Game24Verifier(value_check=False).score_steps("4 9 10 13", dead) == [1.0]


@settings(max_examples=400, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    operands=st.integers(2, 8),
    split=st.sampled_from([0.0, 0.5, 1.0]),
    inline=st.booleans(),
)
def test_a_random_fold_order_with_or_without_split_products_is_a_valid_scratchpad(
    seed: int, operands: int, split: float, inline: bool
) -> None:
    q = arithmetic.random_question(random.Random(seed), operands)
    order = random.Random(seed + 1)
    lines = q.scratchpad(order, split_products=split, inline_split=inline).splitlines()
    assert lines[-1] == f"Answer: {q.answer()}"
    for line in lines[:-1]:
        _assert_step_is_right(line)


def test_split_products_give_a_two_digit_product_a_second_path() -> None:
    q = arithmetic.parse_expression("52+73*7")
    assert q is not None
    pads = {q.scratchpad(random.Random(i), split_products=0.5) for i in range(20)}
    one_line = [p for p in pads if "3700*7=1150" in p]
    split = [p for p in pads if "0700*7=0940\n3000*7=1200\n0940+1200=1150" in p]
    assert one_line and split and len(one_line) + len(split) == len(pads)
    # Off, every product keeps its one line; always, none does.
    assert all("3700*7=1150" in q.scratchpad(random.Random(i)) for i in range(20))
    assert not any("3700*7=1150" in q.scratchpad(random.Random(i), 1.0) for i in range(20))


def test_an_inline_split_product_writes_its_parts_and_sum_on_one_line() -> None:
    q = arithmetic.parse_expression("52+73*7-4*3")
    assert q is not None
    lines = q.scratchpad(random.Random(0), split_products=1.0, inline_split=True).splitlines()
    assert "3700*7=1200+0940=1150" in lines
    # A one-digit value has no tens part to split off.
    assert "4000*3=2100" in lines


def test_split_products_need_the_random_fold_order_stream() -> None:
    with pytest.raises(ValueError, match="random_fold_order"):
        Mixture([], seed=0, p_game24=0.0, split_products=0.5)
    with pytest.raises(ValueError, match="probability"):
        Mixture([], seed=0, p_game24=0.0, random_fold_order=True, split_products=1.5)


def test_random_fold_orders_take_different_paths_to_one_answer() -> None:
    q = arithmetic.parse_expression("52+69-70*3+4*5-8")
    assert q is not None
    pads = {q.scratchpad(random.Random(i)) for i in range(30)}
    assert len(pads) > 5
    assert all(p.endswith(f"Answer: {q.answer()}") for p in pads)
    # Without an order: products in question order, then the fold from the first term.
    assert q.scratchpad().splitlines()[:3] == ["0700*3=0120", "4000*5=0200", "2500+9600=1210"]


def test_held_out_arithmetic_sets_of_any_size_are_nested_prefixes_of_one_fixed_pool() -> None:
    small, large = arithmetic.heldout_questions(10), arithmetic.heldout_questions(50)
    for k in range(2, 9):
        of_small = [q for q in small if q.operands == k]
        of_large = [q for q in large if q.operands == k]
        assert len(of_small) == 10 and of_large[:10] == of_small
    pool = {q.expression() for q in arithmetic.heldout_questions(arithmetic.HELDOUT_POOL_SIZE)}
    assert {q.expression() for q in large} <= pool


def test_asking_for_more_held_out_questions_than_the_pool_holds_is_refused() -> None:
    with pytest.raises(ValueError, match="200 questions per operand count"):
        arithmetic.heldout_questions(arithmetic.HELDOUT_POOL_SIZE + 1)


def test_the_bundled_router_was_fit_on_the_calibration_data_disjoint_from_every_eval_pool(
    game24_csv: Path, tmp_path: Path
) -> None:
    from difficulty.model import RouterModel, bundled_router_path
    from lab.bundled.calibration import write_calibration_data
    from router.commands.calibration_data import load_items

    data = tmp_path / "calibration.jsonl"
    write_calibration_data(game24_csv, data)
    items, data_hash = load_items(data)
    card = RouterModel.load(bundled_router_path()).card
    assert card.training["data_hash"] == data_hash, "refit the bundled router: its data changed"
    splits = game24_splits(game24_csv)
    rows = splits.csv_rows
    eval_puzzles = {game24.puzzle_text(rows[i]) for r in HELDOUT_ROWS for i in r if i < len(rows)}
    eval_arith = {q.text() for q in arithmetic.heldout_questions(arithmetic.HELDOUT_POOL_SIZE)}
    texts = {i.text for i in items}
    assert not texts & eval_puzzles and not texts & eval_arith
    assert len(texts) == len(items) > 300
