"""``Task``: the profile a prompt matched, as strategies, the policy and graders use it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backends.verifiers.base import Verifier
from tasks.answers import AnswerFormat, get_format
from tasks.canonical import tool_response

#: the fallback profile: prompts with no extractable answer
OPEN = "open"


@dataclass(frozen=True)
class Task:
    """The profile a prompt matched, as strategies and the policy use it."""

    kind: str = OPEN
    verifier: Verifier | None = None
    answers: AnswerFormat = field(default_factory=lambda: get_format("none"))
    step_delimiter: str = "\n\n"
    #: JSON output or tool calls (``tasks.structured``): answers are whole messages, so
    #: nothing may extend a partial answer as a raw prompt
    structured: bool = False

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

    def response_of(self, text: str, tool_calls: list[dict[str, Any]] | None) -> str:
        """The one string a response is read as by answers and verifiers: its text, or for
        a tool-call task its text and canonical calls (``tasks.structured``)."""
        if self.answers.name != "tool_calls":
            return text
        return tool_response(text, tool_calls)

    def vote_key(self, answer: str | None) -> str | None:
        """The voting key of an extracted answer (equivalent answers share one)."""
        return None if answer is None else self.answers.normalize(answer)


OPEN_TASK = Task()
