"""Numeric final answers: extraction (``Answer:``, GSM8K ``#### n``, ``\\boxed{}``) and checking.

Self-consistency votes on ``normalize_answer(extract_answer(text))``; the checker compares
numerically with a reference when one is known (benchmarks), and for the bundled
arithmetic task it can compute the reference from the question itself.
"""

from __future__ import annotations

import re
from fractions import Fraction

from backends.verifiers.base import Verifier
from tasks.bundled import parse_task

_ANSWER = re.compile(r"Answer:\s*(.+)")
_GSM = re.compile(r"####\s*([^\n]+)")
#: longest numeric answer read as a number (longer ones are compared as text)
_MAX_NUMBER_CHARS = 64
_BIG_EXPONENT = re.compile(r"[eE][-+]?0*[0-9]{4,}")


def _boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start == -1:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a response: last ``Answer:`` line, else ``#### n``, else boxed."""
    found = _ANSWER.findall(text)
    if found:
        return found[-1].strip()
    gsm = _GSM.findall(text)
    if gsm:
        return gsm[-1].strip()
    boxed = _boxed(text)
    return boxed.strip() if boxed is not None else None


def _to_number(s: str) -> Fraction | None:
    t = s.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    t = re.sub(r"\\(?:d?frac)\{([^}]*)\}\{([^}]*)\}", r"\1/\2", t)
    # Fraction() reads other scripts' digits and exponents of any size ("1e99999999" is a
    # hundred-million-digit number that str() then refuses): no answer is either.
    if len(t) > _MAX_NUMBER_CHARS or not t.isascii() or _BIG_EXPONENT.search(t):
        return None
    try:
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


def normalize_answer(answer: str | None) -> str | None:
    """A canonical string for voting: numbers as reduced fractions, else squashed text."""
    if answer is None:
        return None
    num = _to_number(answer)
    if num is not None:
        return str(num)
    squashed = re.sub(r"\s+", "", answer)
    return squashed or None


def answers_match(candidate: str | None, reference: str | None) -> bool:
    """True when both normalise to the same answer."""
    a, b = normalize_answer(candidate), normalize_answer(reference)
    return a is not None and a == b


def arithmetic_reference(problem: str) -> str | None:
    """The exact answer of a bundled arithmetic question, or None for other text."""
    task = parse_task(problem)
    if task.kind == "arithmetic" and task.question is not None:
        return str(task.question.answer())
    return None


class NumericAnswerVerifier(Verifier):
    """1.0 when the extracted final answer equals the reference numerically, else 0.0.

    Without a ``reference`` it falls back to ``arithmetic_reference(problem)`` when
    ``solve_arithmetic`` is on (benchmarks); serving leaves it off, so arithmetic plays the
    part of open math where no checker exists.
    """

    name = "numeric"
    exact = True

    def __init__(self, solve_arithmetic: bool = False) -> None:
        self.solve_arithmetic = solve_arithmetic

    def score(self, problem: str, candidate: str, reference: str | None = None) -> float:
        """1.0 for a matching answer, 0.0 otherwise (also when no reference is known)."""
        ref = reference
        if ref is None and self.solve_arithmetic:
            ref = arithmetic_reference(problem)
        if ref is None:
            return 0.0
        return 1.0 if answers_match(extract_answer(candidate), ref) else 0.0
