"""The reward model in its own Ray Serve replicas, and the verifier that calls them.

``RewardModelReplica`` loads ``verifier.reward_model_path`` once per replica (``num_gpus``
when configured) and scores batches of candidates; ``ServeHandleVerifier`` is the strategies'
``Verifier`` over a handle to it, so the ingress never loads torch.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from backends.verifiers.base import ProcessVerifier, VerifierError


@serve.deployment(name="RewardModelReplica", max_ongoing_requests=32)
class RewardModelReplica:
    """A transformers sequence-classification reward model behind Ray Serve."""

    def __init__(self, path: str, device: str = "auto") -> None:
        # torch and transformers are imported in the reward model's process only.
        from backends.verifiers.reward_model import RewardModelVerifier

        self.verifier = RewardModelVerifier.from_pretrained(path, device=device)

    async def score_many(self, problem: str, candidates: list[str]) -> list[float]:
        """P(good) of each candidate."""
        return await self.verifier.score_many(problem, candidates)

    async def score_steps(self, problem: str, steps: list[str]) -> list[float]:
        """P(good) of each prefix of the steps."""
        return await self.verifier.score_steps_async(problem, steps)

    async def tokens(self, problem: str, candidate: str) -> int:
        """Tokens the model reads to score ``candidate``."""
        return self.verifier.verifier_tokens(problem, candidate)


class ServeHandleVerifier(ProcessVerifier):
    """The reward model replicas as a (learned, not exact) verifier."""

    name = "reward_model"
    exact = False

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    def score(self, problem: str, candidate: str, reference: str | None = None) -> float:
        """Not available synchronously: strategies call ``score_many``."""
        raise VerifierError("the reward model replicas score through score_many")

    def score_steps(self, problem: str, steps: list[str]) -> list[float]:
        """Not available synchronously: step search calls ``score_steps_async``."""
        raise VerifierError("the reward model replicas score through score_steps_async")

    async def score_many(
        self, problem: str, candidates: list[str], reference: str | None = None
    ) -> list[float]:
        """One call to a replica for all candidates."""
        return list(await self._call("score_many", problem, candidates))

    async def score_steps_async(self, problem: str, steps: list[str]) -> list[float]:
        """One call to a replica for every prefix of ``steps``."""
        return list(await self._call("score_steps", problem, steps))

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.handle, method).remote(*args)
        except Exception as exc:  # noqa: BLE001 - Ray raises many types for a dead replica
            raise VerifierError(f"the reward model replica failed ({type(exc).__name__})") from exc
