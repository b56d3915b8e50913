"""Plugs the adaptive policy (``policies.adaptive``) into the service as its ``Decider``."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from backends.base import Backend
from policies.adaptive import AdaptivePolicy
from policies.base import Problem, StrategyResult
from router.config import AppConfig


class AdaptiveDecider:
    """``decide``/``record`` for the service; ``generate=False`` decides without a probe."""

    def __init__(self, policy: AdaptivePolicy) -> None:
        self.policy = policy

    async def decide(
        self,
        problem: Problem,
        *,
        effort: str | None,
        options: Any,
        deadline_ms: float,
        generate: bool = True,
    ) -> Any:
        """The policy's decision; with ``generate=False`` no probe runs and no load is counted."""
        return await self.policy.decide(
            problem,
            effort=effort,
            options=options,
            deadline_ms=deadline_ms,
            probe=generate,
            serving=generate,
        )

    def reused_answer(self, decision: Any) -> StrategyResult | None:
        """The probe's completion when it already is the single-pass answer."""
        return self.policy.probe_answer(decision)

    def continued_problem(self, problem: Problem, decision: Any) -> Problem | None:
        """``problem`` prefixed with the cut probe when single pass should continue it."""
        return self.policy.continued_problem(problem, decision)

    async def record(
        self, decision: Any, result: StrategyResult | None, reward: float | None
    ) -> None:
        """Update the shared posteriors and cost statistics."""
        await self.policy.record_outcome(decision, result, reward)


def build_adaptive_decider(
    config: AppConfig, backend: Backend, redis: Redis | None
) -> AdaptiveDecider:
    """The adaptive policy for ``config``, sharing state through ``redis`` when given."""
    from router.service import default_verifier_lookup

    policy = AdaptivePolicy.from_config(
        config, backend, redis_client=redis, verifier_lookup=default_verifier_lookup
    )
    return AdaptiveDecider(policy)
