"""``answer_line``: the bundled model's answers, stated on an ``Answer:`` line.

The bundled experts end every solution with ``Answer: <value>`` and write 4-digit
scratchpad numbers before it, so any fallback (the last number of the text) would vote for
scratchpad digits. This format reads only the last ``Answer:`` line, else a GSM8K ``#### n``
line, else the last ``\\boxed{}``; keys are reduced fractions for numbers, else the text
without whitespace (the rules the bundled router was trained with).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from tasks.answers.base import AnswerFormat
from tasks.answers.spans import _tail, last_boxed

_ANSWER = re.compile(r"Answer:\s*(.+)")
_GSM = re.compile(r"####\s*([^\n]+)")
_FRAC = re.compile(r"\\(?:d?frac)\{([^}]*)\}\{([^}]*)\}")
# Fraction() of a string with thousands of digits is slow and unbounded: no answer has more.
_MAX_NUMBER_CHARS = 64


def _to_number(s: str) -> Fraction | None:
    t = s.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    t = _FRAC.sub(r"\1/\2", t)
    if len(t) > _MAX_NUMBER_CHARS or not t.isascii():
        return None
    try:
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


@dataclass(frozen=True)
class AnswerLineFormat(AnswerFormat):
    """Answers after the last ``Answer:`` (else ``####``, else ``\\boxed{}``); no fallback."""

    name: str = "answer_line"
    description: str = "the last 'Answer:' line (the bundled model's format); numbers as fractions"

    def _extract(self, text: str) -> str | None:
        tail = _tail(text)
        for pattern in (_ANSWER, _GSM):
            found = pattern.findall(tail)
            if found:
                return str(found[-1]).strip()
        boxed = last_boxed(tail)
        return boxed.strip() if boxed is not None else None

    def _states_answer(self, text: str) -> bool:
        return text.strip().startswith("Answer:")

    def _normalize(self, answer: str) -> str | None:
        num = _to_number(answer)
        if num is not None:
            return str(num)
        return re.sub(r"\s+", "", answer) or None
