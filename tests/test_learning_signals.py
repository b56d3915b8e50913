"""What the shared estimates learn from, and what no tenant can do to them: verifier scores,
agreement as a weighted proxy, feedback once per response from its own key and capped per
tenant, outcomes learned during a Redis outage, and decision-cache keys."""

from __future__ import annotations

from redis.asyncio import Redis

from backends.base import ChatMessage
from difficulty.model import RouterModel
from policies.adaptive import AdaptivePolicy
from policies.base import Candidate, Problem, StrategyResult
from policies.budget import Budget
from policies.decision import Decision
from policies.decision_cache import cache_key
from policies.learning import Signal, agreement, learner_for, outcome_signal
from policies.pricing import OOD_PRIOR_STRENGTH
from policies.registry import default_arms
from policies.request import RequestSpec
from policies.settings import PolicySettings, StrategiesSettings
from policies.store import OnlineStat, RedisPolicyStore, stats_scope
from tasks.answers import get_format
from tasks.game24_checker import Game24Verifier
from tasks.task import OPEN_TASK, Task
from tests.test_online_policy import GreedyBackend, policy, settings

MATH = Task("math", None, get_format("math"))
ARMS = default_arms()


def run_with(
    answers: list[str | None], chosen: str | None, score: float | None = None
) -> StrategyResult:
    cands = [Candidate(text=f"x {a}", tokens=5, answer=a) for a in answers]
    return StrategyResult(
        strategy="self_consistency",
        text=f"x {chosen}",
        answer=chosen,
        candidates=cands,
        prompt_tokens=3,
        visible_tokens=5,
        hidden_tokens=5 * (len(cands) - 1),
        verifier_tokens=0,
        wall_ms=10.0,
        samples=len(cands),
        stop_reason="budget",
        score=score,
    )


def test_agreement_is_the_share_of_samples_that_state_the_chosen_answer() -> None:
    run = run_with(["12", "12.0", "13", None], "12")
    assert agreement(run, MATH) == 0.5
    assert agreement(run_with(["1", "2"], "1"), MATH) is None  # too few samples
    assert agreement(run, OPEN_TASK) is None  # nothing to compare


def test_a_verifier_score_beats_agreement_and_agreement_counts_as_a_weighted_proxy() -> None:
    run = run_with(["4", "4", "4"], "4")
    assert outcome_signal(run, MATH, 0.5) == Signal(1.0, "agreement", 0.5)
    assert outcome_signal(run, MATH, 0.0) is None
    checked = Task("game24", object(), get_format("answer_line"))  # type: ignore[arg-type]
    assert outcome_signal(run_with(["4"] * 3, "4", score=0.0), checked, 0.5) == Signal(
        0.0, "verifier"
    )


def test_a_single_pass_answer_is_graded_by_the_tasks_exact_checker_when_recorded() -> None:
    task = Task("game24", Game24Verifier(), get_format("answer_line"))
    problem = Problem(text="4 9 10 13", task=task)

    def single(text: str) -> StrategyResult:
        return StrategyResult(
            strategy="single_pass",
            text=text,
            answer=None,
            candidates=[Candidate(text=text, tokens=5)],
            prompt_tokens=3,
            visible_tokens=5,
            hidden_tokens=0,
            verifier_tokens=0,
            wall_ms=10.0,
            samples=1,
            stop_reason="answered",
        )

    right, wrong = single("Answer: (13-9)*(10-4)"), single("Answer: 4*9-10-13")
    assert right.score is None  # single pass scores nothing itself
    assert outcome_signal(right, task, 0.5, problem) == Signal(1.0, "verifier")
    assert outcome_signal(wrong, task, 0.5, problem) == Signal(0.0, "verifier")
    assert outcome_signal(right, task, 0.5) is None  # without the problem: nothing to check
    assert outcome_signal(single("Answer: 12"), MATH, 0.5, problem) is None  # no checker


def test_a_backend_no_router_model_was_fit_for_learns_from_a_few_outcomes() -> None:
    # An uninformed model's 0.5 has no training trials behind it: worth a few observations,
    # not policy.prior_strength (20), so a pool stops choosing a model that keeps failing.
    pol = policy(RouterModel.uninformed(ARMS), GreedyBackend(), settings(prior_strength=20.0))
    est = pol.estimate(Problem(text="What is 52+69-70*3?"))
    before = {a.name: a for a in pol.pricer.arm_stats(est, {})}["single_pass"]
    failed = {"single_pass": OnlineStat(fail=8.0, n=8.0)}
    after = {a.name: a for a in pol.pricer.arm_stats(est, failed)}["single_pass"]
    assert before.alpha + before.beta == OOD_PRIOR_STRENGTH
    assert after.alpha / (after.alpha + after.beta) <= 0.2


def decision(arm: str = "self_consistency@8") -> Decision:
    strategy = next(a.strategy for a in ARMS if a.name == arm)
    return Decision(
        strategy=strategy, arm=arm, budget=Budget(), reason="t", difficulty_bin=1, task="math"
    )


def redis_policy(url: str, cap: float = 20.0) -> AdaptivePolicy:
    settings = PolicySettings(feedback_cap_per_tenant=cap, exploration_rate=0.0)
    model = RouterModel.uninformed(ARMS)
    store = RedisPolicyStore.from_url(
        url,
        key_prefix="t",
        version=AdaptivePolicy.version_for(settings, model),
        refresh_s=0.0,
        socket_timeout_s=5.0,
    )
    return AdaptivePolicy(settings, StrategiesSettings(), backend=None, store=store, model=model)


