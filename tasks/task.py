"""``Task``: the profile a prompt matched, as strategies, the policy and graders use it."""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.verifiers.base import Verifier
from tasks.answers import AnswerFormat, get_format

#: the fallback profile: prompts with no extractable answer
OPEN = "open"


@dataclass(frozen=True)
class Task:
    """The profile a prompt matched, as strategies and the policy use it."""

    kind: str = OPEN
    verifier: Verifier | None = None
    answers: AnswerFormat = field(default_factory=lambda: get_format("none"))
    step_delimiter: str = "\n\n"

    @property
    def exact(self) -> bool:
        """Whether an exact checker judges this task's answers (samplers may stop early)."""
        return self.verifier is not None and self.verifier.exact

    @property
    def selectable(self) -> bool:
        """Whether candidates can be told apart: answers to vote on, or a verifier to score
        them. Without either, voting and search only spend tokens."""
        return self.verifier is not None or self.answers.name != "none"

    def answer_of(self, text: str) -> str | None:
        """The final answer stated in ``text`` (None when it states none)."""
        return self.answers.extract(text)

    def vote_key(self, answer: str | None) -> str | None:
        """The voting key of an extracted answer (equivalent answers share one)."""
        return None if answer is None else self.answers.normalize(answer)


OPEN_TASK = Task()
