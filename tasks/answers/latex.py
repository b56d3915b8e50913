"""The ``latex`` format: LaTeX answers (MATH style), graded by math-verify."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from tasks.answers.base import AnswerFormat
from tasks.answers.mathverify import (
    _UNESCAPED_DOLLAR,
    _sympy_key,
    _verify_cached,
    parse_latex,
)
from tasks.answers.spans import MAX_ANSWER_CHARS, _clip, _first_sentence, _tail, answer_spans

log = logging.getLogger(__name__)

_LATEX_SPACING = re.compile(r"\\[,;:!]|\\ |~|\\quad|\\qquad")
_LATEX_SIZING = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])|\\displaystyle")
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_MATH_SPAN = re.compile(
    rf"\$\$(.{{1,{MAX_ANSWER_CHARS}}}?)\$\$|\\\[(.{{1,{MAX_ANSWER_CHARS}}}?)\\\]"
    rf"|\\\((.{{1,{MAX_ANSWER_CHARS}}}?)\\\)|(?<!\\)\$([^$]{{1,{MAX_ANSWER_CHARS}}}?)(?<!\\)\$",
    re.DOTALL,
)


def _latex_text_key(answer: str) -> str | None:
    """A cheap textual key of a LaTeX answer: no ``$``, spacing, ``\\left``/``\\right``,
    ``\\text{}`` wrappers or whitespace; ``\\dfrac``/``\\tfrac`` as ``\\frac``. None when empty.
    """
    text = _UNESCAPED_DOLLAR.sub("", answer)
    text = _LATEX_SPACING.sub("", _LATEX_SIZING.sub("", text))
    text = _LATEX_TEXT.sub(r"\1", text).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = "".join(text.split()).rstrip(".")
    return text or None


def _clean_latex_span(span: str) -> str:
    """A LaTeX answer from an extracted span: the first math span's contents when the span
    has one ("$\\frac{1}{2}$. I hope it is correct." → ``\\frac{1}{2}``), else the span up to
    its first sentence end; markdown emphasis and trailing punctuation dropped.
    """
    span = span.strip(" \t*_")
    math_span = _MATH_SPAN.search(span)
    if math_span:
        span = next(g for g in math_span.groups() if g is not None)
    else:
        span = _first_sentence(span)
    return _clip(span.strip(" \t*_$").rstrip(".,;:").strip())


def last_math_span(text: str) -> str | None:
    """The contents of the last ``$...$``/``$$...$$``/``\\(...\\)``/``\\[...\\]`` span, or None."""
    found = None
    for found in _MATH_SPAN.finditer(_tail(text)):  # noqa: B007 - keeps the last
        pass
    if found is None:
        return None
    contents = next(g for g in found.groups() if g is not None)
    return _clip(contents) or None


@dataclass(frozen=True)
class LatexFormat(AnswerFormat):
    """Mathematical answers in LaTeX (MATH style), graded by math-verify's equivalence.

    ``extract`` returns the answer's LaTeX (``\\frac{1}{2}``, ``\\left( 3, \\frac{\\pi}{2}
    \\right)``). ``normalize`` is sympy's printing of math-verify's parsed expression, with
    numbers evaluated, so ``0.5``, ``\\frac{1}{2}`` and ``\\dfrac{2}{4}`` share a key; text that
    math-verify cannot parse is keyed by its squashed LaTeX. ``equivalent(answer, reference)``
    is true on equal textual keys, else when math-verify verifies them (``reference`` as gold).
    Without math-verify installed, keys and grading fall back to the textual key.
    """

    name: str = "latex"
    description: str = "LaTeX / \\boxed{} math; equivalence by math-verify"

    def _extract(self, text: str) -> str | None:
        for span in answer_spans(text):
            answer = _clean_latex_span(span)
            if answer:
                return answer
        return last_math_span(text)

    def _normalize(self, answer: str) -> str | None:
        parsed = parse_latex(answer)
        if parsed is not None:
            key = _sympy_key(next(item for item in parsed if not isinstance(item, str)))
            if key is not None:
                return key
        return _latex_text_key(answer)

    def verify(self, answer: str, reference: str) -> bool:
        """math-verify's verdict alone, without the textual shortcut of ``equivalent``.

        False when either side cannot be parsed (or is screened out), or past the deadline.
        """
        if not isinstance(answer, str) or not isinstance(reference, str):
            return False
        try:
            return _verify_cached(_clip(answer), _clip(reference))
        except Exception:  # total by contract (DeadlineExceeded included)
            log.debug("answer format latex: verify failed", exc_info=True)
            return False

    def _equivalent(self, a: str, b: str) -> bool:
        key = _latex_text_key(a)
        if key is not None and key == _latex_text_key(b):
            return True
        return self.verify(a, b)
