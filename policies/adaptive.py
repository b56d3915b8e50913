"""``AdaptivePolicy``: the thin stateful class the service calls to decide and to learn.

Per request: prompt features -> (cache or probe) -> router model -> shared online stats ->
``select`` (pure) -> ``Decision``. After the request: ``record`` updates the shared (kind, bin, arm)
posteriors and cost statistics in the ``PolicyStore`` (Redis). It also tracks this replica's
load (requests in flight, tokens queued, live throughput) so the selector can downgrade
before a deep queue breaks the latency SLO.

It satisfies the service's ``Decider`` protocol (``decide(problem, *, effort, options,
deadline_ms)`` and ``record(decision, result, reward)``) by duck typing, without importing
``router``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backends.base import Backend, BackendError
from backends.verifiers.base import Verifier
from difficulty.features import as_dict, detect_kind, feature_vector
from difficulty.model import ArmSpec, RouterModel, RouterModelError, arm_name
from difficulty.probe import ProbeResult, ProbeSummary, run_probe
from policies.base import Budget, Problem, StrategyResult
from policies.online import InMemoryPolicyStore, OnlineStat, PolicyStore, stats_scope
from policies.selector import (
    SLO,
    ArmStats,
    Decision,
    DifficultyEstimate,
    Load,
    beta_prior,
    expected_samples,
    predict_latency_ms,
    select,
    shrink_budget,
    thompson_draws,
)

log = logging.getLogger("acr.policy")

VerifierLookup = Callable[[str], tuple[str, Verifier | None]]
EFFORTS = ("low", "medium", "high")
FAST_PATH_MS = 10.0


def default_budgets() -> dict[str, Budget]:
    """The service config's default strategy budgets (``router.config``), for standalone use."""
    return {
        "single_pass": Budget(max_tokens=160, samples=1, batch_size=4, temperature=0.0),
        "bounded_reasoning": Budget(max_tokens=160, samples=1, batch_size=4, temperature=0.0),
        "best_of_n": Budget(max_tokens=160, samples=16, batch_size=16, temperature=0.8),
        "self_consistency": Budget(max_tokens=160, samples=16, batch_size=4, temperature=0.8),
        "beam_search": Budget(max_tokens=160, beam_width=3, expansions=8, max_steps=8),
    }


class AdaptiveSettings(BaseModel):
    """The policy's knobs (from ``policy`` and ``strategies`` of the service config)."""

    model_config = ConfigDict(extra="forbid")

    policy_version: str = "v1"
    latency_slo_ms: float = Field(default=10_000, gt=0)
    cost_cap_tokens: float = Field(default=4096, gt=0)
    lambda_per_1k_tokens: float = Field(default=0.1, ge=0)
    exploration_rate: float = Field(default=0.05, ge=0, le=1)
    decision_cache_ttl_s: int = Field(default=300, ge=0)
    probe_tokens: int = Field(default=64, ge=0)
    budgets: dict[str, Budget] = Field(default_factory=default_budgets)
    effort: dict[str, str] = Field(
        default_factory=lambda: {
            "low": "single_pass",
            "medium": "bounded_reasoning",
            "high": "best_of_n",
        }
    )
    prior_strength: float = Field(
        default=20.0, gt=0, description="Pseudo-observations the training prior is worth."
    )
    capacity_tokens_per_s: float = Field(
        default=2000.0, gt=0, description="Initial backend throughput guess (learned live)."
    )
    call_latency_ms: float = Field(
        default=0.0, ge=0, description="Initial latency of one backend call (learned live)."
    )
    probe_share_of_slo: float = Field(
        default=0.5, gt=0, le=1, description="Skip the probe if it would use more of the SLO."
    )

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> AdaptiveSettings:
        """Settings from a ``router.config.AppConfig`` (duck-typed: policies never import it)."""
        pol, strat = config.policy, config.strategies
        data: dict[str, Any] = {
            "policy_version": pol.version,
            "latency_slo_ms": pol.latency_slo_ms,
            "cost_cap_tokens": pol.cost_cap_tokens,
            "lambda_per_1k_tokens": pol.lambda_per_1k_tokens,
            "exploration_rate": pol.exploration_rate,
            "decision_cache_ttl_s": pol.decision_cache_ttl_s,
            "probe_tokens": pol.probe_tokens,
            "budgets": {k: Budget(**v.model_dump()) for k, v in strat.budgets.items()},
            "effort": dict(strat.effort),
        }
        data.update(overrides)
        return cls(**data)


def prompt_hash(text: str) -> str:
    """Normalised prompt hash (case and whitespace folded) used as the decision-cache key."""
    norm = " ".join(text.lower().split())
    return hashlib.sha256(norm.encode("utf-8", "replace")).hexdigest()[:32]


@dataclass
class _Inflight:
    tokens: float
    expires_at: float
    started_at: float
    concurrency: int
    predicted_ms: float = 0.0
    strategy: str = ""


