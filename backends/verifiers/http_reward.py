"""A served reward model as a verifier, over vLLM's ``/classify`` API.

The request ``{"model": name, "input": ["<problem>\\n<response>", ...]}`` scores a whole batch
of candidates in one call; each ``data[i].probs`` is the label distribution of one input, and
the last label's probability is the score (as for a local ``RewardModelVerifier``). Any
sequence-classification reward model served by vLLM (``--task classify``) answers it.
"""

from __future__ import annotations

import math
from typing import Any

import httpx

from backends.verifiers.base import Verifier, VerifierError


class HTTPRewardVerifier(Verifier):
    """Scores candidates with a reward model served at ``url`` (its ``/classify`` endpoint)."""

    name = "reward_model"
    exact = False

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.AsyncClient(timeout=timeout_s, headers=headers)

    def score(self, problem: str, candidate: str, reference: str | None = None) -> float:
        """Not available synchronously: strategies call ``score_many``."""
        raise VerifierError("a served reward model scores through score_many")

    async def score_many(
        self, problem: str, candidates: list[str], reference: str | None = None
    ) -> list[float]:
        """One request for every candidate; raises ``VerifierError`` (without the server's
        address) when the reward model cannot answer."""
        if not candidates:
            return []
        body = {"model": self.model, "input": [f"{problem}\n{c}" for c in candidates]}
        try:
            resp = await self.client.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise VerifierError(f"the reward model is unreachable ({type(exc).__name__})") from exc
        if resp.status_code != 200:
            raise VerifierError(f"the reward model answered {resp.status_code}")
        return _scores(resp.json(), len(candidates))

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()


def _scores(data: Any, expected: int) -> list[float]:
    """The last label's probability of each input, in input order."""
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list) or len(rows) != expected:
        raise VerifierError("the reward model's answer has the wrong shape")
    out: list[float] = [0.0] * expected
    for i, row in enumerate(rows):
        index = row.get("index", i) if isinstance(row, dict) else i
        probs = row.get("probs") if isinstance(row, dict) else None
        if not isinstance(probs, list) or not probs or not 0 <= int(index) < expected:
            raise VerifierError("the reward model's answer has the wrong shape")
        value = float(probs[-1])
        if not math.isfinite(value):
            raise VerifierError("the reward model returned a non-finite score")
        out[int(index)] = min(1.0, max(0.0, value))
    return out
