"""Formats compared as text: ``exact`` (free text), ``code`` (fenced blocks) and ``none``."""

from __future__ import annotations

import logging
import re
import textwrap
import unicodedata
from dataclasses import dataclass

from tasks.answers.base import AnswerFormat
from tasks.answers.spans import (
    MAX_SCAN_CHARS,
    _clip,
    _first_sentence,
    _last_content_line,
    _strip_text_commands,
    _tail,
    answer_spans,
)

log = logging.getLogger(__name__)

_EDGE_MARKUP = " \t\r\n*_`\"'“”‘’"
_TRAILING_PUNCTUATION = ".,;:!?。"


@dataclass(frozen=True)
class ExactFormat(AnswerFormat):
    """Free-text answers compared as normalised text.

    The key folds Unicode compatibility forms, case and whitespace runs, and strips surrounding
    quotes/markdown and trailing punctuation: "**Paris.**" and "paris" are one answer. A marker
    span is cut at its first sentence end, so an abbreviation ("St. Louis") is cut too.
    """

    name: str = "exact"
    description: str = "free text; case, whitespace and trailing punctuation folded"

    def _extract(self, text: str) -> str | None:
        for span in answer_spans(text):
            answer = self._clean(span)
            if answer:
                return answer
        answer = self._clean(_last_content_line(_tail(text)))
        return answer or None

    def _clean(self, span: str) -> str:
        """An extracted span as an answer: ``\\text{}`` unwrapped, first sentence, no markup."""
        span = _first_sentence(_strip_text_commands(span).strip(_EDGE_MARKUP))
        return _clip(span.strip(_EDGE_MARKUP).rstrip(_TRAILING_PUNCTUATION))

    def _normalize(self, answer: str) -> str | None:
        text = unicodedata.normalize("NFKC", answer).casefold()
        text = " ".join(text.split())
        for _ in range(3):  # "**paris.**" needs markup, punctuation, markup again
            text = text.strip(_EDGE_MARKUP).rstrip(_TRAILING_PUNCTUATION)
        return text or None


_FENCE = re.compile(r"[ \t]{0,3}(`{3,}|~{3,})([^`\n]*)")


def last_code_block(text: str) -> str | None:
    """The body of the last fenced code block (```/~~~) in ``text``, or None.

    An unclosed final fence (a truncated response) still counts: its block runs to the end.
    Line-based, so the cost is linear even with thousands of fences.
    """
    last: list[str] | None = None
    current: list[str] | None = None
    fence = ""
    for line in _tail(text).splitlines():
        match = _FENCE.fullmatch(line.rstrip())
        if current is None:
            if match:
                fence, current = match.group(1), []
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            if not match.group(2).strip():
                last, current = current, None
            else:
                current.append(line)
        else:
            current.append(line)
    block = current if current is not None else last
    if block is None:
        return None
    return "\n".join(block)


@dataclass(frozen=True)
class CodeFormat(AnswerFormat):
    """Code answers: the last fenced code block, compared by normalised text.

    The key drops trailing whitespace, blank leading/trailing lines and common indentation;
    inner indentation stays, since it is meaningful in Python.
    """

    name: str = "code"
    description: str = "the last fenced code block; compared by normalised text"

    def _extract(self, text: str) -> str | None:
        block = last_code_block(text)
        if block is None:
            return None
        return self._normalize(block[-MAX_SCAN_CHARS:])

    def normalize(self, answer: str) -> str | None:
        """A canonical key of a code answer (see the class docstring), or None when empty."""
        if not isinstance(answer, str):
            return None
        try:  # code answers are longer than MAX_ANSWER_CHARS, so the base class clip is skipped
            return self._normalize(answer[-MAX_SCAN_CHARS:])
        except Exception:  # total by contract
            log.debug("answer format code: normalize failed", exc_info=True)
            return None

    def equivalent(self, a: str, b: str) -> bool:
        """True when code ``a`` and reference ``b`` have the same normalised text."""
        key = self.normalize(a)
        return key is not None and key == self.normalize(b)

    def _normalize(self, answer: str) -> str | None:
        lines = [line.rstrip() for line in answer.replace("\r\n", "\n").split("\n")]
        text = textwrap.dedent("\n".join(lines)).strip("\n")
        return text or None


@dataclass(frozen=True)
class NoAnswerFormat(AnswerFormat):
    """Tasks without a checkable final answer (open writing, chat): nothing is extracted, so
    strategies must not vote or grade on such tasks; ``equivalent`` is always False.
    """

    name: str = "none"
    description: str = "no extractable answer"

    def _extract(self, text: str) -> str | None:
        return None

    def _normalize(self, answer: str) -> str | None:
        return None

    def _equivalent(self, a: str, b: str) -> bool:
        return False
