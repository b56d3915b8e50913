"""``AdaptivePolicy``: the thin stateful class the service decides and learns through.

Per request: forced strategy (``reasoning_effort``, ``acr.strategy``) priced and shrunk to the
SLO, or ``auto``: decision cache or probe -> difficulty estimate -> arms priced with the shared
online stats -> ``select`` (pure) -> ``Decision``. After the request, ``record`` updates the
shared (kind, bin, arm) posteriors (``policies.learning``). This replica's load
(``policies.load``) is counted from decision to outcome so that the selector downgrades
before a deep queue breaks the latency SLO.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backends.base import Backend, BackendError
from difficulty.estimate import DifficultyEstimate, Estimator
from difficulty.model import RouterModel, RouterModelError, bundled_router_path
from difficulty.probe import DEFAULT_PROBE_TOKENS, ProbeResult, run_probe
from difficulty.profiles import OPEN_TASK
from policies.base import Problem, StrategyError, StrategyResult
from policies.decision import Decision, DecisionRequest, Source
from policies.decision_cache import DecisionCache, cache_key
from policies.latency import SLO, Load, predict_latency_ms
from policies.learning import FeedbackVerdict, OnlineLearner, Signal
from policies.load import LoadTracker
from policies.policy import Policy
from policies.pricing import ArmPricer
from policies.registry import (
    FALLBACK_STRATEGY,
    THINKING_STRATEGY,
    default_arms,
    strategy_class,
)
from policies.selector import select, shrink_budget, thompson_draws
from policies.settings import EFFORTS, PolicySettings, StrategiesSettings
from policies.store import InMemoryPolicyStore, PolicyStore, RedisPolicyStore, stats_scope

log = logging.getLogger("acr.policy")

#: cost weight of a router model that was not calibrated with one
DEFAULT_LAMBDA_PER_1K_TOKENS = 0.1
#: below this deadline deliberating (about a millisecond) would eat the request's own time
FAST_PATH_MS = 10.0


class AdaptivePolicy(Policy):
    """Decides strategy and budget per request and learns from outcomes.

    Collaborators are injected: ``backend`` (for the probe; None disables it), ``store``
    (``RedisPolicyStore`` shared by replicas, or ``InMemoryPolicyStore``), ``model`` (the
    router model; an uninformed one when None), ``rng`` (exploration) and ``clock``.
    """

    def __init__(
        self,
        policy: PolicySettings,
        strategies: StrategiesSettings,
        *,
        backend: Backend | None,
        store: PolicyStore | None = None,
        model: RouterModel | None = None,
        reasoning: bool = False,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = policy
        self.strategies = strategies
        self.backend = backend
        self.backend_model = backend.name if backend is not None else "any"
        self.reasoning = reasoning
        self.model = for_backend(model or uninformed_model(policy.probe_tokens), self.backend_model)
        self.version = self.version_for(policy, self.model)
        self.store = store or InMemoryPolicyStore(self.version, clock)
        if self.store.version != self.version:
            raise ValueError(
                f"policy store version {self.store.version!r} differs from the policy's "
                f"{self.version!r}; build the store with version=AdaptivePolicy.version_for(...)"
            )
        self.rng = rng or random.Random()
        self.clock = clock
        self.tracker = LoadTracker(
            policy.capacity_tokens_per_s, clock, call_overhead_ms=policy.call_latency_ms
        )
        self.arms = list(self.model.card.arms)
        self._arm_by_name = {a.name: a for a in self.arms}
        self.probe_tokens = probe_length(policy.probe_tokens, self.model)
        self.lambda_per_1k_tokens = cost_weight(policy.lambda_per_1k_tokens, self.model)
        self.estimator = Estimator(self.model, self.probe_tokens)
        self.pricer = ArmPricer(self.model, self.arms, strategies, policy)
        self.cache = DecisionCache(self.store, policy.decision_cache_ttl_s)
        self.learner = OnlineLearner(
            self.store, self.tracker, self.pricer, self.model, self.backend_model, policy
        )
        # Warm the code paths now, not on the first request's clock.
        self.estimator.estimate("1 2 3 4", None, task=OPEN_TASK)

    @classmethod
    def build(
        cls,
        policy: PolicySettings,
        strategies: StrategiesSettings,
        backend: Backend | None,
        *,
        redis_client: Any = None,
        key_prefix: str = "acr",
        model: RouterModel | None = None,
        reasoning: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> AdaptivePolicy:
        """The policy the service runs: the model at ``policy.classifier_path`` (else the
        bundled one), a ``RedisPolicyStore`` on ``redis_client`` (a ``redis.asyncio.Redis``;
        None keeps state in memory) under ``key_prefix``."""
        model = for_backend(
            model or load_model(policy.classifier_path),
            backend.name if backend is not None else "any",
        )
        version = cls.version_for(policy, model)
        store: PolicyStore
        if redis_client is not None:
            store = RedisPolicyStore(
                redis_client, key_prefix=key_prefix, version=version, clock=clock
            )
        else:
            store = InMemoryPolicyStore(version, clock)
        return cls(
            policy,
            strategies,
            backend=backend,
            store=store,
            model=model,
            reasoning=reasoning,
            clock=clock,
        )

    @staticmethod
    def version_for(policy: PolicySettings, model: RouterModel) -> str:
        """The version string every Redis key of this policy carries."""
        return f"{policy.version}.{model.version}"

    # -- deciding -----------------------------------------------------------------------------

    def slo(self, latency_budget_ms: float | None, deadline_ms: float | None) -> SLO:
        """Config SLO with the request's latency budget (never beyond its deadline)."""
        lat = float(latency_budget_ms or self.settings.latency_slo_ms)
        if deadline_ms:
            lat = min(lat, deadline_ms)
        return SLO(
            latency_budget_ms=lat,
            cost_cap_tokens=self.settings.cost_cap_tokens,
            lambda_per_1k_tokens=self.lambda_per_1k_tokens,
        )

    def forced_strategy(self, request: DecisionRequest) -> tuple[str | None, Source]:
        """(strategy, source) a request forces: a named strategy, else its effort (on a
        reasoning model: a thinking budget); else (None, auto)."""
        if request.strategy and request.strategy != "auto":
            return request.strategy, "explicit"
        if request.effort in EFFORTS:
            if self.reasoning:
                return THINKING_STRATEGY, "effort"
            return self.strategies.effort[request.effort], "effort"  # type: ignore[index]
        return None, "auto"

    def _forced_override(self, request: DecisionRequest, source: Source) -> dict[str, Any] | None:
        """The budget fields a forced request runs with: its own, and on a reasoning model
        the thinking budget its effort buys (unless it set max_tokens itself)."""
        override = dict(request.budget or {})
        if source == "effort" and self.reasoning and "max_tokens" not in override:
            effort = request.effort or "medium"
            override["max_tokens"] = self.strategies.thinking_budget_tokens[effort]  # type: ignore[index]
        return override or None

    async def decide(self, problem: Problem, request: DecisionRequest) -> Decision:
        """The decision for ``problem`` (the probe, if one ran, is ``decision.probe``).

        A forced strategy keeps its strategy (its budget may shrink to fit the SLO under
        load); otherwise the router chooses. Never raises for any prompt text: backend errors
        during the probe mean "no probe", and an unexpected failure falls back to single pass
        with the reason saying so.
        """
        t0 = self.clock() if request.now is None else request.now
        slo = self.slo(request.latency_budget_ms, request.deadline_ms)
        forced, source = self.forced_strategy(request)
        try:
            if request.deadline_ms is not None and request.deadline_ms < FAST_PATH_MS:
                decision = self._fast(forced or FALLBACK_STRATEGY, source, request)
            elif forced is not None:
                decision = await self._forced(problem, forced, source, request, slo, t0)
            else:
                decision = await self._auto(problem, request, slo, t0)
        except StrategyError:
            raise  # the request named something that cannot run here: the client's 400
        except (ValueError, TypeError, ArithmeticError, KeyError) as exc:
            log.exception("adaptive policy failed; falling back to single pass")
            decision = Decision(
                strategy=FALLBACK_STRATEGY,
                arm=FALLBACK_STRATEGY,
                budget=self.pricer.budget_of(FALLBACK_STRATEGY, None, request.budget),
                reason=f"policy error ({type(exc).__name__}); fell back to single pass",
                source="fallback",
                policy_version=self.version,
            )
        decision = client_capped(decision, request)
        if request.serving:
            expires_s = (request.deadline_ms or slo.latency_budget_ms) / 1000 * 2
            spent_ms = max(0.0, (self.clock() - t0) * 1000)  # the probe, already behind us
            self.tracker.begin(
                decision.decision_id,
                decision.predicted_cost_tokens or 0.0,
                expires_s,
                t0,
                predicted_ms=(decision.predicted_latency_ms or 0.0) + spent_ms,
                strategy=decision.strategy,
            )
        return decision

    def _fast(self, strategy: str, source: Source, request: DecisionRequest) -> Decision:
        return Decision(
            strategy=strategy,
            arm=strategy,
            budget=self.pricer.budget_of(strategy, None, request.budget),
            reason=f"deadline {request.deadline_ms:.0f} ms leaves no time to deliberate; "
            f"{strategy}",
            source=source,
            policy_version=self.version,
        )

    def estimate(self, problem: Problem, probe: ProbeResult | None = None) -> DifficultyEstimate:
        """The difficulty estimate of ``problem`` (with its ``probe`` when one ran) on this
        backend; what ``choose`` prices arms for."""
        est = self.estimator.estimate(
            problem.text,
            probe.summary() if probe else None,
            task=problem.task,
            probe_tokens=probe.tokens if probe else 0,
            answer_tokens=self.pricer.budget_of(FALLBACK_STRATEGY, None, None).max_tokens,
        )
        return self._on_this_backend(est)

    def _on_this_backend(self, est: DifficultyEstimate) -> DifficultyEstimate:
        """``est`` with what this backend and model can do (cached estimates carry a
        previous replica's view)."""
        caps = self.backend.capabilities if self.backend is not None else None
        return est.model_copy(
            update={
                "continuations": caps.continuations if caps is not None else True,
                "native_n": caps.native_n if caps is not None else True,
                "reasoning": self.reasoning,
            }
        )

    async def _forced(
        self,
        problem: Problem,
        strategy: str,
        source: Source,
        request: DecisionRequest,
        slo: SLO,
        t0: float,
    ) -> Decision:
        cls = strategy_class(strategy)
        est = self.estimate(problem)
        why_not = cls.unavailable(est)
        if why_not is not None:
            raise StrategyError(why_not)
        override = self._forced_override(request, source)
        budget = self.pricer.budget_of(strategy, None, override)
        name = cls.arm_name(budget)
        stats = []
        if name in self._arm_by_name:
            online = await self.store.arm_stats(self._scope(est), [name])
            stats = self.pricer.arm_stats(est, online, override)
        st = next((s for s in stats if s.name == name), None)
        tokens = st.tokens_mean if st else float(budget.max_tokens * budget.samples)
        lat_ms = st.latency_ms_mean if st else 0.0
        load = request.load or self.tracker.snapshot(t0)
        # What the client chose is kept unless its own time limit cannot be met even on an
        # idle backend: the request's deadline (or the latency budget it set itself), never
        # the service's SLO, and never a load prediction (strategies are anytime: under load
        # they return their best answer at the deadline instead).
        own_limits = [x for x in (request.deadline_ms, request.latency_budget_ms) if x]
        limit = min(own_limits) if own_limits else slo.latency_budget_ms
        own = slo.model_copy(update={"latency_budget_ms": limit, "headroom": 1.0})
        idle = load.model_copy(update={"inflight": 0, "queued_tokens": 0.0, "elapsed_ms": 0.0})
        parallel = cls.parallel_samples(budget) if est.native_n else 1
        lat_full = predict_latency_ms(
            tokens, lat_ms, idle, cls.calls(budget), cls.name, tokens / parallel
        )
        budget2, cost, _, shrunk = shrink_budget(
            cls, budget, tokens, lat_ms, own, idle, est.native_n
        )
        parallel = cls.parallel_samples(budget2) if est.native_n else 1
        lat = predict_latency_ms(
            cost,
            lat_ms * cost / tokens if tokens else lat_ms,
            load,
            cls.calls(budget2),
            cls.name,
            cost / parallel,
        )
        why = (
            "strategy named in request"
            if source == "explicit"
            else (f"reasoning_effort={request.effort}")
        )
        if shrunk:
            why += (
                f"; budget shrunk to samples={budget2.samples} beam={budget2.beam_width} "
                f"because {budget.samples} samples x {budget.beam_width} beams need about "
                f"{lat_full:.0f} ms even on an idle backend, past the request's {limit:.0f} ms"
            )
        return Decision(
            strategy=strategy,
            arm=cls.arm_name(budget2),
            budget=budget2,
            reason=why,
            source=source,
            predicted_success=est.probs.get(name),
            predicted_latency_ms=lat,
            predicted_cost_tokens=cost,
            policy_version=self.version,
            difficulty_bin=est.bin,
            difficulty=est.difficulty,
            downgraded=shrunk,
            task=est.kind,
            features=est.features,
        )

    async def _auto(
        self, problem: Problem, request: DecisionRequest, slo: SLO, t0: float
    ) -> Decision:
        key = cache_key(problem, request.tenant)
        est = await self.cache.get(key)
        if est is not None:
            est = self._on_this_backend(est)
        source: Source = "cache" if est is not None else "auto"
        probe: ProbeResult | None = None
        if est is None:
            if request.probe:
                probe = await self._probe(problem, slo, request.load, t0)
            est = self.estimate(problem, probe)
        now = self.clock()
        elapsed_ms = max(0.0, (now - t0) * 1000)
        load = (
            request.load.model_copy(update={"elapsed_ms": elapsed_ms})
            if request.load
            else self.tracker.snapshot(now, elapsed_ms)
        )
        decision = await self.choose(est, slo, load, override=request.budget, source=source)
        decision.probe = probe
        # Only a served request's own full probe is kept: /v1/route generates nothing and
        # a probe the client's stop strings may have cut would misjudge the next asker.
        if source != "cache" and request.serving and probe is not None and not problem.stop:
            await self.cache.put(key, est, decision.arm)
        return decision

    async def choose(
        self,
        est: DifficultyEstimate,
        slo: SLO,
        load: Load,
        *,
        override: dict[str, Any] | None = None,
        source: Source = "auto",
    ) -> Decision:
        """Select for an estimate: shared stats of its kind and bin + Thompson gate + ``select``.

        The step after the probe; simulations call it directly with their own load.
        """
        online = await self.store.arm_stats(self._scope(est), [a.name for a in self.arms])
        stats = self.pricer.arm_stats(est, online, override)
        draws = thompson_draws(stats, self.rng, self.settings.exploration_rate)
        decision = select(est, stats, slo, load, draws=draws, policy_version=self.version)
        decision.source = source
        if source == "cache":
            decision.reason = "cached difficulty estimate; " + decision.reason
        return decision

    def _scope(self, est: DifficultyEstimate) -> str:
        """The online statistics ``est`` is priced with: this backend model, its task, bin."""
        return stats_scope(self.backend_model, est.kind, est.bin)

    def should_probe(self, slo: SLO, load: Load) -> bool:
        """Whether a probe is worth running now: enabled, and cheap enough under this load."""
        if self.backend is None or self.probe_tokens <= 0:
            return False
        est_ms = predict_latency_ms(self.probe_tokens * 0.8, 0.0, load)
        # Under a deep queue the probe alone would eat the SLO: decide on the prompt instead.
        return est_ms <= slo.latency_budget_ms * self.settings.probe_share_of_slo

    async def _probe(
        self, problem: Problem, slo: SLO, load: Load | None, t0: float
    ) -> ProbeResult | None:
        if self.backend is None or not self.should_probe(slo, load or self.tracker.snapshot(t0)):
            return None
        # The probe may take its share of the request's time, no more: past it the request
        # is decided on its prompt alone and the rest of its deadline goes to the answer.
        spent_s = max(0.0, self.clock() - t0)
        allowed_s = slo.latency_budget_ms * self.settings.probe_share_of_slo / 1000 - spent_s
        if allowed_s <= 0:
            return None
        try:
            probe = await asyncio.wait_for(
                run_probe(
                    self.backend,
                    problem_text=problem.text,
                    prompt=problem.prompt,
                    messages=problem.messages,
                    max_tokens=self.probe_tokens,
                    stop=problem.stop,
                    task=problem.task,
                    clock=self.clock,
                ),
                timeout=allowed_s,
            )
        except (BackendError, TimeoutError) as exc:
            log.warning("probe failed or ran out of time (%r); deciding on prompt features", exc)
            return None
        self.tracker.observe_call(probe.wall_ms, probe.tokens)
        return probe

    # -- learning -----------------------------------------------------------------------------

    async def record(
        self,
        decision: Decision,
        result: StrategyResult | None,
        reward: float | None,
        *,
        signal: Signal | None = None,
        now: float | None = None,
    ) -> None:
        """Learn from one outcome (``policies.learning.OnlineLearner.record``)."""
        await self.learner.record(decision, result, reward, signal=signal, now=now)

    async def remember(self, response_id: str, decision: Decision, tenant: str) -> None:
        """Keep what feedback on the response would update (shared by replicas)."""
        await self.learner.remember(response_id, decision, tenant)

    async def feedback(
        self, response_id: str, reward: float, tenant: str
    ) -> tuple[FeedbackVerdict, float]:
        """A client's reward for one of its responses, capped per tenant
        (``policies.learning.OnlineLearner.feedback``)."""
        return await self.learner.feedback(response_id, reward, tenant)

    async def close(self) -> None:
        """Close the store."""
        await self.store.close()


