"""Learned reward models (ORM/PRM) from a local transformers checkpoint, as a verifier.

The checkpoint is any ``AutoModelForSequenceClassification``: one logit (sigmoid) or
several labels (softmax, the last label is "good"). Outcome score: the problem and the full
response; step scores: the problem and each prefix of the steps, so a PRM's per-step value
is the score of the trace up to that step.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from backends.verifiers.base import ProcessVerifier


class RewardModelVerifier(ProcessVerifier):
    """Scores with a sequence-classification head; counts the tokens it reads."""

    name = "reward_model"
    exact = False

    def __init__(self, model: Any, tokenizer: Any, max_length: int = 1024) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> RewardModelVerifier:
        """Load from a local directory (no hub access)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        p = Path(path)
        if not p.is_dir():
            raise ValueError(f"reward model path {str(p)!r} is not a directory")
        tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(p, local_files_only=True)
        return cls(model.to(device), tok)

    def _texts(self, problem: str, responses: list[str]) -> list[str]:
        return [f"{problem}\n{r}" for r in responses]

    def _scores(self, texts: list[str]) -> list[float]:
        import torch

        enc = self.tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
        )
        with torch.inference_mode():
            logits = self.model(**{k: v.to(self.model.device) for k, v in enc.items()}).logits
        logits = logits.float()
        if logits.shape[-1] == 1:
            probs = torch.sigmoid(logits[:, 0])
        else:
            probs = torch.softmax(logits, dim=-1)[:, -1]
        return [float(p) for p in probs]

    def score(self, problem: str, candidate: str, reference: str | None = None) -> float:
        """P(good) of the whole response."""
        return self._scores(self._texts(problem, [candidate]))[0]

    async def score_many(
        self, problem: str, candidates: list[str], reference: str | None = None
    ) -> list[float]:
        """P(good) of every candidate, in one forward pass off the event loop."""
        if not candidates:
            return []
        return await asyncio.to_thread(self._scores, self._texts(problem, candidates))

    async def score_steps_async(self, problem: str, steps: list[str]) -> list[float]:
        """``score_steps`` off the event loop."""
        return await asyncio.to_thread(self.score_steps, problem, steps)

    def score_steps(self, problem: str, steps: list[str]) -> list[float]:
        """P(good) of each prefix of ``steps`` (one batched forward pass)."""
        if not steps:
            return []
        prefixes = ["\n".join(steps[: i + 1]) for i in range(len(steps))]
        return self._scores(self._texts(problem, prefixes))

    def verifier_tokens(self, problem: str, candidate: str) -> int:
        """Tokens the model reads to score ``candidate``."""
        return len(self.tokenizer(self._texts(problem, [candidate])[0])["input_ids"])
