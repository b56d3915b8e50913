"""Online learning from outcomes: the shared (task kind, difficulty bin, arm) posteriors and
cost statistics, this replica's load entries and its latency measurements."""

from __future__ import annotations

from difficulty.model import RouterModel
from policies.base import StrategyResult
from policies.decision import Decision
from policies.load import LoadTracker
from policies.pricing import ArmPricer
from policies.registry import STRATEGIES
from policies.store import PolicyStore, stats_scope


class OnlineLearner:
    """Applies one outcome to ``store`` (shared), ``tracker`` and ``pricer`` (local)."""

    def __init__(
        self,
        store: PolicyStore,
        tracker: LoadTracker,
        pricer: ArmPricer,
        model: RouterModel,
        backend_model: str,
    ) -> None:
        self.store = store
        self.backend_model = backend_model
        self.tracker = tracker
        self.pricer = pricer
        self.arm_names = set(model.arm_names)

    async def record(
        self,
        decision: Decision,
        result: StrategyResult | None,
        reward: float | None,
        *,
        now: float | None = None,
    ) -> None:
        """Learn from one outcome.

        A served request (``reward`` None) ends its load entry (also when it produced no
        result) and contributes its tokens and latency, and its success when the verifier
        scored it (``result.score``); ``POST /v1/feedback`` passes ``result=None`` and the
        client's ``reward``, which only moves the success posterior.
        """
        if reward is None:
            tokens = None
            if result is not None:
                tokens = float(result.completion_tokens + result.verifier_tokens)
            self.tracker.end(decision.decision_id, tokens, now)
        if decision.difficulty_bin is None:
            return
        scope = stats_scope(self.backend_model, decision.task, decision.difficulty_bin)
        arm = decision.arm if decision.arm in self.arm_names else None
        if arm is None:
            return
        if reward is not None:
            await self.store.record(scope, arm, reward=reward)
            return
        if result is None:
            return
        if decision.reuse_probe:
            # Served by the probe: no extra tokens or time for this arm.
            await self.store.record(scope, arm, reward=result.score, tokens=0.0, latency_ms=0.0)
            return
        self._observe_calls(decision, result)
        await self.store.record(
            scope,
            arm,
            reward=result.score,
            tokens=float(result.completion_tokens + result.verifier_tokens),
            latency_ms=result.wall_ms,
        )

    def _observe_calls(self, decision: Decision, result: StrategyResult) -> None:
        """One call's latency from the run's wall time over its sequential calls."""
        cls = STRATEGIES.get(decision.strategy)
        if cls is None or result.wall_ms <= 0:
            return
        calls = cls.calls_made(decision.budget, result)
        if calls is None:
            return
        serial = (result.completion_tokens + result.verifier_tokens) / max(
            1, cls.parallel_samples(decision.budget)
        )
        self.tracker.observe_call(result.wall_ms, serial, calls)
        if cls.calls_vary() and result.samples > 0:
            self.pricer.observe_calls(cls.name, decision.task, calls)
