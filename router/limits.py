"""Server-wide bounds on what one request may make the router spend.

A request may name a strategy and override its budget (``acr.budget``) and ask for ``n``
answers; the server's ``limits`` bound all of it: tokens per sample, samples, search width
(beam width times expansions) and the total a request may generate (``n`` times the most
one run of its strategy may generate, the probe included). Client choices past a bound are
refused with a 400 naming the field and the bound; the router's own choices are cut to fit
and the response says so.
"""

from __future__ import annotations

from typing import Any

from backends.base import ThinkTags
from policies.budget import Budget
from policies.decision import Decision
from policies.registry import FALLBACK_STRATEGY, strategy_class
from router.config import LimitsConfig
from router.errors import bad_request


def check_budget_override(budget: dict[str, Any] | None, limits: LimitsConfig) -> None:
    """Refuse ``acr.budget`` fields past the server's bounds (a 400 naming the field)."""
    if not budget:
        return
    bounds = {"max_tokens": limits.max_tokens, "samples": limits.max_samples}
    for field, bound in bounds.items():
        value = budget.get(field)
        if value is not None and value > bound:
            raise bad_request(
                f"acr.budget.{field} must be at most {bound} on this server, got {value}",
                f"acr.budget.{field}",
            )
    width = (budget.get("beam_width") or 1) * (budget.get("expansions") or 1)
    if width > limits.max_search_width:
        raise bad_request(
            f"acr.budget.beam_width x expansions must be at most {limits.max_search_width} "
            f"on this server, got {width}",
            "acr.budget.beam_width",
        )


def request_token_ceiling(decision: Decision, n: int, think: ThinkTags | None = None) -> int:
    """The most tokens a request may generate with ``decision``: ``n`` runs of its strategy
    at their caps, plus the probe it already spent. Rate limits reserve this much."""
    per_run = strategy_class(decision.strategy).max_generated_tokens(decision.budget, think)
    return n * per_run + decision.probe_tokens


def within_ceiling(
    decision: Decision, n: int, think: ThinkTags | None, limits: LimitsConfig
) -> Decision:
    """``decision`` if ``n`` runs of it fit ``limits.max_request_tokens``.

    A strategy the client chose that does not fit is a 400; the router's own choice is
    shrunk (``downgraded``, with the reason) and, if it cannot shrink enough, replaced by
    single pass.
    """
    bound = limits.max_request_tokens
    if request_token_ceiling(decision, n, think) <= bound:
        return decision
    if decision.source in ("explicit", "effort"):
        raise bad_request(
            f"n={n} runs of {decision.arm} may generate "
            f"{request_token_ceiling(decision, n, think)} tokens; this server allows "
            f"{bound} per request (lower n or the budget)",
            "n",
        )
    cls = strategy_class(decision.strategy)
    budget: Budget | None = decision.budget
    while budget is not None:
        trial = decision.model_copy(update={"budget": budget, "arm": cls.arm_name(budget)})
        if request_token_ceiling(trial, n, think) <= bound:
            return _cut(trial, f"{decision.arm} cut to {trial.arm}")
        budget = cls.shrink(budget)
    single = strategy_class(FALLBACK_STRATEGY)
    small = decision.budget.model_copy(update={"samples": 1, "beam_width": 1, "expansions": 1})
    fallback = decision.model_copy(
        update={"strategy": FALLBACK_STRATEGY, "arm": single.arm_name(small), "budget": small}
    )
    return _cut(fallback, f"{decision.arm} replaced by single pass")


def _cut(decision: Decision, what: str) -> Decision:
    decision.downgraded = True
    decision.reason += f"; {what}: the request's n times its tokens exceed the server's limit"
    return decision
