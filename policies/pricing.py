"""Pricing arms for one request: the router model's P(success) and the training priors of
(task kind, difficulty bin, arm), corrected by the shared online statistics, with the
expected tokens, latency and sequential calls of each arm.

``ArmPricer.arm_stats`` is what the pure selector reads; the strategies' own declarations
(``policies.base.Strategy``) say how each is priced.
"""

from __future__ import annotations

from typing import Any

from difficulty.estimate import DifficultyEstimate
from difficulty.model import ArmSpec, BinStat, RouterModel
from policies.base import Strategy
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
        per_sample = self._sample_tokens(est)
        out: list[ArmStats] = []
        for arm in self.arms:
            cls = strategy_class(arm.strategy)
            budget = self.budget_of(arm.strategy, arm, override)
            if cls.offered(budget, est):
                out.append(self._price(arm, cls, budget, est, online, per_sample))
        return out

    def _price(
        self,
        arm: ArmSpec,
        cls: type[Strategy],
        budget: Budget,
        est: DifficultyEstimate,
        online: dict[str, OnlineStat],
        per_sample: float | None,
    ) -> ArmStats:
        """``arm`` (run as ``cls`` with ``budget``) priced for ``est``: its training prior
        for the bin corrected by the online outcomes, for ``arm_stats``."""
        prior = self.model.bin_stat(arm.name, est.bin, est.kind)
        # An unseen task, or a backend no router model was fit for (no training trials):
        # no arm is assumed better, and few outcomes move that.
        k = OOD_PRIOR_STRENGTH if est.ood or not prior.trials else self.policy.prior_strength
        a0, b0 = beta_prior(_prior_rate(prior, est.probs[arm.name], est.ood), k)
        on = online.get(arm.name, OnlineStat())
        tok0 = prior.tokens_mean or budget.max_tokens * budget.samples
        w0 = k if prior.trials else 1.0
        tok_factor = _token_drift(tok0, w0, on)
        lat_seen = _seen_latency(prior.latency_ms_mean, w0, on)
        calls = self._calls(cls, budget, est.kind)
        parallel = est.parallel(cls.parallel_samples(budget))
        drawn = cls.expected_samples(budget, est.probs[arm.name], est.exact_verifier)
        tok_item = _item_tokens(tok0, per_sample, drawn)
        return ArmStats.model_construct(
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

    def _calls(self, cls: type[Strategy], budget: Budget, kind: str) -> float:
        """Sequential backend calls ``cls`` is priced at: its declared count, or for a
        strategy whose calls vary per item what it was seen to make on ``kind``."""
        calls = cls.calls(budget)
        if cls.calls_vary():
            calls = self.observed_calls.get((cls.name, kind), calls)
        return calls

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


def _prior_rate(prior: BinStat, p_item: float, ood: bool) -> float:
    """The success rate the arm's Beta prior is centred on: the bin's training rate, or the
    router model's ``p_item`` where training saw no trial or the task is unseen (``ood``)."""
    if ood:
        return p_item
    return prior.successes / prior.trials if prior.trials else p_item


def _token_drift(tok0: float, w0: float, on: OnlineStat) -> float:
    """Factor by which the online outcomes move the training mean ``tok0`` (worth ``w0``
    observations); the item's own expected tokens are multiplied by it."""
    # A factor, not a mean: drift in length applies to this item's own expected cost.
    return (tok0 * w0 + on.tokens) / (w0 + on.n) / tok0 if tok0 else 1.0


def _seen_latency(lat0: float, w0: float, on: OnlineStat) -> float:
    """Unloaded latency this arm was seen to take here, ms: the training mean ``lat0``
    (worth ``w0`` observations) pooled with the online outcomes, the online mean alone
    without a training mean, 0 with neither (the backend's learned call speed then prices
    it)."""
    lat_seen = (lat0 * w0 + on.latency_ms) / (w0 + on.n) if (lat0 or on.n) else 0.0
    if not lat0 and on.n:
        lat_seen = on.latency_ms / on.n
    return lat_seen


def _item_tokens(tok0: float, per_sample: float | None, drawn: float | None) -> float:
    """Expected tokens of this item before drift: ``tok0``, or for a sampler that stops early
    (``drawn`` expected samples of ``per_sample`` tokens each) what it is expected to draw."""
    if per_sample and drawn is not None:
        # An early-stopping sampler costs a batch on an easy item and the whole budget on a
        # hard one; latency keeps the worst case (an SLO is the tail).
        return per_sample * drawn
    return tok0
