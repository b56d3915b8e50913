"""The one decision contract: what the router decided for a request, and why.

``Decision`` answers a ``policies.request.RequestSpec``; it is frozen once the policy has
selected it (``AdaptivePolicy.decide``), and the HTTP edge renders it into the response's
``router`` object and ``x-acr-*`` headers. The difficulty probe's result travels with the
decision (``probe``), so whoever runs the decision can reuse or continue it.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from difficulty.probe import ProbeResult
from policies.budget import Budget

Source = Literal["auto", "effort", "explicit", "cache", "fallback"]


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

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    decision_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:16])
    #: the backend model that serves it ("" until the service that decided names it)
    model: str = ""
    #: why a pool chose that model (None: the request named it, or one model serves all)
    model_reason: str | None = None
    strategy: str
    arm: str
    budget: Budget
    reason: str
    source: Source = "auto"
    predicted_success: float | None = None
    predicted_latency_ms: float | None = None
    predicted_cost_tokens: float | None = None
    policy_version: str = ""
    #: the live config it was decided under (``router.live_config.revision``)
    config_revision: str = ""
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
