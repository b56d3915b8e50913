"""``RequestSpec``: what a client asked, validated, in the one shape the core, the policy and
the strategies share from validation to result.

The HTTP edge (or an offline command) builds it from its own request model; the core's
validator checks it against the server's limits and matches its task; the policy decides on
it; the service runs the decision for it and records the outcome under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from policies.base import Problem


@dataclass(frozen=True)
class RequestSpec:
    """One request: its ``problem`` (messages or prompt, seed, stop strings, task) and what
    the client asked beyond it.

    ``model`` is the model it names (None: whichever this server serves); ``profile`` the
    task profile it is read under (None: the one its text matches).
    ``n`` choices; ``max_tokens`` and ``temperature`` are the client's own caps, applied to
    the chosen budget. ``effort`` (low/medium/high) or ``strategy`` force a strategy and
    ``budget`` holds the fields of ``acr.budget`` it set. ``latency_budget_ms`` is the
    request's latency target and ``deadline_ms`` its time limit (resolved by validation).
    ``tenant`` is the caller's key id (limits, cache scope, feedback). ``probe`` False decides
    without calling the model (``/v1/route``); ``serving`` False does not count the request
    as load (nothing will run). ``start`` is when it arrived (monotonic seconds; the
    deadline counts from there).
    """

    problem: Problem
    model: str | None = None
    profile: str | None = None
    n: int = 1
    max_tokens: int | None = None
    temperature: float | None = None
    effort: str | None = None
    strategy: str | None = None
    budget: dict[str, Any] | None = None
    latency_budget_ms: float | None = None
    deadline_ms: float | None = None
    tenant: str = ""
    probe: bool = True
    serving: bool = True
    start: float | None = None
    #: the id the answer is given (None: a fresh ``chatcmpl-`` one); the Responses API
    #: names its response before it is decided
    response_id: str | None = None
    #: why a pool chose the model that serves it (None: one model, no choice)
    model_reason: str | None = None

    @property
    def plain(self) -> bool:
        """One greedy choice of free text without the client's logprobs: a request the
        difficulty probe's completion (sent with the same stop strings, token cap and
        forwarded fields) can answer or begin."""
        return (
            self.n == 1
            and (self.temperature or 0.0) <= 0
            and self.problem.top_logprobs is None
            and not self.problem.task.structured
        )

    @property
    def deadline(self) -> float:
        """The monotonic time the request must be answered by (``start`` + ``deadline_ms``)."""
        if self.start is None or self.deadline_ms is None:
            raise ValueError("the request has no start or deadline yet (validate it first)")
        return self.start + self.deadline_ms / 1000
