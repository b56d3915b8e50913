"""Answer formats for task profiles: final-answer extraction, voting keys and grading.

A task profile names one of ``ANSWER_FORMATS`` (``get_format(name)``). The router uses it to

1. ``extract(text)``: pull the final answer out of a model's free-text response, so that
   self-consistency can vote on ``normalize(answer)`` keys (``extract_key(text)`` does both)
   and best-of-N can choose among answers;
2. ``equivalent(answer, reference)``: grade an answer against a reference answer
   (calibration runs and benchmarks, e.g. ``read_gsm8k()`` / ``read_math500()``).

Extraction precedence (``answer_spans``), the first span a format can read wins:

1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces, nesting allowed);
2. the last GSM8K ``#### x`` line;
3. the last answer marker: ``final answer is``/``Final Answer:``/``**Final Answer**:``,
   ``the answer is``, ``Answer:`` (up to three markers are tried, latest first); the span is
   the rest of that line, or the next non-empty line after a bare ``**Final Answer**`` heading;
4. the last non-empty line when it reads ``... = x``: the text after its last ``=``;
5. the format's own fallback: ``number`` the last number in the response; ``latex`` the last
   math span (``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``); ``choice`` the last line
   that is only a letter, else the last ``(C)``/``**C**``/``option C``; ``exact`` the last
   non-empty line; ``code`` has its own rule (the last fenced code block); ``none`` extracts
   nothing.

Every public method is total: it never raises and returns ``None``/``False`` for text it cannot
read. Work is bounded: only the last ``MAX_SCAN_CHARS`` characters of a response are scanned,
answers are cut to ``MAX_ANSWER_CHARS``, numbers with more than ``MAX_NUMBER_DIGITS`` digits or
an exponent beyond ``MAX_EXPONENT`` are not numbers, and LaTeX goes to math-verify only when it
is short, shallowly nested and of bounded magnitude, under a per-call deadline that works in any
thread (math-verify's own signal-based timeouts are switched off: they fail outside the main
thread and would cancel the process's other ``SIGALRM`` timers).

Modules: ``spans`` (where a response states its answer), ``base`` (the ``AnswerFormat`` class),
``numbers``, ``choice``, ``text`` (``exact``, ``code``, ``none``), ``latex`` with ``mathverify``
(the math-verify bridge), ``latex_safety`` and ``deadline`` (what keeps it bounded), and
``references`` (the GSM8K / MATH-500 readers). This module holds the registry.
"""

from __future__ import annotations

# Names imported as ``X as X`` are re-exported for callers and tests but, like in the former
# single module, are not part of ``__all__``.
from tasks.answers.answer_line import AnswerLineFormat
from tasks.answers.base import AnswerFormat
from tasks.answers.choice import ChoiceFormat
from tasks.answers.deadline import DeadlineExceeded
from tasks.answers.deadline import _with_deadline as _with_deadline
from tasks.answers.latex import LatexFormat, last_math_span
from tasks.answers.latex_safety import LATEX_MAX_CHARS as LATEX_MAX_CHARS
from tasks.answers.latex_safety import LATEX_MAX_DEPTH as LATEX_MAX_DEPTH
from tasks.answers.latex_safety import LATEX_MAX_DIGIT_RUN as LATEX_MAX_DIGIT_RUN
from tasks.answers.math import MathFormat
from tasks.answers.mathverify import LATEX_DEADLINE_S as LATEX_DEADLINE_S
from tasks.answers.mathverify import math_verify_available, parse_latex
from tasks.answers.numbers import MAX_EXPONENT as MAX_EXPONENT
from tasks.answers.numbers import MAX_NUMBER_DIGITS as MAX_NUMBER_DIGITS
from tasks.answers.numbers import NumberFormat, canonical_number, first_number, last_number
from tasks.answers.references import GSM8K_FILE as GSM8K_FILE
from tasks.answers.references import MATH500_FILE as MATH500_FILE
from tasks.answers.references import (
    ReferenceItem,
    gsm8k_final_answer,
    read_gsm8k,
    read_math500,
    shared_data_dir,
)
from tasks.answers.spans import MAX_ANSWER_CHARS as MAX_ANSWER_CHARS
from tasks.answers.spans import MAX_SCAN_CHARS as MAX_SCAN_CHARS
from tasks.answers.spans import answer_spans, last_boxed
from tasks.answers.text import CodeFormat, ExactFormat, NoAnswerFormat, last_code_block

ANSWER_FORMATS: dict[str, AnswerFormat] = {
    fmt.name: fmt
    for fmt in (
        NumberFormat(),
        LatexFormat(),
        ChoiceFormat(),
        ExactFormat(),
        CodeFormat(),
        NoAnswerFormat(),
        AnswerLineFormat(),
        MathFormat(),
    )
}


def get_format(name: str) -> AnswerFormat:
    """The registered answer format called ``name`` (case-insensitive).

    Raises ``ValueError`` naming the valid formats when there is none: task profiles are user
    configuration, so the message must say what would have been accepted.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    fmt = ANSWER_FORMATS.get(key) if isinstance(key, str) else None
    if fmt is None:
        valid = ", ".join(sorted(ANSWER_FORMATS))
        raise ValueError(f"unknown answer format {name!r}; valid formats: {valid}")
    return fmt


__all__ = [
    "ANSWER_FORMATS",
    "AnswerFormat",
    "AnswerLineFormat",
    "MathFormat",
    "ChoiceFormat",
    "CodeFormat",
    "DeadlineExceeded",
    "ExactFormat",
    "LatexFormat",
    "NoAnswerFormat",
    "NumberFormat",
    "ReferenceItem",
    "answer_spans",
    "canonical_number",
    "first_number",
    "get_format",
    "gsm8k_final_answer",
    "last_boxed",
    "last_code_block",
    "last_math_span",
    "last_number",
    "math_verify_available",
    "parse_latex",
    "read_gsm8k",
    "read_math500",
    "shared_data_dir",
]
