"""The entropy/confidence probe: one short greedy decode with logprobs, summarised.

The probe is the only part of difficulty estimation that spends model tokens, so its tokens
are counted as compute. It is a *greedy* decode of the same prompt the single-pass strategy
would send, so when the selector picks single pass the probe's completion is the answer and
nothing is generated twice (``policies.adaptive`` turns it into a ``StrategyResult``). When an
exact verifier exists (Game of 24, arithmetic) the probe's answer is checked too: a verified
probe is a solved request; a refuted one is strong evidence of difficulty.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from backends.base import Backend, ChatMessage, Completion, GenerationRequest
from backends.verifiers.base import Verifier

_ANSWER_MARKERS = ("answer:", "= 24", "=24")

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


def summarise(
    completion: Completion, verifier_score: float | None = None
) -> tuple[float | None, float | None, float | None]:
    """(mean entropy, max entropy, mean negative log-prob) of a completion's tokens.

    Missing logprobs (a backend that cannot return them) give Nones; the model then relies on
    the prompt features and the verifier.
    """
    ents = [e for e in (completion.token_entropies or []) if math.isfinite(e)]
    lps = [lp for lp in (completion.token_logprobs or []) if math.isfinite(lp)]
    mean_ent = sum(ents) / len(ents) if ents else None
    max_ent = max(ents) if ents else None
    nll = -sum(lps) / len(lps) if lps else None
    return mean_ent, max_ent, nll


def has_answer(text: str) -> bool:
    """Whether the text states a final answer (the bundled model's ``Answer:`` line or ``=24``)."""
    low = text.lower()
    return any(m in low for m in _ANSWER_MARKERS)


async def run_probe(
    backend: Backend,
    *,
    problem_text: str,
    prompt: str | None,
    messages: list[ChatMessage] | None,
    max_tokens: int,
    stop: list[str] | None = None,
    verifier: Verifier | None = None,
    reference: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ProbeResult:
    """Greedy-decode up to ``max_tokens`` with logprobs and summarise the confidence.

    Returns a ``ProbeResult``; raises what ``backend.generate`` raises (``BackendError``), which
    the caller treats as "no probe". Only exact verifiers are consulted: a learned reward
    model's score is not a verdict.
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
    )
    t0 = clock()
    result = await backend.generate(request)
    wall_ms = (clock() - t0) * 1000
    completion = result.completions[0]
    mean_ent, max_ent, nll = summarise(completion)
    score: float | None = None
    if verifier is not None and verifier.exact:
        try:
            score = float(verifier.score(problem_text, completion.text, reference))
        except Exception:  # noqa: BLE001 - a verifier that cannot judge gives no verdict
            score = None
    return ProbeResult(
        text=completion.text,
        tokens=completion.tokens,
        finish_reason=completion.finish_reason,
        mean_entropy=mean_ent,
        max_entropy=max_ent,
        mean_nll=nll,
        has_answer=has_answer(completion.text),
        verifier_score=score,
        prompt_tokens=result.prompt_tokens,
        wall_ms=wall_ms,
        max_tokens=max_tokens,
    )
