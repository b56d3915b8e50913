"""The latency model: what a request's SLO allows, the backend's load, and how long an arm
would take under that load. Pure: callers pass the measured ``Load``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SLO(BaseModel):
    """The request's objective and constraints (config defaults, per-request overrides)."""

    model_config = ConfigDict(extra="forbid")

    latency_budget_ms: float = Field(gt=0)
    cost_cap_tokens: float = Field(gt=0)
    lambda_per_1k_tokens: float = Field(ge=0)
    headroom: float = Field(
        default=0.8, gt=0, le=1, description="Share of the latency budget predictions may use."
    )


class Load(BaseModel):
    """The backend's state when deciding (measured by ``policies.load.LoadTracker``).

    ``queued_tokens`` is the predicted number of tokens in-flight requests still have to
    generate; ``capacity_tokens_per_s`` the backend's aggregate decode throughput when busy;
    ``elapsed_ms`` the time this request already spent (probe, queueing) against its budget.
    """

    model_config = ConfigDict(extra="forbid")

    inflight: int = Field(default=0, ge=0)
    queued_tokens: float = Field(default=0.0, ge=0)
    capacity_tokens_per_s: float = Field(default=2000.0, gt=0)
    elapsed_ms: float = Field(default=0.0, ge=0)
    overhead_ms: float = Field(default=2.0, ge=0, description="Fixed per-request overhead.")
    utilization: float = Field(
        default=0.0, ge=0, description="Offered tokens/s over capacity (recent window)."
    )
    slowdown: float = Field(
        default=1.0, gt=0, description="Observed over predicted latency, learned live."
    )
    slowdown_by_strategy: dict[str, float] = Field(
        default_factory=dict,
        description="The same ratio per strategy, where one has been observed (a strategy "
        "that makes several sequential calls can run slower than one call's model says).",
    )
    call_ms: float = Field(
        default=0.0, ge=0, description="Recent latency of one backend call (probe, pass)."
    )


def predict_latency_ms(
    cost_tokens: float,
    unloaded_ms: float,
    load: Load,
    calls: float = 1.0,
    strategy: str | None = None,
) -> float:
    """Latency of an arm that generates ``cost_tokens`` under ``load``, in ms.

    Processor sharing: a new job of size c finishes after the backend has generated c tokens
    for it plus up to c tokens for each job ahead, i.e. (min(queued, inflight * c) + c) / rate;
    work that arrives meanwhile shares the backend too, which divides the rate by (1 - rho)
    for utilisation rho (capped at 0.9). Never below the arm's measured unloaded latency. The
    live ``slowdown`` (observed / predicted latency of recent requests) corrects what this
    model misses, e.g. a batching backend's head-of-line waits; ``strategy``'s own ratio is
    used once one was observed (``Load.slowdown_by_strategy``). And an arm that makes ``calls``
    sequential backend calls takes at least ``calls`` times the latency one call has right
    now (``call_ms``, measured on the probe and single calls): a busy batching server makes
    every call wait for a decode cycle, however few tokens it needs.
    """
    if cost_tokens <= 0:
        return 0.0
    shared = min(load.queued_tokens, load.inflight * cost_tokens) + cost_tokens
    free = 1.0 - min(load.utilization, 0.9)
    loaded_ms = 1000.0 * shared / (load.capacity_tokens_per_s * free)
    per_call = calls * load.call_ms
    slowdown = load.slowdown_by_strategy.get(strategy or "", load.slowdown)
    return load.overhead_ms + max(max(unloaded_ms, loaded_ms) * slowdown, per_call)
