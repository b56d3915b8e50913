"""The ``Policy`` contract the service decides and learns through."""

from __future__ import annotations

import abc

from policies.base import Problem, StrategyResult
from policies.decision import Decision, DecisionRequest
from policies.learning import FeedbackVerdict, Signal


class Policy(abc.ABC):
    """Chooses a strategy and budget per request and learns from outcomes."""

    #: the version every decision and every key of the policy's online state carries
    version: str

    @abc.abstractmethod
    async def decide(self, problem: Problem, request: DecisionRequest) -> Decision:
        """The decision for ``problem``; must not raise for any problem text.

        With ``request.probe`` False it must not call the model (``/v1/route``).
        """

    @abc.abstractmethod
    async def record(
        self,
        decision: Decision,
        result: StrategyResult | None,
        reward: float | None,
        *,
        signal: Signal | None = None,
    ) -> None:
        """Learn from one outcome: a finished request (``result`` with its success
        ``signal``, ``reward`` None), a request that produced nothing (both None), or a
        trusted ``reward`` for it."""

    async def remember(self, response_id: str, decision: Decision, tenant: str) -> None:  # noqa: B027
        """Keep what feedback on ``response_id`` would update; the default keeps nothing."""

    async def feedback(
        self, response_id: str, reward: float, tenant: str
    ) -> tuple[FeedbackVerdict, float]:
        """Apply a client's reward for one of its responses: (verdict, observations
        applied). The default knows no responses."""
        return "unknown", 0.0

    async def close(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Release the policy's connections; the default does nothing."""
