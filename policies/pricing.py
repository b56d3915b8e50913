"""Pricing arms for one request: the router model's P(success) and the training priors of
(task kind, difficulty bin, arm), corrected by the shared online statistics, with the
expected tokens, latency and sequential calls of each arm.

``ArmPricer.arm_stats`` is what the pure selector reads; the strategies' own declarations
(``policies.base.Strategy``) say how each is priced.
"""

from __future__ import annotations

from typing import Any

from difficulty.estimate import DifficultyEstimate
from difficulty.model import ArmSpec, RouterModel
from policies.budget import Budget
from policies.registry import budget_for, strategy_class
from policies.selector import ArmStats, beta_prior
from policies.settings import PolicySettings, StrategiesSettings
from policies.store import OnlineStat

#: pseudo-observations the no-gain prior of an unseen task is worth
OOD_PRIOR_STRENGTH = 4.0


class ArmPricer:
    """Prices ``arms`` with ``model``'s predictions and priors and the online stats.

    It also keeps, per (strategy, task kind), the sequential backend calls a strategy whose
    calls vary per item was seen to make (an EWMA), which its latency is priced by.
    """

    def __init__(
        self,
        model: RouterModel,
        arms: list[ArmSpec],
        strategies: StrategiesSettings,
        policy: PolicySettings,
    ) -> None:
        self.model = model
        self.arms = arms
        self.strategies = strategies
        self.policy = policy
        self.observed_calls: dict[tuple[str, str], float] = {}
        self._budgets: dict[tuple[str, str], Budget] = {}

    def budget_of(
        self, strategy: str, arm: ArmSpec | None, override: dict[str, Any] | None
    ) -> Budget:
        """The configured budget of ``strategy`` with the arm's fields, then the request's,
        applied (batches never larger than the samples)."""
        if override:
            return self._budget_of(strategy, arm, override)
        key = (strategy, arm.name if arm is not None else "")
        hit = self._budgets.get(key)
        if hit is None:
            hit = self._budgets[key] = self._budget_of(strategy, arm, None)
        return hit.model_copy()

    def _budget_of(
        self, strategy: str, arm: ArmSpec | None, override: dict[str, Any] | None
    ) -> Budget:
        base = self.strategies.budget(strategy)
        arm_fields = None
        if arm is not None:
            # Arm budgets are stored as floats in the model card; cast to the fields' types.
            defaults = base.model_dump()
            arm_fields = {
                k: type(defaults[k])(v) if k in defaults else v for k, v in arm.budget.items()
            }
        budget = budget_for(strategy, self.strategies.budgets, arm_fields, override)
        return budget.model_copy(update={"batch_size": min(budget.batch_size, budget.samples)})

    def observe_calls(self, strategy: str, kind: str | None, calls: int) -> None:
        """A run of ``strategy`` on a ``kind`` prompt made ``calls`` sequential calls."""
        key = (strategy, kind or "any")
        prev = self.observed_calls.get(key)
        self.observed_calls[key] = float(calls) if prev is None else 0.9 * prev + 0.1 * calls

    def arm_stats(
        self,
        est: DifficultyEstimate,
        online: dict[str, OnlineStat],
        override: dict[str, Any] | None = None,
    ) -> list[ArmStats]:
        """Every arm worth offering for ``est``, priced (see the module docstring)."""
        k = self.policy.prior_strength
        per_sample = self._sample_tokens(est)
        out = []
        for arm in self.arms:
            cls = strategy_class(arm.strategy)
            budget = self.budget_of(arm.strategy, arm, override)
            if not cls.offered(budget, est):
                continue
            prior = self.model.bin_stat(arm.name, est.bin, est.kind)
            prior_p = prior.successes / prior.trials if prior.trials else est.probs[arm.name]
            if est.ood:
                # An unseen task: no arm is assumed better, and few outcomes move that.
                prior_p, k = est.probs[arm.name], OOD_PRIOR_STRENGTH
            a0, b0 = beta_prior(prior_p, k)
            on = online.get(arm.name, OnlineStat())
            tok0 = prior.tokens_mean or budget.max_tokens * budget.samples
            w0 = k if prior.trials else 1.0
            # Online outcomes correct the training prior multiplicatively (drift in length),
            # applied to this item's own expected cost.
            tok_factor = (tok0 * w0 + on.tokens) / (w0 + on.n) / tok0 if tok0 else 1.0
            # Latency: what this arm was seen to take here (the training prior, else nothing:
            # the backend's learned call speed then prices it).
            lat0 = prior.latency_ms_mean
            lat_seen = (lat0 * w0 + on.latency_ms) / (w0 + on.n) if (lat0 or on.n) else 0.0
            if not lat0 and on.n:
                lat_seen = on.latency_ms / on.n
            tok_item = tok0
            calls = cls.calls(budget)
            parallel = cls.parallel_samples(budget) if est.native_n else 1
            if cls.calls_vary():
                calls = self.observed_calls.get((cls.name, est.kind), calls)
            drawn = cls.expected_samples(budget, est.probs[arm.name], est.exact_verifier)
            if per_sample and drawn is not None:
                # An early-stopping sampler costs a batch on an easy item and the whole
                # budget on a hard one; latency keeps the worst case (an SLO is the tail).
                tok_item = per_sample * drawn
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
                    latency_ms_mean=lat_seen * (tok_item / tok0 if tok0 else 1.0),
                    calls=calls,
                    serial_tokens=tok_item * tok_factor / parallel,
                    reuses_probe=cls.reuses_probe(budget, est),
                    continues_probe=cls.continues_probe(budget, est),
                )
            )
        return out

    def _sample_tokens(self, est: DifficultyEstimate) -> float | None:
        """Tokens of one sample: the bin mean of the arm that always draws the most samples,
        over its samples (best-of-16 for the bundled router)."""
        best: tuple[int, ArmSpec] | None = None
        for arm in self.arms:
            n = strategy_class(arm.strategy).fixed_samples(self.budget_of(arm.strategy, arm, None))
            if n is not None and n > 1 and (best is None or n > best[0]):
                best = (n, arm)
        if best is None:
            return None
        stat = self.model.bin_stat(best[1].name, est.bin, est.kind)
        if stat.trials and stat.tokens_mean:
            return stat.tokens_mean / best[0]
        return None