async def shared_fails(policy: AdaptivePolicy, arm: str = "self_consistency@8") -> float:
    scope = stats_scope(policy.backend_model, "math", 1)
    return (await policy.store.arm_stats(scope, [arm]))[arm].fail


async def test_feedback_is_taken_once_per_response_and_only_from_the_key_that_made_it(
    redis_url: str,
) -> None:
    policy = redis_policy(redis_url)
    try:
        await learner_for(policy).remember("resp-1", decision(), tenant="alice")
        assert await learner_for(policy).feedback("resp-1", 0.0, "mallory") == ("unknown", 0.0)
        assert await learner_for(policy).feedback("resp-404", 0.0, "alice") == ("unknown", 0.0)
        assert await learner_for(policy).feedback("resp-1", 0.0, "alice") == ("applied", 1.0)
        assert await learner_for(policy).feedback("resp-1", 0.0, "alice") == ("duplicate", 0.0)
        assert await shared_fails(policy) == 1.0
    finally:
        await policy.close()


async def test_one_tenant_replaying_feedback_1000_times_moves_the_shared_estimate_at_most_its_cap(
    redis_url: str,
) -> None:
    cap = 5.0
    policy = redis_policy(redis_url, cap=cap)
    other = redis_policy(redis_url, cap=cap)  # a second replica: the cap is shared
    try:
        verdicts = []
        for i in range(1000):
            await learner_for(policy).remember(f"r{i}", decision(), tenant="mallory")
            replica = policy if i % 2 else other
            verdicts.append((await learner_for(replica).feedback(f"r{i}", 0.0, "mallory"))[0])
            verdicts.append(
                (await learner_for(replica).feedback(f"r{i}", 0.0, "mallory"))[0]
            )  # a replay
        assert await shared_fails(policy) == cap
        assert verdicts.count("applied") == cap and verdicts.count("duplicate") == 1000
        await learner_for(policy).remember("a1", decision(), tenant="alice")
        assert await learner_for(policy).feedback("a1", 0.0, "alice") == (
            "applied",
            1.0,
        )  # others still count
    finally:
        await policy.close()
        await other.close()


async def test_outcomes_learned_while_redis_was_down_reach_redis_once_it_is_back(
    redis_url: str,
) -> None:
    now = [0.0]
    dead = Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.2)
    store = RedisPolicyStore(dead, key_prefix="t", version="v", retry_s=5.0, clock=lambda: now[0])
    scope = stats_scope("m", "math", 0)
    await store.record(scope, "single_pass", reward=1.0, tokens=10.0, latency_ms=5.0)
    await store.record(scope, "single_pass", reward=0.0)
    assert store.pending and (await store.arm_stats(scope, ["single_pass"]))["single_pass"].n == 1
    store.client = Redis.from_url(redis_url)
    now[0] += 6.0
    await store.record(scope, "single_pass", reward=1.0)
    raw = await store.client.hgetall(store.arm_key(scope, "single_pass"))
    assert float(raw[b"succ"]) == 2.0 and float(raw[b"fail"]) == 1.0 and float(raw[b"n"]) == 1.0
    assert not store.pending
    await store.close()
    await dead.aclose()


def chat(*messages: tuple[str, str], stop: list[str] | None = None) -> Problem:
    msgs = [ChatMessage(role=r, content=c) for r, c in messages]
    return Problem(text=msgs[-1].content, messages=msgs, stop=stop or [], task=MATH)


def test_the_decision_cache_key_covers_system_prompts_stop_strings_and_the_tenant() -> None:
    base = chat(("user", "What is 2+2?"))
    assert cache_key(base, "") == cache_key(chat(("user", "  What is  2+2? ")), "")
    others = [
        cache_key(chat(("system", "Answer in French."), ("user", "What is 2+2?")), ""),
        cache_key(chat(("user", "What is 2+2?"), stop=["4"]), ""),
        cache_key(base, "tenant-b"),
    ]
    assert len({cache_key(base, ""), *others}) == 4


async def test_route_requests_and_requests_with_stop_strings_never_fill_the_cache(
    redis_url: str,
) -> None:
    model = RouterModel.uninformed(ARMS)
    # A model that reads the probe (else no probe runs and there is nothing to cache).
    model.weights[:, model.card.feature_names.index("probe_mean_entropy")] = 1e-3
    assert model.reads_probe
    pol = policy(model, GreedyBackend(), settings(decision_cache_ttl_s=60))
    routed = await pol.decide(RequestSpec(chat(("user", "What is 3+3?")), serving=False))
    again = await pol.decide(RequestSpec(chat(("user", "What is 3+3?"))))
    assert routed.source == "auto" and again.source == "auto"  # /v1/route kept nothing
    stopped = chat(("user", "What is 5+5?"), stop=["\n"])
    await pol.decide(RequestSpec(stopped))
    assert (await pol.decide(RequestSpec(stopped))).source == "auto"
    third = await pol.decide(RequestSpec(chat(("user", "What is 3+3?"))))
    assert third.source == "cache"  # a served request's own probe is kept
