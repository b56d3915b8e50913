"""The ``AnswerFormat`` base class: total (never raising) extract / normalize / equivalent."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

from tasks.answers.spans import _clip, answer_spans

log = logging.getLogger(__name__)


class AnswerFormat(ABC):
    """How a task's final answers are written, extracted, keyed for voting and graded.

    Subclasses implement ``_extract``/``_normalize`` (and ``_equivalent`` when equal keys are
    not the right test); the public methods make them total: any input (also non-``str``)
    gives ``None``/``False`` instead of an exception, and the failure is logged at debug level.
    """

    name: str
    description: str

    def extract(self, text: str) -> str | None:
        """The final answer stated in a model's response ``text``, or None when it has none."""
        if not isinstance(text, str):
            return None
        try:
            return self._extract(text)
        except Exception:  # total by contract: a bug here must not fail a request
            log.debug("answer format %s: extract failed", self.name, exc_info=True)
            return None

    def normalize(self, answer: str) -> str | None:
        """A canonical key of ``answer`` for voting (equivalent answers get equal keys where
        that is cheap to decide), or None when ``answer`` states nothing this format reads.
        """
        if not isinstance(answer, str):
            return None
        try:
            return self._normalize(_clip(answer))
        except Exception:  # total by contract
            log.debug("answer format %s: normalize failed", self.name, exc_info=True)
            return None

    def equivalent(self, a: str, b: str) -> bool:
        """True when answer ``a`` means the same as ``b`` (grading: ``b`` is the reference)."""
        if not isinstance(a, str) or not isinstance(b, str):
            return False
        try:
            return self._equivalent(_clip(a), _clip(b))
        except Exception:  # total by contract
            log.debug("answer format %s: equivalent failed", self.name, exc_info=True)
            return False

    def states_answer(self, text: str) -> bool:
        """Whether ``text`` (one reasoning step) states a final answer explicitly (a boxed
        answer, ``#### x``, an answer marker): step search ends a trace at such a step."""
        if not isinstance(text, str):
            return False
        try:
            return self._states_answer(text)
        except Exception:  # total by contract
            log.debug("answer format %s: states_answer failed", self.name, exc_info=True)
            return False

    def _states_answer(self, text: str) -> bool:
        return next(answer_spans(text), None) is not None

    def extract_key(self, text: str) -> str | None:
        """``normalize(extract(text))``: the voting key of a whole response, or None."""
        answer = self.extract(text)
        return None if answer is None else self.normalize(answer)

    @abstractmethod
    def _extract(self, text: str) -> str | None:
        """``extract`` without the safety net."""

    @abstractmethod
    def _normalize(self, answer: str) -> str | None:
        """``normalize`` without the safety net; ``answer`` is already clipped."""

    def _equivalent(self, a: str, b: str) -> bool:
        """``equivalent`` without the safety net: both have the same non-None key."""
        key = self._normalize(a)
        return key is not None and key == self._normalize(b)
