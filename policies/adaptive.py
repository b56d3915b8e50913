"""``AdaptivePolicy``: the thin stateful class the service decides through.

Per request: forced strategy (``reasoning_effort``, ``acr.strategy``) priced and shrunk to the
request's own time limit (``policies.forced``), or ``auto``: decision cache or probe ->
difficulty estimate -> arms priced with the shared online stats -> ``select`` (pure). Then,
once, the client's caps and the server's token bound (``policies.bounds``) give the frozen
``Decision``. This replica's load (``policies.load``) is counted from decision to outcome so
that the selector downgrades before a deep queue breaks the latency SLO; the outcome side
(``policies.learning.OnlineLearner``, built by ``learner_for``) is called by whoever records
outcomes, not through the policy.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from backends.base import Backend, BackendError
from difficulty.estimate import DifficultyEstimate, Estimator
from difficulty.model import RouterModel
from difficulty.probe import ProbeResult, run_probe
from policies.base import Problem, StrategyError
from policies.bounds import within_request_tokens
from policies.decision import Decision, Source
from policies.decision_cache import DecisionCache, cache_key
from policies.forced import forced_decision
from policies.latency import SLO, Load, predict_latency_ms
from policies.load import LoadTracker
from policies.policy import Policy
from policies.pricing import ArmPricer
from policies.registry import FALLBACK_STRATEGY, THINKING_STRATEGY, strategy_class
from policies.request import RequestSpec
from policies.router_model import (
    cost_weight,
    for_backend,
    load_model,
    probe_length,
    uninformed_model,
)
from policies.selector import select, thompson_draws
from policies.settings import EFFORTS, PolicySettings, StrategiesSettings
from policies.store import InMemoryPolicyStore, PolicyStore, RedisPolicyStore, stats_scope
from tasks.task import OPEN_TASK

log = logging.getLogger("acr.policy")

#: below this deadline deliberating (about a millisecond) would eat the request's own time
FAST_PATH_MS = 10.0


class AdaptivePolicy(Policy):
    """Decides strategy and budget per request (``decide``).

    Collaborators are injected: ``backend`` (for the probe; None disables it), ``store``
    (``RedisPolicyStore`` shared by replicas, or ``InMemoryPolicyStore``), ``model`` (the
    router model; an uninformed one when None), ``rng`` (exploration) and ``clock``.
    ``revision`` names the live config it decides under (every decision carries it, and
    the decision cache keeps one namespace per revision); ``tracker`` is the load tracker
    of the policy it replaces, so that a reload keeps counting requests in flight and what
    it learned of the backend's speed.
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
        max_request_tokens: int | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        revision: str = "",
        tracker: LoadTracker | None = None,
    ) -> None:
        self.settings = policy
        self.revision = revision
        self.max_request_tokens = max_request_tokens
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
        self.tracker = tracker or LoadTracker(
            policy.capacity_tokens_per_s, clock, call_overhead_ms=policy.call_latency_ms
        )
        self.arms = list(self.model.card.arms)
        self._arm_by_name = {a.name: a for a in self.arms}
        self.probe_tokens = probe_length(policy.probe_tokens, self.model)
        self.lambda_per_1k_tokens = cost_weight(policy.lambda_per_1k_tokens, self.model)
        self.estimator = Estimator(self.model, self.probe_tokens)
        self.pricer = ArmPricer(self.model, self.arms, strategies, policy)
        self.cache = DecisionCache(self.store, policy.decision_cache_ttl_s, namespace=revision)
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
        max_request_tokens: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        revision: str = "",
        previous: AdaptivePolicy | None = None,
    ) -> AdaptivePolicy:
        """The policy the service runs: the model at ``policy.classifier_path`` (else the
        bundled one), a ``RedisPolicyStore`` on ``redis_client`` (a ``redis.asyncio.Redis``;
        None keeps state in memory) under ``key_prefix``; ``max_request_tokens`` bounds what
        ``n`` runs of a decision may generate. ``previous`` is the policy a live reload
        replaces: its load tracker is kept, and its store too while the version (and so
        every key of the online state) is the same."""
        model = for_backend(
            model or load_model(policy.classifier_path),
            backend.name if backend is not None else "any",
        )
        version = cls.version_for(policy, model)
        store: PolicyStore
        if previous is not None and previous.store.version == version:
            store = previous.store
        elif redis_client is not None:
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
            max_request_tokens=max_request_tokens,
            clock=clock,
            revision=revision,
            tracker=previous.tracker if previous is not None else None,
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

    def forced_strategy(self, spec: RequestSpec) -> tuple[str | None, Source]:
        """(strategy, source) a request forces: a named strategy, else its effort (on a
        reasoning model: a thinking budget); else (None, auto)."""
        if spec.strategy and spec.strategy != "auto":
            return spec.strategy, "explicit"
        if spec.effort in EFFORTS:
            if self.reasoning:
                return THINKING_STRATEGY, "effort"
            return self.strategies.effort[spec.effort], "effort"  # type: ignore[index]
        return None, "auto"

    def _forced_override(self, spec: RequestSpec, source: Source) -> dict[str, Any] | None:
        """The budget fields a forced request runs with: its own, and on a reasoning model
        the thinking budget its effort buys (unless it set max_tokens itself)."""
        override = dict(spec.budget or {})
        if source == "effort" and self.reasoning and "max_tokens" not in override:
            effort = spec.effort or "medium"
            override["max_tokens"] = self.strategies.thinking_budget_tokens[effort]  # type: ignore[index]
        return override or None

    async def decide(
        self, spec: RequestSpec, *, load: Load | None = None, now: float | None = None
    ) -> Decision:
        """The frozen decision for ``spec`` (the probe, if one ran, is ``decision.probe``).

        A forced strategy keeps its strategy (its budget may shrink to fit its own time
        limit); otherwise the router chooses. Either way the client's caps and the server's
        token bound are applied once, at the end. ``load`` and ``now`` replace the live
        measurements (simulations, tests). Raises ``StrategyError`` only for what the
        request asked (a strategy that cannot run here, a forced ``n`` past the bound);
        backend errors during the probe mean "no probe", and an unexpected failure falls
        back to single pass with the reason saying so.
        """
        t0 = self.clock() if now is None else now
        slo = self.slo(spec.latency_budget_ms, spec.deadline_ms)
        forced, source = self.forced_strategy(spec)
        probe: ProbeResult | None = None
        try:
            if spec.deadline_ms is not None and spec.deadline_ms < FAST_PATH_MS:
                decision = self._fast(forced or FALLBACK_STRATEGY, source, spec)
            elif forced is not None:
                decision = await self._forced(spec, forced, source, slo, t0, load)
            else:
                decision, probe = await self._auto(spec, slo, t0, load)
        except StrategyError:
            raise  # the request named something that cannot run here: the client's 400
        except (ValueError, TypeError, ArithmeticError, KeyError) as exc:
            log.exception("adaptive policy failed; falling back to single pass")
            decision = Decision(
                strategy=FALLBACK_STRATEGY,
                arm=FALLBACK_STRATEGY,
                budget=self.pricer.budget_of(FALLBACK_STRATEGY, None, spec.budget),
                reason=f"policy error ({type(exc).__name__}); fell back to single pass",
                source="fallback",
                policy_version=self.version,
            )
        decision = self._bounded(decision, spec, probe)
        if spec.serving:
            expires_s = (spec.deadline_ms or slo.latency_budget_ms) / 1000 * 2
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

    def _bounded(
        self, decision: Decision, spec: RequestSpec, probe: ProbeResult | None
    ) -> Decision:
        """The selected ``decision`` as it will run: the client's ``max_tokens`` and (for a
        strategy that takes it) ``temperature`` on its budget, then cut to the server's
        token bound for ``n`` runs (``policies.bounds``), with ``probe`` attached."""
        caps: dict[str, Any] = {}
        if spec.max_tokens is not None and spec.max_tokens < decision.budget.max_tokens:
            caps["max_tokens"] = spec.max_tokens
        if (
            spec.temperature is not None
            and strategy_class(decision.strategy).takes_client_temperature
        ):
            caps["temperature"] = spec.temperature
        budget = decision.budget.model_copy(update=caps) if caps else decision.budget
        bounded = within_request_tokens(
            decision.strategy,
            decision.arm,
            budget,
            n=spec.n,
            think=spec.problem.think,
            probe_tokens=decision.probe_tokens,
            max_request_tokens=self.max_request_tokens,
            client_chose=decision.source in ("explicit", "effort"),
        )
        update: dict[str, Any] = {
            "strategy": bounded.strategy,
            "arm": bounded.arm,
            "budget": bounded.budget,
            "probe": probe,
            "config_revision": self.revision,
        }
        if bounded.cut is not None:
            update.update(downgraded=True, reason=f"{decision.reason}; {bounded.cut}")
        return decision.model_copy(update=update)

    def _fast(self, strategy: str, source: Source, spec: RequestSpec) -> Decision:
        return Decision(
            strategy=strategy,
            arm=strategy,
            budget=self.pricer.budget_of(strategy, None, spec.budget),
            reason=f"deadline {spec.deadline_ms:.0f} ms leaves no time to deliberate; {strategy}",
            source=source,
            policy_version=self.version,
        )

    def estimate(
        self, problem: Problem, probe: ProbeResult | None = None, max_tokens: int | None = None
    ) -> DifficultyEstimate:
        """The difficulty estimate of ``problem`` (with its ``probe`` when one ran) on this
        backend; what ``choose`` prices arms for. ``max_tokens`` is the client's own cap."""
        answer = self.pricer.budget_of(FALLBACK_STRATEGY, None, None).max_tokens
        est = self.estimator.estimate(
            problem.text,
            probe.summary() if probe else None,
            task=problem.task,
            probe_tokens=probe.tokens if probe else 0,
            answer_tokens=min(answer, max_tokens or answer),
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
                "parallel_slots": caps.parallel_slots if caps is not None else 16,
                "reasoning": self.reasoning,
            }
        )

    async def _forced(
        self,
        spec: RequestSpec,
        strategy: str,
        source: Source,
        slo: SLO,
        t0: float,
        load: Load | None,
    ) -> Decision:
        cls = strategy_class(strategy)
        est = self.estimate(spec.problem)
        why_not = cls.unavailable(est)
        if why_not is not None:
            raise StrategyError(why_not)
        override = self._forced_override(spec, source)
        budget = self.pricer.budget_of(strategy, None, override)
        name = cls.arm_name(budget)
        stats = None
        if name in self._arm_by_name:
            online = await self.store.arm_stats(self._scope(est), [name])
            priced = self.pricer.arm_stats(est, online, override)
            stats = next((s for s in priced if s.name == name), None)
        return forced_decision(
            cls,
            budget,
            est,
            stats,
            spec=spec,
            source=source,
            slo=slo,
            load=load or self.tracker.snapshot(t0),
            policy_version=self.version,
        )

    async def _auto(
        self, spec: RequestSpec, slo: SLO, t0: float, load: Load | None
    ) -> tuple[Decision, ProbeResult | None]:
        problem = spec.problem
        key = cache_key(problem, spec.tenant)
        est = await self.cache.get(key)
        if est is not None:
            est = self._on_this_backend(est)
        source: Source = "cache" if est is not None else "auto"
        probe: ProbeResult | None = None
        if est is None:
            if spec.probe and self.probe_can_change(spec):
                probe = await self._probe(spec, slo, load, t0)
            est = self.estimate(problem, probe, spec.max_tokens)
        now = self.clock()
        elapsed_ms = max(0.0, (now - t0) * 1000)
        live = (
            load.model_copy(update={"elapsed_ms": elapsed_ms})
            if load
            else self.tracker.snapshot(now, elapsed_ms)
        )
        decision = await self.choose(est, slo, live, override=spec.budget, source=source)
        # Only a served request's own full probe is kept: /v1/route generates nothing and
        # a probe the client's stop strings may have cut would misjudge the next asker.
        if source != "cache" and spec.serving and probe is not None and not problem.stop:
            await self.cache.put(key, est, decision.arm)
        return decision, probe

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
        return select(
            est, stats, slo, load, draws=draws, policy_version=self.version, source=source
        )

    def _scope(self, est: DifficultyEstimate) -> str:
        """The online statistics ``est`` is priced with: this backend model, its task, bin."""
        return stats_scope(self.backend_model, est.kind, est.bin)

    def probe_can_change(self, spec: RequestSpec) -> bool:
        """Whether a probe could change this request's decision or answer it: the router
        model reads its features, or an exact checker can verify its answer; and the
        request's answer can be the probe's (plain free text). Otherwise the probe would only
        spend tokens and time (with log-probabilities, which some servers make slow)."""
        useful = self.model.reads_probe or spec.problem.task.exact
        return useful and not spec.problem.task.structured and spec.problem.top_logprobs is None

    def should_probe(self, slo: SLO, load: Load) -> bool:
        """Whether a probe is worth running now: enabled, and cheap enough under this load."""
        if self.backend is None or self.probe_tokens <= 0:
            return False
        est_ms = predict_latency_ms(self.probe_tokens * 0.8, 0.0, load)
        # Under a deep queue the probe alone would eat the SLO: decide on the prompt instead.
        return est_ms <= slo.latency_budget_ms * self.settings.probe_share_of_slo

    async def _probe(
        self, spec: RequestSpec, slo: SLO, load: Load | None, t0: float
    ) -> ProbeResult | None:
        problem = spec.problem
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
                    max_tokens=min(self.probe_tokens, spec.max_tokens or self.probe_tokens),
                    stop=problem.stop,
                    task=problem.task,
                    params=problem.params,
                    clock=self.clock,
                ),
                timeout=allowed_s,
            )
        except (BackendError, TimeoutError) as exc:
            log.warning("probe failed or ran out of time (%r); deciding on prompt features", exc)
            return None
        self.tracker.observe_call(probe.wall_ms, probe.tokens)
        return probe

    async def close(self) -> None:
        """Close the store."""
        await self.store.close()
