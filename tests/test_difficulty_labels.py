"""Labelling: the probe and sample pool per prompt, and pool-derived arm outcomes."""

from __future__ import annotations

import random

from backends.base import Backend, ChatMessage, Completion, GenerationRequest, GenerationResult
from backends.verifiers.base import Verifier
from difficulty.labels import LabelItem, label_items, pool_arms
from difficulty.model import ArmSpec
from difficulty.train import rows_from_item


def sc(n: int, b: int) -> ArmSpec:
    return ArmSpec(
        name=f"self_consistency@{n}",
        strategy="self_consistency",
        budget={"samples": n, "batch_size": b},
    )


def test_self_consistency_pays_for_whole_batches_until_the_first_verified_sample() -> None:
    pool = [(False, 10)] * 5 + [(True, 10)] + [(False, 10)] * 26
    out = pool_arms(pool, [sc(4, 4), sc(8, 4), sc(16, 8)], {4: 100.0, 8: 150.0})
    assert out["self_consistency@4"] == {
        "correct": False,
        "tokens": 40,
        "latency_ms": 100.0,
        "samples": 4,
    }
    # First success is sample 6: two batches of 4 were drawn.
    assert out["self_consistency@8"]["correct"] and out["self_consistency@8"]["tokens"] == 80
    assert out["self_consistency@16"]["tokens"] == 80  # one batch of 8
    assert out["self_consistency@16"]["latency_ms"] == 150.0


def test_best_of_n_always_pays_for_all_n_samples() -> None:
    pool = [(True, 10)] + [(False, 12)] * 15
    arm = ArmSpec(
        name="best_of_n@16", strategy="best_of_n", budget={"samples": 16, "batch_size": 16}
    )
    out = pool_arms(pool, [arm], {16: 300.0})
    assert out["best_of_n@16"] == {
        "correct": True,
        "tokens": 190,
        "latency_ms": 300.0,
        "samples": 16,
    }


class CoinBackend(Backend):
    """Greedy says '24' for even first numbers; samples say '24' with probability 0.3."""

    name = "coin"

    def __init__(self) -> None:
        self.rng = random.Random(0)
        self.calls = 0

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.calls += 1
        text = request.messages[-1].content if request.messages else request.prompt or ""
        outs = []
        for _ in range(request.n):
            if request.temperature == 0:
                ok = int(text.split()[0]) % 2 == 0
            else:
                ok = self.rng.random() < 0.3
            outs.append(
                Completion(
                    text="Answer: 24" if ok else "Answer: 23",
                    tokens=10,
                    finish_reason="stop",
                    token_logprobs=[-0.2] * 10 if request.logprobs else None,
                    token_entropies=[0.3] * 10 if request.logprobs else None,
                )
            )
        return GenerationResult(completions=outs, prompt_tokens=4)

    async def render_chat(self, messages: list[ChatMessage]) -> str:
        return messages[-1].content


class Says24(Verifier):
    exact = True

    def score(self, problem: str, candidate: str, reference: str | None = None) -> float:
        return 1.0 if candidate.endswith("24") else 0.0


async def test_labelled_items_carry_the_probe_and_every_pool_arm_and_train() -> None:
    items = [LabelItem(text=f"{n} 3 8 8", kind="game24") for n in range(1, 9)]
    arms = [ArmSpec(name="single_pass", strategy="single_pass"), sc(4, 4), sc(16, 8)]
    recs = await label_items(
        CoinBackend(), items, lambda _t: Says24(), samples=16, chunk=4, arms=arms, probe_tokens=32
    )
    assert len(recs) == 8
    for rec in recs:
        assert abs(rec["probe"]["mean_entropy"] - 0.3) < 1e-9
        assert set(rec["arms"]) == {"single_pass", "self_consistency@4", "self_consistency@16"}
        even = int(rec["text"].split()[0]) % 2 == 0
        assert rec["arms"]["single_pass"]["correct"] == even
        assert rec["probe"]["verifier_score"] == (1.0 if even else 0.0)
        assert len(rows_from_item(rec)) == 2  # with and without the probe
