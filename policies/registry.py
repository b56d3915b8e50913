"""Strategies by name: the one place that maps a name to a class."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

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


def budget_from_config(
    name: str, defaults: Mapping[str, Any] | BaseModel | None, overrides: Mapping[str, Any]
) -> Budget:
    """The ``Budget`` strategy ``name`` runs with: configured defaults, then a request's
    ``overrides`` (e.g. the API's ``acr.budget``).

    ``defaults`` is a config section (``router.config.StrategyBudgetConfig``) or a mapping;
    unknown strategy names and unknown or out-of-range budget fields raise ``StrategyError``
    naming what is valid, which the API turns into a 400.
    """
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    base = defaults.model_dump() if isinstance(defaults, BaseModel) else dict(defaults or {})
    fields = set(Budget.model_fields)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise StrategyError(
            f"unknown budget field {unknown[0]!r}; valid: {', '.join(Budget.model_fields)}"
        )
    data = {k: v for k, v in base.items() if k in fields}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Budget(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise StrategyError(f"invalid budget for {name}: {field}: {err['msg']}") from None