def client_capped(decision: Decision, request: DecisionRequest) -> Decision:
    """``decision`` with the client's own ``max_tokens`` cap and, for a strategy that takes
    it, its ``temperature`` applied to the budget."""
    update: dict[str, Any] = {}
    if request.max_tokens is not None and request.max_tokens < decision.budget.max_tokens:
        update["max_tokens"] = request.max_tokens
    if (
        request.temperature is not None
        and strategy_class(decision.strategy).takes_client_temperature
    ):
        update["temperature"] = request.temperature
    if update:
        decision.budget = decision.budget.model_copy(update=update)
    return decision


def probe_length(configured: int | None, model: RouterModel) -> int:
    """Probe tokens in use: 0 when disabled, else the model's own length (its features were
    measured at it), else the configured one, else the default."""
    if configured == 0:
        return 0
    if model.card.probe_tokens:
        return model.card.probe_tokens
    return configured if configured is not None else DEFAULT_PROBE_TOKENS


def cost_weight(configured: float | None, model: RouterModel) -> float:
    """The cost weight in use: the configured one, else the router model's (chosen on its
    calibration data), else ``DEFAULT_LAMBDA_PER_1K_TOKENS``."""
    if configured is not None:
        return configured
    if model.card.lambda_per_1k_tokens is not None:
        return model.card.lambda_per_1k_tokens
    return DEFAULT_LAMBDA_PER_1K_TOKENS


