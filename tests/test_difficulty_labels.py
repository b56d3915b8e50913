"""Labelling: the probe and sample pool per prompt, and pool-derived arm outcomes."""

from __future__ import annotations

import random

from backends.base import Backend, ChatMessage, Completion, GenerationRequest, GenerationResult
from backends.verifiers.base import Verifier
from difficulty.model import ArmSpec
from difficulty.train import rows_from_item
from lab.labels import (
    LabelItem,
    Sample,
    _leader_ahead,
    _vote,
    label_items,
    pool_arms,
    simulate_self_consistency,
)


def sc(n: int, b: int) -> ArmSpec:
    return ArmSpec(
        name=f"self_consistency@{n}",
        strategy="self_consistency",
        budget={"samples": n, "batch_size": b},
    )


def s(ok: bool, tok: int = 10, ans: str | None = None, lp: float = -1.0) -> Sample:
    return Sample(ok=ok, tokens=tok, answer=ans, verified=ok, logprob=lp)


def test_self_consistency_pays_for_whole_batches_until_the_first_verified_sample() -> None:
    # Distinct wrong answers never settle the vote, so only the verified sample stops it.
    pool = [s(False, ans=str(i)) for i in range(5)] + [s(True, ans="24")]
    pool += [s(False, ans=str(i)) for i in range(10, 36)]
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
    pool = [s(True)] + [s(False, 12) for _ in range(15)]
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


def test_without_a_checker_self_consistency_stops_when_the_vote_is_settled() -> None:
    pool = [Sample(ok=True, tokens=10, answer="7", verified=None, logprob=-1.0)] * 8
    pool += [Sample(ok=False, tokens=10, answer="9", verified=None, logprob=-0.5)] * 8
    chosen, used = simulate_self_consistency(pool, 16, 4)
    # 4 votes to 0 gives P(leader ahead) = 31/32 >= 0.95 after the first batch.
    assert used == 4 and chosen is not None and chosen.ok
    out = pool_arms(pool, [sc(16, 4)], {4: 10.0}, exact=False)
    assert out["self_consistency@16"]["tokens"] == 40


def test_the_vote_helpers_match_the_strategies_own() -> None:
    from policies.common import prob_leader_ahead, vote

    answers = ["1", "2", "2", None, "3", "2", "1"]
    assert _vote(answers) == vote(answers)
    for v1, v2 in [(0, 0), (3, 1), (7, 6), (12, 0)]:
        assert _leader_ahead(v1, v2) == prob_leader_ahead(v1, v2)
