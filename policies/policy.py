"""The ``Policy`` contract the service decides through."""

from __future__ import annotations

import abc

from policies.decision import Decision
from policies.latency import Load
from policies.request import RequestSpec


class Policy(abc.ABC):
    """Chooses a strategy and budget per request. What it learns from outcomes is applied
    by the outcome side (``policies.learning.OnlineLearner``), not through the policy."""

    #: the version every decision and every key of the policy's online state carries
    version: str
    #: tokens of the difficulty probe a decision may run (0: none)
    probe_tokens: int = 0

    @abc.abstractmethod
    async def decide(
        self, spec: RequestSpec, *, load: Load | None = None, now: float | None = None
    ) -> Decision:
        """The frozen decision for ``spec``; must not raise for any problem text (only
        ``StrategyError`` for what the request itself asked).

        With ``spec.probe`` False it must not call the model (``/v1/route``).
        """

    async def close(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Release the policy's connections; the default does nothing."""