class LoadTracker:
    """This replica's load: requests in flight, tokens they still owe, live throughput.

    ``begin`` at decision time, ``end`` when the outcome is recorded; entries whose deadline
    passed are dropped (a request that failed without an outcome must not count forever).
    Capacity (aggregate tokens/s of a busy backend) starts from the measured value and is
    re-measured only while the backend is saturated (``saturated_at`` requests in flight):
    tokens finished per second of saturated time. A lone greedy decode is slow because it is
    one row wide, not because the backend is busy, so unsaturated periods teach nothing.
    Utilisation is the predicted tokens admitted over the last ``window_s`` per second over
    that capacity.
    """

    def __init__(
        self,
        capacity_tokens_per_s: float,
        clock: Callable[[], float],
        window_s: float = 10.0,
        saturated_at: int = 8,
    ) -> None:
        self.capacity = capacity_tokens_per_s
        self.clock = clock
        self.jobs: dict[str, _Inflight] = {}
        self.window_s = window_s
        self.saturated_at = saturated_at
        # (time, predicted tokens) of recent admissions: the offered load.
        self.recent: collections.deque[tuple[float, float]] = collections.deque()
        self._last = clock()
        self._sat_time = 0.0
        self._sat_tokens = 0.0
        self.slowdown = 1.0
        # Per strategy: one that makes several sequential calls (bounded reasoning's
        # backtracking, beam steps) can run slower than predicted while others do not.
        self.slowdown_by: dict[str, float] = {}
        self.call_ms = 0.0
        self._call_mean = 0.0
        self._call_dev = 0.0

    def _advance(self, now: float) -> None:
        for k in [k for k, j in self.jobs.items() if j.expires_at <= now]:
            del self.jobs[k]
        dt = now - self._last
        if dt > 0 and len(self.jobs) >= self.saturated_at:
            self._sat_time += dt
        self._last = max(self._last, now)

    def begin(
        self,
        key: str,
        tokens: float,
        deadline_s: float,
        now: float | None = None,
        predicted_ms: float = 0.0,
        strategy: str = "",
    ) -> None:
        """Count a request as in flight with ``tokens`` predicted to generate and
        ``predicted_ms`` predicted latency (from the start of its decision) for ``strategy``."""
        t = self.clock() if now is None else now
        self._advance(t)
        self.jobs[key] = _Inflight(
            tokens, t + deadline_s, t, len(self.jobs) + 1, predicted_ms, strategy
        )
        self.recent.append((t, tokens))

    def end(self, key: str, tokens: float | None, now: float | None = None) -> None:
        """The request finished after generating ``tokens``; re-measure capacity if saturated."""
        t = self.clock() if now is None else now
        self._advance(t)
        job = self.jobs.pop(key, None)
        if job is None:
            return
        if job.predicted_ms >= 20.0:
            ratio = min(20.0, max(0.5, (t - job.started_at) * 1000 / job.predicted_ms))
            self.slowdown = _ewma_ratio(self.slowdown, ratio)
            # A strategy priced out of use is never observed again: let its own factor drift
            # back to the common one as other requests finish, so it is not shut out for good.
            for name, factor in self.slowdown_by.items():
                self.slowdown_by[name] = factor + 0.01 * (self.slowdown - factor)
            if job.strategy:
                mine = self.slowdown_by.get(job.strategy, self.slowdown)
                self.slowdown_by[job.strategy] = _ewma_ratio(mine, ratio)
        if not tokens or tokens <= 0:
            return
        if len(self.jobs) + 1 >= self.saturated_at:
            self._sat_tokens += tokens
        if self._sat_time >= 5.0:
            observed = self._sat_tokens / self._sat_time
            self.capacity = 0.8 * self.capacity + 0.2 * observed
            self._sat_time = self._sat_tokens = 0.0

    def observe_call(self, wall_ms: float) -> None:
        """One backend call took ``wall_ms`` (the probe, a single pass, a sampling batch).

        Keeps an EWMA of the mean and of the absolute deviation; ``call_ms`` is mean + 2
        deviations, a high quantile: on a batching server a call may land just after a
        decode cycle started and wait for all of it.
        """
        if wall_ms <= 0:
            return
        # Up fast (a queue is forming), down slower (do not trust a single quick call).
        rate = 0.3 if wall_ms > self._call_mean else 0.1
        self._call_dev = (1 - rate) * self._call_dev + rate * abs(wall_ms - self._call_mean)
        self._call_mean = (1 - rate) * self._call_mean + rate * wall_ms
        self.call_ms = self._call_mean + 2 * self._call_dev

    def snapshot(self, now: float | None = None, elapsed_ms: float = 0.0) -> Load:
        """The load a new request would meet now."""
        t = self.clock() if now is None else now
        self._advance(t)
        while self.recent and self.recent[0][0] < t - self.window_s:
            self.recent.popleft()
        # Early in a run the window is short; never divide by less than one second.
        span = max(1.0, min(self.window_s, t - self.recent[0][0])) if self.recent else 1.0
        offered = sum(tok for _, tok in self.recent) / span
        capacity = max(1.0, self.capacity)
        return Load(
            inflight=len(self.jobs),
            queued_tokens=sum(j.tokens for j in self.jobs.values()),
            capacity_tokens_per_s=capacity,
            elapsed_ms=elapsed_ms,
            utilization=offered / capacity,
            slowdown=self.slowdown,
            slowdown_by_strategy=dict(self.slowdown_by),
            call_ms=self.call_ms,
        )


