"""The ``Policy`` contract the service decides and learns through."""

from __future__ import annotations

import abc

from policies.base import Problem, StrategyResult
from policies.decision import Decision, DecisionRequest


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
        self, decision: Decision, result: StrategyResult | None, reward: float | None
    ) -> None:
        """Learn from one outcome: a finished request (``result``, ``reward`` None), a
        request that produced nothing (both None), or a client's ``reward`` for it."""

    async def close(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Release the policy's connections; the default does nothing."""
