"""The ``Verifier`` contract shared by exact checkers and learned reward models.

Strategies use a verifier as extrinsic feedback: best-of-N keeps the highest ``score``,
self-consistency stops at the first exactly-verified answer, step search ranks partial
traces with ``score_steps``.
"""

from __future__ import annotations

import abc


class VerifierError(ValueError):
    """The problem or candidate cannot be scored by this verifier (e.g. wrong task type)."""


class Verifier(abc.ABC):
    """Scores a finished candidate answer for a problem.

    ``exact`` verifiers (checkers) return 1.0 only for a correct answer and 0.0 otherwise, so a
    score of 1.0 can end a search at once; learned reward models return a probability-like
    score in [0, 1] that is only comparable between candidates.
    """

    name: str = "verifier"
    exact: bool = False

    @abc.abstractmethod
    def score(self, problem: str, candidate: str, reference: str | None = None) -> float:
        """Outcome score in [0, 1] of ``candidate`` (a full response) for ``problem``.

        ``problem`` is the user's text (e.g. ``"4 9 10 13"`` or ``"What is 2+3?"``);
        ``reference`` is a known answer where the checker needs one (GSM8K, JSONL datasets).
        """

    def verifier_tokens(self, problem: str, candidate: str) -> int:
        """Model tokens this verifier spends to score one candidate (0 for exact checkers)."""
        return 0

    async def score_many(
        self, problem: str, candidates: list[str], reference: str | None = None
    ) -> list[float]:
        """Scores of several candidates; what strategies call. The default scores them one by
        one with ``score``; a served reward model scores them in one request. Raises
        ``VerifierError`` when it cannot judge this problem."""
        return [self.score(problem, c, reference) for c in candidates]


class ProcessVerifier(Verifier):
    """A verifier that can also score partial reasoning, one score per step."""

    @abc.abstractmethod
    def score_steps(self, problem: str, steps: list[str]) -> list[float]:
        """One score in [0, 1] per step of a (possibly unfinished) trace, in order.

        Step search keeps the partial traces whose latest step scores highest; an exact
        checker returns 0.0 from the first invalid step on.
        """

    async def score_steps_async(self, problem: str, steps: list[str]) -> list[float]:
        """``score_steps`` for callers on the event loop; a served model overrides it."""
        return self.score_steps(problem, steps)