def _ewma_ratio(current: float, ratio: float) -> float:
    """Observed/predicted latency folded into a running factor: rise fast (SLOs are at
    stake), decay slowly."""
    rate = 0.2 if ratio > current else 0.05
    return min(20.0, max(0.5, (1 - rate) * current + rate * ratio))


def repeats_probe(strategy: str, budget: Budget, est: DifficultyEstimate) -> bool:
    """Whether running ``strategy`` would only repeat the finished greedy probe.

    Bounded reasoning backtracks only on an exact checker; without one it is a single greedy
    chain, token for token the probe's when the probe ended by itself, so it can only cost
    what single pass (served from the probe) gets for free. On the benchmark's arithmetic the
    two agreed on all 112 such questions while the router, reading noise in its per-arm
    models, sent 58 of them to bounded reasoning (23 tokens a request on the mix).
    """
    return (
        strategy == "bounded_reasoning"
        and est.probe_finished
        and not est.exact_verifier
        and budget.temperature == 0
        and budget.max_tokens >= est.probe_tokens
    )


def probe_as_result(probe: ProbeResult, strategy: str = "single_pass") -> StrategyResult:
    """The probe's greedy completion as the single-pass ``StrategyResult`` (no new tokens).

    Its tokens are *visible* here; the service must then not add ``decision.probe_tokens``
    again (``Decision.reuse_probe`` says so).
    """
    answer = None
    try:
        from backends.verifiers.numeric import extract_answer

        answer = extract_answer(probe.text)
    except Exception:  # noqa: BLE001 - answer extraction is optional here
        answer = None
    return StrategyResult(
        strategy=strategy,
        text=probe.text,
        answer=answer,
        candidates=[],
        prompt_tokens=probe.prompt_tokens,
        visible_tokens=probe.tokens,
        hidden_tokens=0,
        verifier_tokens=0,
        wall_ms=probe.wall_ms,
        samples=1,
        stop_reason="answered" if probe.verifier_score is None else "verified",
        score=probe.verifier_score,
        finish_reason=probe.finish_reason,
    )


