"""Bounding a decision's budget: the one rule by which budgets shrink.

A budget shrinks for two reasons, both inside selection: a strategy the client forced must
fit its own time limit (``shrink_budget``), and ``n`` runs of any decision must fit the
server's ``max_request_tokens`` (``within_request_tokens``). Both walk the strategy's own
``shrink`` ladder with ``shrink_until``. A client's own choice that cannot fit the token
bound is the client's error (``StrategyError`` naming ``n``); the router's own choice is cut
to fit and the decision says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from backends.base import ThinkTags
from policies.base import Strategy, StrategyError
from policies.budget import Budget
from policies.latency import SLO, Load, predict_latency_ms
from policies.registry import FALLBACK_STRATEGY, strategy_class


def shrink_until(
    strategy: type[Strategy], budget: Budget, fits: Callable[[Budget], bool]
) -> tuple[Budget, bool]:
    """(``budget``, True) when it ``fits``, else the first smaller budget on the strategy's
    ``shrink`` ladder that does; (the smallest on the ladder, False) when none fits."""
    b = budget
    while not fits(b):
        smaller = strategy.shrink(b)
        if smaller is None:
            return b, False
        b = smaller
    return b, True


def _scale(b: Budget) -> int:
    return max(b.samples, 1) * max(b.beam_width, 1) * max(b.expansions, 1)


def shrink_budget(
    strategy: type[Strategy],
    budget: Budget,
    tokens_mean: float,
    unloaded_ms: float,
    slo: SLO,
    load: Load,
    parallel: Callable[[int], int] | None = None,
) -> tuple[Budget, float, float, bool]:
    """A forced strategy's budget shrunk until its predicted latency fits the SLO.

    Returns (budget, predicted cost tokens, predicted latency ms, shrunk?). The strategy
    stays, its size goes down; cost and unloaded latency scale with the samples x beam x
    expansions it keeps; ``parallel`` says how many of a call's samples the backend decodes
    side by side (default: all). When even the smallest does not fit, the smallest is
    returned.
    """
    remaining = (slo.latency_budget_ms - load.elapsed_ms) * slo.headroom

    def predicted(b: Budget) -> tuple[float, float]:
        factor = _scale(b) / _scale(budget)
        cost = tokens_mean * factor
        side_by_side = strategy.parallel_samples(b)
        serial = cost / (parallel(side_by_side) if parallel is not None else side_by_side)
        lat = predict_latency_ms(
            cost, unloaded_ms * factor, load, strategy.calls(b), strategy.name, serial
        )
        return cost, lat

    b, _ = shrink_until(strategy, budget, lambda b: predicted(b)[1] <= remaining)
    cost, lat = predicted(b)
    return b, cost, lat, b is not budget


def request_token_ceiling(
    strategy: str, budget: Budget, n: int, think: ThinkTags | None, probe_tokens: int
) -> int:
    """The most tokens a request may generate: ``n`` runs of ``strategy`` with ``budget``
    at their caps, plus the probe it already spent. Rate limits reserve this much."""
    per_run = strategy_class(strategy).max_generated_tokens(budget, think)
    return n * per_run + probe_tokens


@dataclass(frozen=True)
class Bounded:
    """A budget within the request's token bound: its strategy and arm, and what was cut
    (``cut``: None when nothing was)."""

    strategy: str
    arm: str
    budget: Budget
    cut: str | None = None


def within_request_tokens(
    strategy: str,
    arm: str,
    budget: Budget,
    *,
    n: int,
    think: ThinkTags | None,
    probe_tokens: int,
    max_request_tokens: int | None,
    client_chose: bool,
) -> Bounded:
    """The decision's budget when ``n`` runs of it fit ``max_request_tokens`` (None: no
    bound); else, for the router's own choice, the budget shrunk to fit or single pass.

    Raises ``StrategyError`` (field ``n``) when the client chose the strategy and it does
    not fit.
    """

    def ceiling(name: str, b: Budget) -> int:
        return request_token_ceiling(name, b, n, think, probe_tokens)

    if max_request_tokens is None or ceiling(strategy, budget) <= max_request_tokens:
        return Bounded(strategy, arm, budget)
    if client_chose:
        raise StrategyError(
            f"n={n} runs of {arm} may generate {ceiling(strategy, budget)} tokens; this "
            f"server allows {max_request_tokens} per request (lower n or the budget)",
            field="n",
        )
    cls = strategy_class(strategy)
    smaller, fits = shrink_until(cls, budget, lambda b: ceiling(strategy, b) <= max_request_tokens)
    why = "the request's n times its tokens exceed the server's limit"
    if fits:
        name = cls.arm_name(smaller)
        return Bounded(strategy, name, smaller, f"{arm} cut to {name}: {why}")
    small = budget.model_copy(update={"samples": 1, "beam_width": 1, "expansions": 1})
    single = strategy_class(FALLBACK_STRATEGY)
    return Bounded(
        FALLBACK_STRATEGY, single.arm_name(small), small, f"{arm} replaced by single pass: {why}"
    )
