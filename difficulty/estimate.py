"""The difficulty verdict on one request: prompt features + probe -> router model -> per-arm
P(success), a difficulty score and its bin.

``Estimator.estimate`` is the step after the probe; the adaptive policy prices arms from its
``DifficultyEstimate`` (cacheable: it holds no prompt text).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backends.verifiers.base import ProcessVerifier
from difficulty.features import as_dict, feature_vector
from difficulty.model import RouterModel
from difficulty.probe import ProbeSummary
from tasks.task import Task


class DifficultyEstimate(BaseModel):
    """The difficulty module's verdict on one request (cacheable: no prompt text)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "open"
    difficulty: float = Field(default=0.5, ge=0, le=1)
    bin: int = Field(default=0, ge=0)
    ood: bool = Field(default=False, description="Task kind unseen in training.")
    probs: dict[str, float] = Field(default_factory=dict, description="arm -> P(success)")
    probe_tokens: int = Field(default=0, ge=0, description="Tokens the probe spent.")
    probe_reusable: bool = Field(default=False, description="Probe is a full greedy answer.")
    probe_finished: bool = Field(
        default=False, description="The probe ended by itself (not at its token cap)."
    )
    exact_verifier: bool = Field(
        default=False, description="An exact checker judges this task (samplers stop early)."
    )
    step_checker: bool = Field(
        default=False, description="An exact checker also judges each reasoning step."
    )
    selectable: bool = Field(
        default=True, description="Answers to vote on or a verifier: candidates can be told apart."
    )
    structured: bool = Field(
        default=False, description="JSON output or tool calls: no partial answer is extended."
    )
    continuations: bool = Field(
        default=True, description="The backend can extend a partial answer in the model's format."
    )
    reasoning: bool = Field(
        default=False, description="The model thinks between tags (a real thinking budget)."
    )
    native_n: bool = Field(
        default=True, description="The backend decodes a call's samples side by side."
    )
    parallel_slots: int = Field(
        default=16, ge=1, description="Fanned-out calls the backend decodes side by side."
    )

    def parallel(self, samples: int) -> int:
        """Of ``samples`` drawn together, how many the backend decodes side by side: all
        with native ``n``, else as many as it has parallel slots."""
        return samples if self.native_n else max(1, min(samples, self.parallel_slots))

    probe_verdict: float | None = Field(
        default=None, description="Exact verifier's score of the probe answer, if any."
    )
    features: dict[str, float] | None = None


class Estimator:
    """Turns a prompt and its probe into a ``DifficultyEstimate`` with ``model``.

    ``probe_tokens`` is the probe length in use: a probe cut at that length is still a
    complete greedy answer when single pass would have been cut at the same length.
    """

    def __init__(self, model: RouterModel, probe_tokens: int) -> None:
        self.model = model
        self.probe_tokens = probe_tokens

    def estimate(
        self,
        text: str,
        probe: ProbeSummary | None,
        *,
        task: Task,
        probe_tokens: int = 0,
        answer_tokens: int | None = None,
    ) -> DifficultyEstimate:
        """Features (+ probe) -> model -> per-arm P(success), difficulty and bin.

        ``answer_tokens`` is single pass's token budget (to judge whether a cut probe is
        already its answer); ``probe_tokens`` what the probe spent.
        """
        kind = task.kind
        row = feature_vector(text, probe, task)
        ood = self.model.is_ood(kind)
        # A prompt type the model never saw gets its own bin and no assumed gain from any arm:
        # every arm at the cheapest one's base rate, so the cheapest is chosen until online
        # outcomes and feedback say otherwise (no extrapolated confidence).
        if ood:
            probs = np.full(len(self.model.arm_names), self.model.base_rates()[0])
        else:
            probs = self.model.predict(row)
        diff = self.model.difficulty(probs)
        return DifficultyEstimate(
            kind=kind,
            difficulty=min(1.0, max(0.0, diff)),
            bin=self.model.ood_bin if ood else self.model.bin_of(diff),
            ood=ood,
            probs={n: float(p) for n, p in zip(self.model.arm_names, probs, strict=True)},
            probe_tokens=probe_tokens,
            probe_reusable=probe is not None and self._reusable(probe, answer_tokens),
            probe_finished=probe is not None and probe.finish_reason == "stop",
            probe_verdict=probe.verifier_score if probe is not None else None,
            exact_verifier=task.exact,
            step_checker=task.exact and isinstance(task.verifier, ProcessVerifier),
            selectable=task.selectable,
            structured=task.structured,
            features=as_dict(row),
        )

    def _reusable(self, probe: ProbeSummary, answer_tokens: int | None) -> bool:
        # A finished greedy decode is the single-pass answer; so is a cut one when the probe
        # had at least single pass's own token budget (single pass would be cut the same).
        if probe.finish_reason == "stop":
            return True
        return answer_tokens is not None and self.probe_tokens >= answer_tokens
