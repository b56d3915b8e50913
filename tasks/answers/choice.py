"""The ``choice`` format: multiple-choice letters."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tasks.answers.base import AnswerFormat
from tasks.answers.spans import _clip, _strip_text_commands, _tail, answer_spans

# "option C", "choice is (c)"; a bare lower-case letter only at a clause end ("choice a prime").
_CHOICE_NAMED = re.compile(
    r"\b(?i:option|choice)(?:[ \t]+is)?[ \t]*:?[ \t]*"
    r"(?:\(([A-Za-z])\)|([A-Z])(?![A-Za-z])|([a-z])(?=[ \t]*(?:[.,;:!)]|$)))"
)
_CHOICE_MARKED = re.compile(
    r"\(([A-Za-z])\)|\[([A-Za-z])\]|\*\*\(?([A-Za-z])\)?[.):]?\*\*|(?<![A-Za-z])([A-Za-z])\)"
)
_CHOICE_ALONE = re.compile(r"[\s*_`'\"(\[{]*([A-Za-z])[\s*_`'\")\]}.:,;!]*")
_CHOICE_UPPER_WORD = re.compile(r"(?<![A-Za-z'’])([A-Z])(?![A-Za-z'’])")


@dataclass(frozen=True)
class ChoiceFormat(AnswerFormat):
    """A multiple-choice letter (``A``-``E`` by default), keyed in upper case.

    Reads "The answer is (C)", "Answer: c", "**B**", "\\boxed{D}", "Option E". In a span, a
    marked letter ("(C)", "**C**", "C)", "option C") wins over a bare one; a lower-case letter
    counts only when marked or alone, so "the answer is a prime" is no choice.
    """

    name: str = "choice"
    description: str = "a multiple-choice letter A-E"
    letters: str = "ABCDE"

    def _letter(self, candidate: str | None) -> str | None:
        """``candidate`` upper-cased when it is one of this format's letters, else None."""
        if candidate is None:
            return None
        letter = candidate.upper()
        return letter if letter in self.letters else None

    def _from_span(self, span: str) -> str | None:
        """The letter a short answer span names, or None."""
        span = _strip_text_commands(_clip(span))
        alone = _CHOICE_ALONE.fullmatch(span)
        if alone:
            return self._letter(alone.group(1))
        for pattern in (_CHOICE_NAMED, _CHOICE_MARKED, _CHOICE_UPPER_WORD):
            for match in pattern.finditer(span):
                letter = self._letter(next(g for g in match.groups() if g))
                if letter is not None:
                    return letter
        return None

    def _fallback(self, text: str) -> str | None:
        """No marker: the last line that is just a letter, else the last marked letter."""
        tail = _strip_text_commands(_tail(text))
        for line in reversed(tail.splitlines()[-50:]):
            alone = _CHOICE_ALONE.fullmatch(line)
            if alone and self._letter(alone.group(1)):
                return self._letter(alone.group(1))
        found = None
        for pattern in (_CHOICE_NAMED, _CHOICE_MARKED):
            for match in pattern.finditer(tail):
                letter = self._letter(next(g for g in match.groups() if g))
                if letter is not None and (found is None or match.start() > found[0]):
                    found = (match.start(), letter)
        return found[1] if found else None

    def _extract(self, text: str) -> str | None:
        for span in answer_spans(text):
            letter = self._from_span(span)
            if letter is not None:
                return letter
        return self._fallback(text)

    def _normalize(self, answer: str) -> str | None:
        return self._from_span(answer)