class AdaptivePolicy:
    """Decides strategy and budget per request and learns from outcomes.

    Collaborators are injected: ``backend`` (for the probe; None disables it), ``store``
    (``RedisPolicyStore`` shared by replicas, or ``InMemoryPolicyStore``), ``model`` (the
    router model; ``RouterModel.uninformed()`` when None), ``verifier_lookup`` (problem text ->
    task kind and verifier, to judge the probe), ``rng`` (exploration) and ``clock``.
    """

    def __init__(
        self,
        settings: AdaptiveSettings,
        *,
        backend: Backend | None,
        store: PolicyStore | None = None,
        model: RouterModel | None = None,
        verifier_lookup: VerifierLookup | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.model = model or RouterModel.uninformed(probe_tokens=settings.probe_tokens)
        self.version = f"{settings.policy_version}.{self.model.version}"
        self.store = store or InMemoryPolicyStore(self.version, clock)
        if self.store.version != self.version:
            raise ValueError(
                f"policy store version {self.store.version!r} differs from the policy's "
                f"{self.version!r}; build the store with version=AdaptivePolicy.version_for(...)"
            )
        self.verifier_lookup = verifier_lookup
        self.rng = rng or random.Random()
        self.clock = clock
        self.tracker = LoadTracker(settings.capacity_tokens_per_s, clock)
        if settings.call_latency_ms:
            self.tracker.observe_call(settings.call_latency_ms)
        self.arms: list[ArmSpec] = list(self.model.card.arms)
        self._arm_by_name = {a.name: a for a in self.arms}
        # Probe length is part of the feature schema: entropy over 24 tokens is not entropy
        # over 64. The model's own length wins when it was trained with a probe.
        self.probe_tokens = (
            self.model.card.probe_tokens if self.model.card.probe_tokens else settings.probe_tokens
        )
        if settings.probe_tokens == 0:
            self.probe_tokens = 0
        # Probes waiting to be reused by the service, by decision id (bounded).
        self._probes: dict[str, ProbeResult] = {}
        # Sequential backend calls bounded reasoning made per request, by task kind (EWMA).
        self._bounded_calls: dict[str, float] = {}
        self._budgets: dict[tuple[str, str], Budget] = {}
        # Warm the lazy imports and code paths now, not on the first request's clock.
        self.estimate("1 2 3 4", None, exact_verifier=False)
        self.estimate("What is 1+2?", None, exact_verifier=False)

    @classmethod
    def from_config(
        cls,
        config: Any,
        backend: Backend | None,
        *,
        redis_client: Any = None,
        verifier_lookup: VerifierLookup | None = None,
        model: RouterModel | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> AdaptivePolicy:
        """The policy the service runs: settings from ``config`` (an ``AppConfig``), the model
        at ``config.policy.classifier_path`` (else the bundled one), a ``RedisPolicyStore`` on
        ``redis_client`` (a ``redis.asyncio.Redis``; None keeps state in memory) under
        ``config.redis.key_prefix``.
        """
        settings = AdaptiveSettings.from_config(config)
        model = model or cls.load_model(config.policy.classifier_path)
        version = cls.version_for(settings, model)
        store: PolicyStore
        if redis_client is not None:
            from policies.online import RedisPolicyStore

            store = RedisPolicyStore(
                redis_client, key_prefix=config.redis.key_prefix, version=version, clock=clock
            )
        else:
            store = InMemoryPolicyStore(version, clock)
        return cls(
            settings,
            backend=backend,
            store=store,
            model=model,
            verifier_lookup=verifier_lookup,
            clock=clock,
        )

    @staticmethod
    def version_for(settings: AdaptiveSettings, model: RouterModel) -> str:
        """The version string every Redis key of this policy carries."""
        return f"{settings.policy_version}.{model.version}"

    @classmethod
    def load_model(cls, path: str | None) -> RouterModel:
        """The configured router model, else the bundled one, else an uninformed one."""
        from difficulty.model import bundled_router_path

        try:
            return RouterModel.load(path or bundled_router_path())
        except RouterModelError as exc:
            if path:
                raise
            log.warning("no usable bundled router model (%s); using priors only", exc)
            return RouterModel.uninformed()

    # -- building blocks ----------------------------------------------------------------------

    def budget_of(
        self, strategy: str, arm: ArmSpec | None, override: dict[str, Any] | None
    ) -> Budget:
        """Config budget of ``strategy`` with the arm's fields, then the request's, applied."""
        if not override:
            key = (strategy, arm.name if arm is not None else "")
            hit = self._budgets.get(key)
            if hit is None:
                hit = self._budgets[key] = self._budget_of(strategy, arm, None)
            return hit.model_copy()
        return self._budget_of(strategy, arm, override)

    def _budget_of(
        self, strategy: str, arm: ArmSpec | None, override: dict[str, Any] | None
    ) -> Budget:
        base = self.settings.budgets.get(strategy, Budget())
        data = base.model_dump()
        if arm is not None:
            for k, v in arm.budget.items():
                data[k] = type(data[k])(v) if k in data else v
        if override:
            data.update({k: v for k, v in override.items() if v is not None})
        data["batch_size"] = min(data["batch_size"], data["samples"]) or 1
        return Budget(**data)

    def estimate(
        self,
        text: str,
        probe: ProbeSummary | None,
        *,
        kind: str | None = None,
        probe_tokens: int = 0,
        exact_verifier: bool | None = None,
    ) -> DifficultyEstimate:
        """Features (+ probe) -> model -> per-arm P(success), difficulty and bin."""
        kind = kind or detect_kind(text)
        row = feature_vector(text, probe, kind)
        ood = self.model.is_ood(kind)
        # A prompt type the model never saw gets the arms' base rates and its own bin, which
        # only online outcomes and feedback will shape (no extrapolated confidence).
        probs = self.model.base_rates() if ood else self.model.predict(row)
        diff = self.model.difficulty(probs)
        return DifficultyEstimate(
            kind=kind,
            difficulty=min(1.0, max(0.0, diff)),
            bin=self.model.ood_bin if ood else self.model.bin_of(diff),
            ood=ood,
            probs={n: float(p) for n, p in zip(self.model.arm_names, probs, strict=True)},
            probe_tokens=probe_tokens,
            probe_reusable=probe is not None and self._reusable(probe),
            probe_finished=probe is not None and probe.finish_reason == "stop",
            probe_verdict=probe.verifier_score if probe is not None else None,
            exact_verifier=self.has_exact_verifier(text)
            if exact_verifier is None
            else exact_verifier,
            features=as_dict(row),
        )

    def _reusable(self, probe: ProbeSummary) -> bool:
        # A finished greedy decode is the single-pass answer; so is a cut one when the probe
        # had at least single pass's own token budget (single pass would be cut the same).
        if probe.finish_reason == "stop":
            return True
        return self.probe_tokens >= self.budget_of("single_pass", None, None).max_tokens

    def has_exact_verifier(self, text: str) -> bool:
        """Whether serving checks this prompt's answers exactly (Game of 24: yes)."""
        if self.verifier_lookup is None:
            return False
        try:
            v = self.verifier_lookup(text)[1]
        except Exception:  # noqa: BLE001 - a lookup failure means no checker
            return False
        return v is not None and v.exact

    def arm_stats(
        self,
        est: DifficultyEstimate,
        online: dict[str, OnlineStat],
        override: dict[str, Any] | None = None,
    ) -> list[ArmStats]:
        """Merge model predictions, training priors and online stats for ``est.bin``."""
        k = self.settings.prior_strength
        per_sample = self._sample_tokens(est)
        out = []
        for arm in self.arms:
            budget = self.budget_of(arm.strategy, arm, override)
            if repeats_probe(arm.strategy, budget, est):
                continue
            prior = self.model.bin_stat(arm.name, est.bin, est.kind)
            prior_p = prior.successes / prior.trials if prior.trials else est.probs[arm.name]
            a0, b0 = beta_prior(prior_p, k)
            on = online.get(arm.name, OnlineStat())
            tok0 = prior.tokens_mean or budget.max_tokens * budget.samples
            lat0 = prior.latency_ms_mean or 1000.0 * tok0 / self.settings.capacity_tokens_per_s
            w0 = k if prior.trials else 1.0
            # Online outcomes correct the training prior multiplicatively (drift in length
            # or speed), applied to this item's own expected cost.
            tok_factor = (tok0 * w0 + on.tokens) / (w0 + on.n) / tok0 if tok0 else 1.0
            lat_factor = (lat0 * w0 + on.latency_ms) / (w0 + on.n) / lat0 if lat0 else 1.0
            tok_item = tok0
            calls = 1.0
            if arm.strategy == "self_consistency":
                calls = float(-(-budget.samples // max(1, budget.batch_size)))
            elif arm.strategy == "beam_search":
                calls = float(budget.max_steps)
            elif arm.strategy == "bounded_reasoning":
                # With an exact step checker it backs up and resamples: on Game of 24 the
                # bundled model makes ~3 sequential calls, each waiting its turn under load.
                calls = self._bounded_calls.get(est.kind, 1.0)
            if arm.strategy == "self_consistency" and per_sample and est.exact_verifier:
                # With an exact checker the sampler stops at the first verified sample, so
                # an easy item costs a batch and a hard one the whole budget.
                drawn = expected_samples(est.probs[arm.name], budget.samples, budget.batch_size)
                tok_item = per_sample * drawn
                # Latency keeps the worst case (every batch drawn): an SLO is about the tail.
            out.append(
                ArmStats.model_construct(
                    name=arm.name,
                    strategy=arm.strategy,
                    budget=budget,
                    p_model=est.probs[arm.name],
                    prior_mean=a0 / (a0 + b0),
                    alpha=a0 + on.succ,
                    beta=b0 + on.fail,
                    tokens_mean=tok_item * tok_factor,
                    latency_ms_mean=lat0 * (tok_item / tok0 if tok0 else 1.0) * lat_factor,
                    calls=calls,
                )
            )
        return out

    def _sample_tokens(self, est: DifficultyEstimate) -> float | None:
        # Tokens of one sample: the best-of-16 arm's bin mean over 16 (it always draws all).
        stat = self.model.bin_stat("best_of_n@16", est.bin, est.kind)
        if stat.trials and stat.tokens_mean:
            return stat.tokens_mean / 16
        return None

    def slo(
        self,
        latency_budget_ms: float | None,
        deadline_ms: float | None,
        cost_cap_tokens: float | None = None,
        lambda_per_1k: float | None = None,
    ) -> SLO:
        """Config SLO with the request's latency budget (never beyond its deadline)."""
        lat = latency_budget_ms or self.settings.latency_slo_ms
        if deadline_ms:
            lat = min(lat, deadline_ms)
        return SLO(
            latency_budget_ms=lat,
            cost_cap_tokens=cost_cap_tokens or self.settings.cost_cap_tokens,
            lambda_per_1k_tokens=(
                self.settings.lambda_per_1k_tokens if lambda_per_1k is None else lambda_per_1k
            ),
        )

    # -- the service's entry points -----------------------------------------------------------

    async def decide(
        self,
        problem: Problem,
        *,
        effort: str | None = None,
        options: Any = None,
        deadline_ms: float | None = None,
        strategy_override: str | None = None,
        budget_override: dict[str, Any] | None = None,
        latency_budget_ms: float | None = None,
        probe: bool = True,
        serving: bool = True,
        load: Load | None = None,
        now: float | None = None,
    ) -> Decision:
        """The decision for ``problem``; the probe (if run) is ``decision_probe(decision)``.

        ``options`` is the request's ``acr`` object (duck-typed: ``strategy``, ``budget``,
        ``latency_budget_ms``); explicit keyword arguments win over it. ``effort`` in
        low/medium/high or a named strategy forces the strategy (its budget may still shrink
        to fit the SLO under load). ``probe=False`` decides on prompt features alone (what
        ``/v1/route`` should use: it must not generate); ``serving=False`` does not count the
        request as load (nothing will run). Never raises for any prompt text;
        backend errors during the probe mean "no probe".
        """
        decision, _ = await self.decide_with_probe(
            problem,
            effort=effort,
            options=options,
            deadline_ms=deadline_ms,
            strategy_override=strategy_override,
            budget_override=budget_override,
            latency_budget_ms=latency_budget_ms,
            probe=probe,
            serving=serving,
            load=load,
            now=now,
        )
        return decision

    async def decide_with_probe(
        self,
        problem: Problem,
        *,
        effort: str | None = None,
        options: Any = None,
        deadline_ms: float | None = None,
        strategy_override: str | None = None,
        budget_override: dict[str, Any] | None = None,
        latency_budget_ms: float | None = None,
        probe: bool = True,
        serving: bool = True,
        load: Load | None = None,
        now: float | None = None,
    ) -> tuple[Decision, ProbeResult | None]:
        """Like ``decide`` but also returns the probe (None when none ran)."""
        t0 = self.clock() if now is None else now
        if options is not None:
            strategy_override = strategy_override or getattr(options, "strategy", None)
            ob = getattr(options, "budget", None)
            if budget_override is None and ob is not None:
                budget_override = {k: v for k, v in ob.model_dump().items() if v is not None}
            latency_budget_ms = latency_budget_ms or getattr(options, "latency_budget_ms", None)
        slo = self.slo(latency_budget_ms, deadline_ms)
        forced = None
        source = "auto"
        if strategy_override and strategy_override != "auto":
            forced, source = strategy_override, "explicit"
        elif effort in EFFORTS:
            forced, source = self.settings.effort[effort], "effort"  # type: ignore[index]
        probe_result: ProbeResult | None = None
        if deadline_ms is not None and deadline_ms < FAST_PATH_MS:
            # Deliberating costs about a millisecond; under a deadline this short it would
            # eat the request's own time: the forced strategy, else the cheapest, at once.
            name = forced or "single_pass"
            d = Decision(
                strategy=name,
                arm=name,
                budget=self.budget_of(name, None, budget_override),
                reason=f"deadline {deadline_ms:.0f} ms leaves no time to deliberate; {name}",
                source=source,  # type: ignore[arg-type]
                policy_version=self.version,
            )
            return d, None
        try:
            if forced is not None:
                d = await self._forced(
                    problem, forced, source, effort, budget_override, slo, load, t0
                )
            else:
                d, probe_result = await self._auto(problem, budget_override, slo, probe, load, t0)
        except (ValueError, TypeError, ArithmeticError, KeyError) as exc:
            # The policy must never fail a request: an unexpected input or a corrupt cache
            # entry degrades to the configured single pass, and the reason says why.
            log.exception("adaptive policy failed; falling back to single pass")
            d = Decision(
                strategy="single_pass",
                arm="single_pass",
                budget=self.budget_of("single_pass", None, budget_override),
                reason=f"policy error ({type(exc).__name__}); fell back to single pass",
                source="fallback",
                policy_version=self.version,
            )
        if serving:
            expires_s = (deadline_ms or slo.latency_budget_ms) / 1000 * 2
            spent_ms = max(0.0, (self.clock() - t0) * 1000)  # the probe, already behind us
            self.tracker.begin(
                d.decision_id,
                d.predicted_cost_tokens or 0.0,
                expires_s,
                t0,
                predicted_ms=(d.predicted_latency_ms or 0.0) + spent_ms,
                strategy=d.strategy,
            )
        else:
            self._probes.pop(d.decision_id, None)
        return d, probe_result

    async def _forced(
        self,
        problem: Problem,
        strategy: str,
        source: str,
        effort: str | None,
        override: dict[str, Any] | None,
        slo: SLO,
        load: Load | None,
        t0: float,
    ) -> Decision:
        est = self.estimate(problem.text, None)
        budget = self.budget_of(strategy, None, override)
        name = arm_name(strategy, budget.model_dump())
        spec = self._arm_by_name.get(name)
        online = await self.store.arm_stats(stats_scope(est.kind, est.bin), [name]) if spec else {}
        stats = self.arm_stats(est, online, override) if spec else []
        st = next((s for s in stats if s.name == name), None)
        tokens = st.tokens_mean if st else float(budget.max_tokens * budget.samples)
        lat_ms = st.latency_ms_mean if st else 1000.0 * tokens / self.settings.capacity_tokens_per_s
        ld = load or self.tracker.snapshot(t0)
        budget2, cost, lat, shrunk = shrink_budget(strategy, budget, tokens, lat_ms, slo, ld)
        why = "strategy named in request" if source == "explicit" else f"reasoning_effort={effort}"
        if shrunk:
            why += (
                f"; budget shrunk to samples={budget2.samples} beam={budget2.beam_width} "
                f"to fit the {slo.latency_budget_ms:.0f} ms SLO under load"
            )
        decision = Decision(
            strategy=strategy,
            arm=arm_name(strategy, budget2.model_dump()),
            budget=budget2,
            reason=why,
            source=source,  # type: ignore[arg-type]
            predicted_success=est.probs.get(name),
            predicted_latency_ms=lat,
            predicted_cost_tokens=cost,
            policy_version=self.version,
            difficulty_bin=est.bin,
            difficulty=est.difficulty,
            downgraded=shrunk,
            extra={"features": est.features, "kind": est.kind},
        )
        return decision

    async def _auto(
        self,
        problem: Problem,
        override: dict[str, Any] | None,
        slo: SLO,
        probe: bool,
        load: Load | None,
        t0: float,
    ) -> tuple[Decision, ProbeResult | None]:
        key = prompt_hash(problem.text)
        ttl = self.settings.decision_cache_ttl_s
        cached = await self.store.cache_get(key) if ttl > 0 else None
        probe_result: ProbeResult | None = None
        source = "auto"
        est: DifficultyEstimate | None = None
        if cached is not None:
            try:
                est = DifficultyEstimate.model_validate(cached["estimate"])
                # The probe is not re-run: no tokens spent, no completion to reuse.
                est = est.model_copy(update={"probe_tokens": 0, "probe_reusable": False})
                source = "cache"
            except (KeyError, ValueError, TypeError):
                est = None
        if est is None:
            kind = detect_kind(problem.text)
            probe_result = await self._maybe_probe(problem, kind, slo, load, t0) if probe else None
            est = self.estimate(
                problem.text,
                probe_result.summary() if probe_result else None,
                kind=kind,
                probe_tokens=probe_result.tokens if probe_result else 0,
            )
        now = self.clock()
        elapsed_ms = max(0.0, (now - t0) * 1000)
        ld = (
            load.model_copy(update={"elapsed_ms": elapsed_ms})
            if load
            else self.tracker.snapshot(now, elapsed_ms)
        )
        decision = await self.choose(est, slo, ld, override=override, source=source)
        if probe_result is not None:
            self._probes[decision.decision_id] = probe_result
            if len(self._probes) > 4096:
                self._probes.pop(next(iter(self._probes)))
        if ttl > 0 and source != "cache":
            await self.store.cache_put(
                key, {"estimate": est.model_dump(), "arm": decision.arm}, ttl
            )
        return decision, probe_result

    async def choose(
        self,
        est: DifficultyEstimate,
        slo: SLO,
        load: Load,
        *,
        override: dict[str, Any] | None = None,
        source: str = "auto",
    ) -> Decision:
        """Select for an estimate: shared stats of its kind and bin + Thompson gate + ``select``.

        The step after the probe; simulations call it directly with their own load.
        """
        online = await self.store.arm_stats(
            stats_scope(est.kind, est.bin), [a.name for a in self.arms]
        )
        stats = self.arm_stats(est, online, override)
        draws = thompson_draws(stats, self.rng, self.settings.exploration_rate)
        decision = select(est, stats, slo, load, draws=draws, policy_version=self.version)
        decision.source = source  # type: ignore[assignment]
        if source == "cache":
            decision.reason = "cached difficulty estimate; " + decision.reason
        decision.extra = {"features": est.features, "kind": est.kind}
        return decision

    def should_probe(self, slo: SLO, load: Load) -> bool:
        """Whether a probe is worth running now: enabled, and cheap enough under this load."""
        if self.backend is None or self.probe_tokens <= 0:
            return False
        est_ms = predict_latency_ms(self.probe_tokens * 0.8, 0.0, load)
        # Under a deep queue the probe alone would eat the SLO: decide on the prompt instead.
        return est_ms <= slo.latency_budget_ms * self.settings.probe_share_of_slo

    def decision_probe(self, decision: Decision, *, pop: bool = True) -> ProbeResult | None:
        """The probe run for ``decision`` (None if none): reuse it when ``reuse_probe``."""
        if pop:
            return self._probes.pop(decision.decision_id, None)
        return self._probes.get(decision.decision_id)

    def continued_problem(self, problem: Problem, decision: Decision) -> Problem | None:
        """``problem`` with the cut probe as its answer prefix when the decision says single
        pass should continue it (``continue_probe``); None otherwise. Keeps the probe."""
        if not decision.continue_probe:
            return None
        probe = self.decision_probe(decision, pop=False)
        if probe is None or not probe.text or probe.finish_reason == "stop":
            return None
        return dataclasses.replace(problem, prefix=probe.text, prefix_tokens=probe.tokens)

    def probe_answer(self, decision: Decision) -> StrategyResult | None:
        """The single-pass ``StrategyResult`` built from the probe when ``reuse_probe``."""
        if not decision.reuse_probe:
            return None
        probe = self.decision_probe(decision)
        return probe_as_result(probe) if probe is not None else None

    async def _maybe_probe(
        self, problem: Problem, kind: str, slo: SLO, load: Load | None, t0: float
    ) -> ProbeResult | None:
        if self.backend is None or not self.should_probe(slo, load or self.tracker.snapshot(t0)):
            return None
        verifier = None
        if self.verifier_lookup is not None:
            try:
                verifier = self.verifier_lookup(problem.text)[1]
            except Exception:  # noqa: BLE001 - no verifier means no verdict, not an error
                verifier = None
        try:
            probe = await run_probe(
                self.backend,
                problem_text=problem.text,
                prompt=problem.prompt,
                messages=problem.messages,
                max_tokens=self.probe_tokens,
                stop=problem.stop,
                verifier=verifier,
                reference=None,
                clock=self.clock,
            )
            self.tracker.observe_call(probe.wall_ms)
            return probe
        except (BackendError, TimeoutError) as exc:
            log.warning("probe failed (%s); deciding on prompt features", exc)
            return None

    async def solve(
        self,
        problem: Problem,
        verifier: Verifier | None,
        deadline: float,
        *,
        effort: str | None = None,
        latency_budget_ms: float | None = None,
        learn: bool = True,
    ) -> tuple[Decision, StrategyResult, int]:
        """Decide, run the chosen strategy (or reuse the probe), learn; what ``auto`` does.

        Returns (decision, result, total generated tokens including the probe's). The bench's
        ``auto`` row and the service run exactly this sequence.
        """
        from policies.registry import get_strategy

        if self.backend is None:
            raise ValueError("solve needs a backend")
        deadline_ms = max(1.0, (deadline - self.clock()) * 1000)
        decision, _probe = await self.decide_with_probe(
            problem, effort=effort, deadline_ms=deadline_ms, latency_budget_ms=latency_budget_ms
        )
        reused = self.probe_answer(decision)
        if reused is not None:
            result, total = reused, reused.completion_tokens + reused.verifier_tokens
        else:
            strategy = get_strategy(decision.strategy)
            # A cut probe is the start of the greedy answer: single pass only adds the rest.
            run_on = self.continued_problem(problem, decision) or problem
            result = await strategy.run(
                run_on, self.backend, verifier, decision.budget, deadline, clock=self.clock
            )
            total = result.completion_tokens + result.verifier_tokens + decision.probe_tokens
        if learn:
            await self.record(decision, result, None)
        else:
            self.tracker.end(decision.decision_id, None)
        return decision, result, total

    async def record(
        self,
        decision: Decision,
        result: StrategyResult | None,
        reward: float | None,
        *,
        now: float | None = None,
    ) -> None:
        """Learn from one outcome; ``record_outcome`` is the same."""
        await self.record_outcome(decision, result, reward, now=now)

    async def record_outcome(
        self,
        decision: Decision,
        result: StrategyResult | None,
        reward: float | None,
        *,
        now: float | None = None,
    ) -> None:
        """Update the shared (kind, bin, arm) posterior and cost stats from one outcome.

        A served request (``reward`` None) contributes its tokens and latency, and its success
        when the verifier scored it (``result.score``); ``POST /v1/feedback`` calls this with
        ``result=None`` and the client's ``reward``, which only updates the success posterior.
        """
        if decision.difficulty_bin is None:
            return
        scope = stats_scope(decision.extra.get("kind"), decision.difficulty_bin)
        arm = decision.arm if decision.arm in self._arm_by_name else None
        if reward is None:
            tokens = None
            if result is not None:
                tokens = float(result.completion_tokens + result.verifier_tokens)
            self.tracker.end(decision.decision_id, tokens, now)
            self._probes.pop(decision.decision_id, None)
            if arm is None or result is None:
                return
            score = result.score
            if not decision.reuse_probe and result.wall_ms > 0:
                b = decision.budget
                n_calls = 1
                if decision.strategy == "self_consistency":
                    n_calls = max(1, -(-result.samples // max(1, b.batch_size)))
                elif decision.strategy == "bounded_reasoning":
                    n_calls = max(1, result.samples)  # its calls, one after another
                if decision.strategy != "beam_search":
                    self.tracker.observe_call(result.wall_ms / n_calls)
                if decision.strategy == "bounded_reasoning" and result.samples > 0:
                    self._observe_bounded_calls(decision.extra.get("kind"), result.samples)
            if decision.reuse_probe:
                # Single pass served by the probe: no extra tokens or time for this arm.
                await self.store.record(scope, arm, reward=score, tokens=0.0, latency_ms=0.0)
                return
            await self.store.record(
                scope,
                arm,
                reward=score,
                tokens=tokens,
                latency_ms=result.wall_ms,
            )
            return
        if arm is not None:
            await self.store.record(scope, arm, reward=reward)

    def _observe_bounded_calls(self, kind: str | None, calls: int) -> None:
        key = kind or "any"
        prev = self._bounded_calls.get(key)
        self._bounded_calls[key] = float(calls) if prev is None else 0.9 * prev + 0.1 * calls

    async def close(self) -> None:
        """Close the store."""
        await self.store.close()
