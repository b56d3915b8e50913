"""Strategies by name: the one place that maps a name to a class, and the defaults built
from them (config budgets, the ``reasoning_effort`` map, the router's arms)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from difficulty.model import ArmSpec
from policies.base import Strategy, StrategyError
from policies.beam_search import BeamSearch
from policies.best_of_n import BestOfN
from policies.bounded_reasoning import BoundedReasoning
from policies.budget import Budget, BudgetError, merged_budget
from policies.self_consistency import SelfConsistency
from policies.single_pass import SinglePass

STRATEGIES: dict[str, type[Strategy]] = {
    SinglePass.name: SinglePass,
    BoundedReasoning.name: BoundedReasoning,
    BestOfN.name: BestOfN,
    SelfConsistency.name: SelfConsistency,
    BeamSearch.name: BeamSearch,
}
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)

#: what a request gets when its strategy's backend calls keep failing
FALLBACK_STRATEGY = SinglePass.name
#: what ``reasoning_effort`` runs on a model that thinks between tags (a thinking budget)
THINKING_STRATEGY = BoundedReasoning.name


def strategy_class(name: str) -> type[Strategy]:
    """The class registered as ``name``; unknown names fail with the valid list."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise StrategyError(
            f"unknown strategy {name!r}; valid: {', '.join(STRATEGY_NAMES)}"
        ) from None


def get_strategy(name: str, **kwargs: Any) -> Strategy:
    """A fresh strategy ``name`` built with ``kwargs``; unknown names fail with the list."""
    return strategy_class(name)(**kwargs)


def default_budgets() -> dict[str, Budget]:
    """Each strategy's default budget (the config's ``strategies.budgets``)."""
    return {
        SinglePass.name: Budget(temperature=0.0),
        BoundedReasoning.name: Budget(temperature=0.0),
        BestOfN.name: Budget(samples=16, batch_size=16),
        SelfConsistency.name: Budget(samples=16, batch_size=4),
        BeamSearch.name: Budget(beam_width=3, expansions=8, max_steps=8),
    }


def default_effort() -> dict[str, str]:
    """What ``reasoning_effort`` forces (the config's ``strategies.effort``)."""
    return {"low": SinglePass.name, "medium": BoundedReasoning.name, "high": BestOfN.name}


def default_arms() -> list[ArmSpec]:
    """The arms the bundled router chooses among (cheap to expensive): a strategy with the
    budget fields that make it differ from the configured default."""

    def sampled(cls: type[Strategy], n: int, batch: int) -> ArmSpec:
        budget = {"samples": float(n), "batch_size": float(batch)}
        return ArmSpec(name=cls.arm_name(Budget(samples=n)), strategy=cls.name, budget=budget)

    return [
        ArmSpec(name=SinglePass.name, strategy=SinglePass.name),
        ArmSpec(name=BoundedReasoning.name, strategy=BoundedReasoning.name),
        sampled(SelfConsistency, 4, 4),
        sampled(SelfConsistency, 8, 4),
        sampled(SelfConsistency, 16, 4),  # the configured self-consistency budget
        sampled(SelfConsistency, 32, 8),
        sampled(BestOfN, 16, 16),
        ArmSpec(name=BeamSearch.name, strategy=BeamSearch.name),
    ]


#: the arms ``acr bench`` runs when none are named (``strategy[:field=value,...]``)
BENCH_ARMS: tuple[str, ...] = (
    SinglePass.name,
    BoundedReasoning.name,
    f"{BestOfN.name}:samples=4",
    f"{BestOfN.name}:samples=16",
    f"{SelfConsistency.name}:samples=16,batch_size=4",
    f"{BeamSearch.name}:beam_width=3,expansions=8",
)


def budget_for(
    name: str, defaults: Mapping[str, Budget], *overrides: Mapping[str, Any] | None
) -> Budget:
    """The ``Budget`` strategy ``name`` runs with: its configured default, then each of
    ``overrides`` (an arm's fields, a request's ``acr.budget``) in order.

    Unknown strategy names and unknown or out-of-range budget fields raise
    ``StrategyError`` naming what is valid, which the API turns into a 400.
    """
    strategy_class(name)
    try:
        return merged_budget(defaults.get(name), *(dict(o) if o else None for o in overrides))
    except BudgetError as exc:
        raise StrategyError(f"invalid budget for {name}: {exc}") from None
