"""``Service``: what the HTTP edge serves requests through. A ``RouterService`` (one model)
and a ``PoolService`` (several backends behind one endpoint) both are one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from policies.decision import Decision
from policies.request import RequestSpec
from router.config import AppConfig
from router.core.served import ServedResult
from router.core.service import Event
from router.metrics import Metrics


class Service(Protocol):
    """The request side of the router, as the edge uses it."""

    config: AppConfig
    metrics: Metrics
    clock: Callable[[], float]

    @property
    def model_name(self) -> str:
        """The model id the service answers to (a pool's id for a pool)."""
        ...

    def models(self) -> list[str]:
        """Every model id a request may name."""
        ...

    def check(self, spec: RequestSpec) -> RequestSpec:
        """``spec`` checked against the limits, its task matched."""
        ...

    def check_batch(self, specs: Sequence[RequestSpec]) -> list[RequestSpec]:
        """The prompts of one text completion request, checked together."""
        ...

    def serve(self, spec: RequestSpec, *, stream: bool = False) -> AsyncIterator[Event]:
        """The decision, the answer's pieces, the result."""
        ...

    async def answer(self, spec: RequestSpec) -> ServedResult:
        """``spec`` served to its end."""
        ...

    async def route(self, spec: RequestSpec) -> Decision:
        """The decision alone."""
        ...

    async def feedback(self, response_id: str, reward: float, tenant: str) -> dict[str, Any]:
        """A client's reward for one of its responses."""
        ...

    async def readiness(self) -> dict[str, str]:
        """What keeps it from serving now (empty: ready)."""
        ...
