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
    slowdown: float = Field(
        default=1.0, gt=0, description="Observed over predicted latency, learned live."
    )
    slowdown_by_strategy: dict[str, float] = Field(
        default_factory=dict,
        description="The same ratio per strategy, where one has been observed (a strategy "
        "that makes several sequential calls can run slower than one call's model says).",
    )
    call_overhead_ms: float = Field(
        default=0.0, ge=0, description="Latency of one backend call beyond its tokens."
    )
    ms_per_token: float = Field(
        default=0.5, gt=0, description="Latency of one token generated after another."
    )


def predict_latency_ms(
    cost_tokens: float,
    unloaded_ms: float,
    load: Load,
    calls: float = 1.0,
    strategy: str | None = None,
    serial_tokens: float | None = None,
) -> float:
    """Latency of an arm that generates ``cost_tokens`` under ``load``, in ms.

    Unloaded, it takes what it was seen to take (``unloaded_ms``, 0 when never seen), but at
    least what the backend's learned call speed says: ``calls`` x the per-call overhead plus
    ``serial_tokens`` (the tokens generated one after another; all of them unless batched)
    x the time per token. The work already queued ahead (up to ``cost_tokens`` per request in
    flight: processor sharing) adds its time at the backend's busy throughput. The learned
    ratio of observed to predicted latency (``strategy``'s own once observed) corrects what
    the model misses, e.g. a batching server's waits.
    """
    if cost_tokens <= 0:
        return 0.0
    serial = cost_tokens if serial_tokens is None else serial_tokens
    speed_ms = calls * load.call_overhead_ms + serial * load.ms_per_token
    ahead = min(load.queued_tokens, load.inflight * cost_tokens)
    queue_ms = 1000.0 * ahead / load.capacity_tokens_per_s
    slowdown = load.slowdown_by_strategy.get(strategy or "", load.slowdown)
    return load.overhead_ms + (max(unloaded_ms, speed_ms) + queue_ms) * slowdown