def uninformed_model(probe_tokens: int | None = None) -> RouterModel:
    """A router model that knows nothing (every arm equally likely to succeed, one bin): a
    backend no router model was fit for starts at the cheapest arm and moves on evidence."""
    return RouterModel.uninformed(
        default_arms(),
        probe_tokens=probe_tokens if probe_tokens is not None else DEFAULT_PROBE_TOKENS,
    )


def for_backend(model: RouterModel, backend_model: str) -> RouterModel:
    """``model`` when it was fit for ``backend_model`` (or for no model in particular), else
    an uninformed model over the same arms: one model's success rates, token counts and
    latencies never price another's."""
    fitted = model.card.backend_model
    if not fitted or fitted == backend_model:
        return model
    log.warning(
        "router model %s was fit for %r, not %r: deciding from priors and online outcomes",
        model.version,
        fitted,
        backend_model,
    )
    return RouterModel.uninformed(
        list(model.card.arms),
        version=f"{model.version}-unfit",
        probe_tokens=model.card.probe_tokens,
    )


def load_model(path: str | Path | None) -> RouterModel:
    """The router model at ``path``, else the bundled one, else an uninformed one.

    A configured ``path`` that cannot be used raises ``RouterModelError``.
    """
    try:
        return RouterModel.load(path or bundled_router_path())
    except RouterModelError as exc:
        if path:
            raise
        log.warning("no usable bundled router model (%s); using priors only", exc)
        return uninformed_model()
