"""Strategies by name: the one place that maps a name to a class."""

from __future__ import annotations

from typing import Any

from policies.base import Budget, Strategy, StrategyError
from policies.beam_search import BeamSearch
from policies.best_of_n import BestOfN
from policies.bounded_reasoning import BoundedReasoning
from policies.self_consistency import SelfConsistency
from policies.single_pass import SinglePass

STRATEGIES: dict[str, type[Strategy]] = {
    "single_pass": SinglePass,
    "bounded_reasoning": BoundedReasoning,
    "best_of_n": BestOfN,
    "self_consistency": SelfConsistency,
    "beam_search": BeamSearch,
}


def get_strategy(name: str, **kwargs: Any) -> Strategy:
    """A fresh strategy ``name``; unknown names fail with the valid list."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise StrategyError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}") from None
    return cls(**kwargs)


def budget_with(base: Budget, **overrides: Any) -> Budget:
    """``base`` with the non-None ``overrides`` applied (validated)."""
    data = base.model_dump()
    data.update({k: v for k, v in overrides.items() if v is not None})
    return Budget(**data)
