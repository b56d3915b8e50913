"""Online learning from outcomes: the shared (backend model, task, difficulty bin, arm)
posteriors and cost statistics, this replica's load entries and its latency measurements.

Success evidence comes from three places, weighted by how much it can be trusted:

- ``verifier``: the task's verifier scored the answer (an exact checker or a reward model),
  or, for a run that did not score it (single pass), the task's exact checker does so when
  the outcome is recorded; one observation.
- ``agreement``: no verifier, but the run drew several samples with answers: the share that
  agree with the chosen answer is a proxy of success, worth ``policy.agreement_weight``
  observations (and marked as a proxy in the outcome record).
- ``feedback``: a client's reward for a response (``POST /v1/feedback``), accepted once per
  response, only from the API key that made the request, and capped per key and estimate
  (``policy.feedback_cap_per_tenant``) so that no tenant can steer the estimates everyone
  shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from backends.verifiers.base import VerifierError
from difficulty.model import RouterModel
from policies.base import Problem, StrategyResult
from policies.common import vote
from policies.decision import Decision
from policies.load import LoadTracker
from policies.pricing import ArmPricer
from policies.registry import STRATEGIES
from policies.settings import PolicySettings
from policies.store import PolicyStore, stats_scope

if TYPE_CHECKING:
    from policies.adaptive import AdaptivePolicy
from tasks.task import Task

SignalSource = Literal["verifier", "agreement", "feedback"]
#: fewest answered samples whose agreement says anything
MIN_AGREEMENT_SAMPLES = 3


@dataclass(frozen=True)
class Signal:
    """Evidence of success for one outcome: a reward in [0, 1] worth ``weight``
    observations, and where it came from."""

    reward: float
    source: SignalSource
    weight: float = 1.0


def outcome_signal(
    result: StrategyResult | None,
    task: Task,
    agreement_weight: float,
    problem: Problem | None = None,
) -> Signal | None:
    """What a finished run says about its own success: the verifier's score (a run that
    did not score its answer, such as single pass, is scored now when the task has an
    exact checker and its ``problem`` is given: a check costs no model call), else the
    agreement among its samples (a proxy), else nothing."""
    if result is None:
        return None
    if result.score is not None and task.verifier is not None:
        return Signal(result.score, "verifier")
    if problem is not None and task.exact and task.verifier is not None:
        try:
            score = task.verifier.score(
                problem.text, task.response_of(result.text, result.tool_calls), problem.reference
            )
        except VerifierError:
            score = None
        if score is not None:
            return Signal(score, "verifier")
    share = agreement(result, task)
    if share is None or agreement_weight <= 0:
        return None
    return Signal(share, "agreement", agreement_weight)


def agreement(result: StrategyResult, task: Task) -> float | None:
    """Share of a run's samples whose answer equals the chosen one (None with fewer than
    ``MIN_AGREEMENT_SAMPLES`` samples or a task without answers to compare)."""
    if task.answers.name == "none" or len(result.candidates) < MIN_AGREEMENT_SAMPLES:
        return None
    if not vote([c.answer for c in result.candidates], task):
        return 0.0  # no sample stated an answer: no agreement
    chosen = task.vote_key(result.answer)
    if chosen is None:
        return 0.0
    same = sum(1 for c in result.candidates if task.vote_key(c.answer) == chosen)
    return same / len(result.candidates)


@dataclass(frozen=True)
class FeedbackTarget:
    """What feedback on a response updates, and who may give it."""

    scope: str
    arm: str
    tenant: str

    def as_dict(self) -> dict[str, Any]:
        """The JSON stored under the response id."""
        return {"scope": self.scope, "arm": self.arm, "tenant": self.tenant}


FeedbackVerdict = Literal["applied", "capped", "duplicate", "unknown"]


class OnlineLearner:
    """Applies one outcome to ``store`` (shared), ``tracker`` and ``pricer`` (local)."""

    def __init__(
        self,
        store: PolicyStore,
        tracker: LoadTracker,
        pricer: ArmPricer,
        model: RouterModel,
        backend_model: str,
        settings: PolicySettings | None = None,
    ) -> None:
        self.store = store
        self.backend_model = backend_model
        self.tracker = tracker
        self.pricer = pricer
        self.arm_names = set(model.arm_names)
        self.settings = settings or PolicySettings()

    def _target(self, decision: Decision) -> tuple[str, str] | None:
        """(scope, arm) an outcome of ``decision`` updates; None when it updates nothing
        shared (no bin, or an arm the router model does not price)."""
        if decision.difficulty_bin is None or decision.arm not in self.arm_names:
            return None
        return stats_scope(self.backend_model, decision.task, decision.difficulty_bin), decision.arm

    async def record(
        self,
        decision: Decision,
        result: StrategyResult | None,
        reward: float | None,
        *,
        signal: Signal | None = None,
        now: float | None = None,
    ) -> None:
        """Learn from one served outcome (``reward`` None) or a trusted reward.

        A served request ends its load entry (also when it produced no result) and
        contributes its tokens and latency, and ``signal`` (default: its verifier score)
        as evidence of success. A ``reward`` given directly counts as one observation
        (feedback from clients goes through ``feedback``, which caps it).
        """
        if reward is None:
            tokens = None
            if result is not None:
                tokens = float(result.completion_tokens + result.verifier_tokens)
            self.tracker.end(decision.decision_id, tokens, now)
        target = self._target(decision)
        if target is None:
            return
        scope, arm = target
        if reward is not None:
            await self.store.record(scope, arm, reward=reward)
            return
        if result is None:
            return
        if signal is None and result.score is not None:
            signal = Signal(result.score, "verifier")
        got = {"reward": signal.reward, "weight": signal.weight} if signal else {"reward": None}
        if decision.reuse_probe:
            # Served by the probe: no extra tokens or time for this arm.
            await self.store.record(scope, arm, tokens=0.0, latency_ms=0.0, **got)
            return
        self._observe_calls(decision, result)
        await self.store.record(
            scope,
            arm,
            tokens=float(result.completion_tokens + result.verifier_tokens),
            latency_ms=result.wall_ms,
            **got,
        )

    async def remember(self, response_id: str, decision: Decision, tenant: str) -> None:
        """Keep what feedback on ``response_id`` would update, for every replica."""
        target = self._target(decision)
        if target is None or not response_id:
            return
        info = FeedbackTarget(target[0], target[1], tenant)
        await self.store.put_json(
            f"resp:{response_id}", info.as_dict(), self.settings.feedback_ttl_s
        )

    async def feedback(
        self, response_id: str, reward: float, tenant: str
    ) -> tuple[FeedbackVerdict, float]:
        """Apply a client's ``reward`` for a response: (verdict, observations applied).

        ``unknown``: no such response, or another key made it (the two look the same to
        the caller); ``duplicate``: feedback on it was already taken; ``capped``: this key's
        allowance for that estimate is used up, so it moved nothing.
        """
        info = await self.store.get_json(f"resp:{response_id}")
        if info is None or info.get("tenant") != tenant:
            return "unknown", 0.0
        if not await self.store.claim(f"fbclaim:{response_id}", self.settings.feedback_ttl_s):
            return "duplicate", 0.0
        scope, arm = str(info["scope"]), str(info["arm"])
        cap = self.settings.feedback_cap_per_tenant
        weight = await self.store.take_share(f"share:{scope}:{arm}", tenant, 1.0, cap)
        if weight <= 0:
            return "capped", 0.0
        await self.store.record(scope, arm, reward=reward, weight=weight)
        return "applied", weight

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


def learner_for(policy: AdaptivePolicy) -> OnlineLearner:
    """The learner of ``policy``'s outcomes: its shared store, its replica's load tracker and
    call counts, its router model's arms and its backend model."""
    return OnlineLearner(
        policy.store,
        policy.tracker,
        policy.pricer,
        policy.model,
        policy.backend_model,
        policy.settings,
    )
