"""The one decision contract: what the router decided for a request, and why.

``DecisionRequest`` is what a request asks of the policy; ``Decision`` is the answer, rendered
into the response's ``router`` object (``public``) and ``x-acr-*`` headers (``headers``). The
difficulty probe's result travels with the decision (``probe``), so whoever runs the decision
can reuse or continue it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from difficulty.probe import ProbeResult
from policies.budget import Budget
from policies.latency import Load

Source = Literal["auto", "effort", "explicit", "cache", "fallback"]


@dataclass(frozen=True)
class DecisionRequest:
    """What a request asks of the policy.

    ``effort`` (low/medium/high) or ``strategy`` force a strategy; ``budget`` holds the
    request's budget fields (non-None values of ``acr.budget``); ``max_tokens`` and
    ``temperature`` are the client's own caps, applied to the chosen budget.
    ``latency_budget_ms`` is the request's latency SLO and ``deadline_ms`` its time budget.
    ``probe`` False decides without calling the model (``/v1/route``); ``serving`` False
    does not count the request as load (nothing will run). ``tenant`` scopes the decision
    cache (the API key's id where keys are in use). ``load`` and ``now`` replace the live
    measurements (simulations, tests).
    """

    effort: str | None = None
    strategy: str | None = None
    budget: dict[str, Any] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    latency_budget_ms: float | None = None
    deadline_ms: float | None = None
    probe: bool = True
    serving: bool = True
    tenant: str = ""
    load: Load | None = None
    now: float | None = None


class ArmScore(BaseModel):
    """One arm as scored for the explanation of a decision."""

    arm: str
    p_success: float
    cost_tokens: float
    latency_ms: float
    utility: float
    feasible: bool


class Decision(BaseModel):
    """What the router decided for one request, and why.

    ``reuse_probe`` says that the probe's greedy completion *is* the answer (do not generate
    it again); ``continue_probe`` that single pass continues the probe, which its token limit
    cut short. ``probe`` is that probe (not part of any rendering). ``task`` is the task
    profile the prompt matched and ``features`` the router model's input (logged for
    retraining).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    decision_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:16])
    strategy: str
    arm: str
    budget: Budget
    reason: str
    source: Source = "auto"
    predicted_success: float | None = None
    predicted_latency_ms: float | None = None
    predicted_cost_tokens: float | None = None
    policy_version: str = ""
    difficulty_bin: int | None = None
    difficulty: float | None = None
    explored: bool = False
    probe_tokens: int = 0
    reuse_probe: bool = False
    continue_probe: bool = False
    downgraded: bool = False
    candidates: list[ArmScore] = Field(default_factory=list)
    task: str | None = None
    features: dict[str, float] | None = None
    probe: ProbeResult | None = Field(default=None, exclude=True)

    def public(self) -> dict[str, Any]:
        """The JSON ``router`` object of responses and of ``/v1/route``."""
        return {
            "strategy": self.strategy,
            "arm": self.arm,
            "budget": self.budget.model_dump(),
            "reason": self.reason,
            "source": self.source,
            "predicted_success": _round(self.predicted_success),
            # predicted for the run after the probe; the probe's own time is probe_ms
            "predicted_latency_ms": _round(self.predicted_latency_ms, 1),
            "probe_ms": _round(self.probe.wall_ms, 1) if self.probe is not None else None,
            "predicted_cost_tokens": _round(self.predicted_cost_tokens, 1),
            "policy_version": self.policy_version,
            "difficulty_bin": self.difficulty_bin,
            "difficulty": _round(self.difficulty),
            "explored": self.explored,
            "downgraded": self.downgraded,
            "probe_tokens": self.probe_tokens,
            "reuse_probe": self.reuse_probe,
            "continue_probe": self.continue_probe,
            "candidates": [c.model_dump() for c in self.candidates],
        }

    def headers(self) -> dict[str, str]:
        """``x-acr-*`` response headers (ASCII only, short)."""
        h = {
            "x-acr-strategy": self.strategy,
            "x-acr-arm": self.arm,
            "x-acr-budget-tokens": str(self.budget.max_tokens),
            "x-acr-budget-samples": str(self.budget.samples),
            "x-acr-reason": self.reason.encode("ascii", "replace").decode()[:200],
            "x-acr-source": self.source,
            "x-acr-policy-version": self.policy_version,
            "x-acr-explored": "1" if self.explored else "0",
            "x-acr-probe-tokens": str(self.probe_tokens),
        }
        if self.difficulty_bin is not None:
            h["x-acr-difficulty-bin"] = str(self.difficulty_bin)
        if self.predicted_success is not None:
            h["x-acr-predicted-success"] = f"{self.predicted_success:.3f}"
        if self.predicted_latency_ms is not None:
            h["x-acr-predicted-latency-ms"] = f"{self.predicted_latency_ms:.0f}"
        if self.predicted_cost_tokens is not None:
            h["x-acr-predicted-cost-tokens"] = f"{self.predicted_cost_tokens:.0f}"
        return h


def _round(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(float(v), nd)
