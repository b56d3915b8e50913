"""The entropy/confidence probe: one short greedy decode with logprobs, summarised.

The probe is the only part of difficulty estimation that spends model tokens, so its tokens
are counted as compute. It is a *greedy* decode of the same prompt the single-pass strategy
would send, so when the selector picks single pass the probe's completion is the answer and
nothing is generated twice (``policies.adaptive`` turns it into a ``StrategyResult``). When an
exact verifier exists (Game of 24) the probe's answer is checked too: a verified
probe is a solved request; a refuted one is strong evidence of difficulty.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backends.base import Backend, ChatMessage, Completion, GenerationRequest
from tasks.task import Task

#: probe length of a router model that was not trained with one (and of the uninformed model)
DEFAULT_PROBE_TOKENS = 64


class ProbeSummary(BaseModel):
    """What the router model reads from a probe (also what the decision cache stores)."""

    model_config = ConfigDict(extra="ignore")

    tokens: int = Field(ge=0, description="Generated tokens (counted as spent compute).")
    finish_reason: str = "stop"
    mean_entropy: float | None = Field(default=None, description="Mean token entropy, nats.")
    max_entropy: float | None = None
    mean_nll: float | None = Field(default=None, description="Mean negative log-prob, nats.")
    worst_window_nll: float | None = Field(
        default=None, description="Worst mean negative log-prob over a window of tokens."
    )
    mean_margin: float | None = Field(
        default=None, description="Mean top-1 minus top-2 log-prob, nats."
    )
    low_margin_share: float | None = Field(
        default=None, description="Share of tokens that were near ties."
    )
    has_answer: bool = False
    verifier_score: float | None = Field(
        default=None, description="Exact verifier's score of the probe answer; None if none."
    )


class ProbeResult(ProbeSummary):
    """A probe with its text, reusable as the single-pass answer when it finished."""

    text: str = ""
    prompt_tokens: int = 0
    wall_ms: float = 0.0
    max_tokens: int = 0

    @property
    def reusable(self) -> bool:
        """True when the greedy decode ended by itself, so it is a complete single-pass answer."""
        return self.finish_reason == "stop"

    def summary(self) -> ProbeSummary:
        """The part the model and the cache need (no text)."""
        return ProbeSummary(**self.model_dump(include=set(ProbeSummary.model_fields)))


#: tokens of the window whose mean negative log-prob is the probe's worst stretch
WINDOW_TOKENS = 8
#: a margin (top-1 minus top-2 log-prob) under this is a near tie between two tokens
LOW_MARGIN_NATS = 0.5


class Confidence(BaseModel):
    """The confidence signals of a completion's tokens (None where logprobs were missing)."""

    mean_entropy: float | None = None
    max_entropy: float | None = None
    mean_nll: float | None = None
    worst_window_nll: float | None = None
    mean_margin: float | None = None
    low_margin_share: float | None = None


def summarise(completion: Completion) -> Confidence:
    """Entropy, negative log-prob (mean and over its worst ``WINDOW_TOKENS`` stretch) and
    top-2 margins of a completion's tokens.

    Missing logprobs (a backend that cannot return them) give Nones; the model then relies on
    the prompt features and the verifier.
    """
    ents = [e for e in (completion.token_entropies or []) if math.isfinite(e)]
    nlls = [-lp for lp in (completion.token_logprobs or []) if math.isfinite(lp)]
    margins = [m for m in (completion.token_margins or []) if math.isfinite(m)]
    return Confidence(
        mean_entropy=sum(ents) / len(ents) if ents else None,
        max_entropy=max(ents) if ents else None,
        mean_nll=sum(nlls) / len(nlls) if nlls else None,
        worst_window_nll=_worst_window(nlls),
        mean_margin=sum(margins) / len(margins) if margins else None,
        low_margin_share=(
            sum(m < LOW_MARGIN_NATS for m in margins) / len(margins) if margins else None
        ),
    )


def _worst_window(nlls: list[float]) -> float | None:
    """The highest mean over any ``WINDOW_TOKENS`` consecutive values (all, when fewer)."""
    if not nlls:
        return None
    w = min(WINDOW_TOKENS, len(nlls))
    window = sum(nlls[:w])
    worst = window
    for i in range(w, len(nlls)):
        window += nlls[i] - nlls[i - w]
        worst = max(worst, window)
    return worst / w


async def run_probe(
    backend: Backend,
    *,
    problem_text: str,
    prompt: str | None,
    messages: list[ChatMessage] | None,
    max_tokens: int,
    task: Task,
    stop: list[str] | None = None,
    reference: str | None = None,
    params: dict[str, Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ProbeResult:
    """Greedy-decode up to ``max_tokens`` with logprobs and summarise the confidence.

    The request is the single-pass answer's own (the client's stop strings and forwarded
    ``params`` such as penalties), so that its text can be returned or continued. Returns a
    ``ProbeResult``; raises what ``backend.generate`` raises (``BackendError``), which the
    caller treats as "no probe". ``task`` reads the probe's answer; only an exact verifier
    is consulted: a learned reward model's score is not a verdict.
    """
    if messages is None and prompt is None:
        prompt = problem_text
    request = GenerationRequest(
        prompt=prompt if messages is None else None,
        messages=messages,
        n=1,
        max_tokens=max_tokens,
        temperature=0.0,
        stop=list(stop or []),
        logprobs=True,
        params=dict(params or {}),
    )
    t0 = clock()
    result = await backend.generate(request)
    wall_ms = (clock() - t0) * 1000
    completion = result.completions[0]
    score: float | None = None
    if task.exact and task.verifier is not None:
        try:
            score = float(task.verifier.score(problem_text, completion.text, reference))
        except Exception:  # noqa: BLE001 - a verifier that cannot judge gives no verdict
            score = None
    return ProbeResult(
        text=completion.text,
        tokens=completion.tokens,
        finish_reason=completion.finish_reason,
        **summarise(completion).model_dump(),
        has_answer=task.answer_of(completion.text) is not None,
        verifier_score=score,
        prompt_tokens=result.prompt_tokens,
        wall_ms=wall_ms,
        max_tokens=max_tokens,
    )
