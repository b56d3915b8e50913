"""``math``: GSM8K- and MATH-style answers in one format.

A solution states its answer as a number ("#### 72", "The answer is 72 clips") or as
LaTeX ("\\boxed{\\frac{1}{2}}"). ``extract`` takes the first answer span the ``latex`` format
can read (boxed, ``####``, answer markers, a last ``= x`` line), else the last math span,
else the last number (a model that just ends on its result); keys are canonical numbers when
the answer is one, else math-verify's form; grading is the ``latex`` format's (numbers
compare as numbers there too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tasks.answers.base import AnswerFormat
from tasks.answers.latex import LatexFormat, _clean_latex_span, last_math_span
from tasks.answers.numbers import canonical_number, first_number, last_number
from tasks.answers.spans import answer_spans

_LATEX = LatexFormat()


@dataclass(frozen=True)
class MathFormat(AnswerFormat):
    """Numbers or LaTeX, whichever the response states (see the module docstring)."""

    name: str = "math"
    description: str = "GSM8K numbers or MATH LaTeX; numeric or math-verify equivalence"

    def _extract(self, text: str) -> str | None:
        for span in answer_spans(text):
            answer = _clean_latex_span(span)
            if answer:
                return _number_with_words(answer) or answer
        math_span = last_math_span(text)
        if math_span:
            return math_span
        value = last_number(text)
        return None if value is None else canonical_number(value)

    def _normalize(self, answer: str) -> str | None:
        number = _number_with_words(answer.strip().rstrip("."))
        if number is not None:
            return number
        return _LATEX.normalize(answer)

    def _equivalent(self, a: str, b: str) -> bool:
        key_a, key_b = self._normalize(a), self._normalize(b)
        if key_a is not None and key_a == key_b:
            return True
        return _LATEX.equivalent(a, b)


_NUMBER_THEN_WORDS = re.compile(r"^[$€£]?\s*-?[\d,]*\.?\d+\s*%?(?:\s+[A-Za-z][A-Za-z' -]*)?[.!]?$")


def _number_with_words(text: str) -> str | None:
    """The canonical number of "72", "$1,234.50", "25%" or "72 clips in all" (a number, then
    only words: its unit), else None."""
    if not _NUMBER_THEN_WORDS.match(text.strip()):
        return None
    value = first_number(text)
    return None if value is None else canonical_number(value)
