"""Online learning and the adaptive policy: in memory, and against a real redis-server
shared by two router replicas."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time

import numpy as np
import pytest
from redis.asyncio import Redis

from backends.base import Backend, ChatMessage, Completion, GenerationRequest, GenerationResult
from backends.verifiers.base import ProcessVerifier
from difficulty.estimate import DifficultyEstimate
from difficulty.model import RouterModel
from difficulty.probe import ProbeSummary
from difficulty.train import fit_router_model, rows_from_item
from lab.synthetic import synthetic_items
from policies.adaptive import AdaptivePolicy
from policies.base import Problem, StrategyResult
from policies.decision import Decision
from policies.latency import Load
from policies.learning import learner_for
from policies.load import LoadTracker
from policies.registry import default_arms
from policies.request import RequestSpec
from policies.router_model import cost_weight
from policies.settings import PolicySettings, StrategiesSettings
from policies.store import InMemoryPolicyStore, RedisPolicyStore, stats_scope
from router.config import AppConfig
from router.core.execution import probe_as_result
from router.core.served import ServedResult
from router.core.service import RouterService
from tasks.answers import get_format
from tasks.task import OPEN_TASK, Task


class GreedyBackend(Backend):
    """Answers every prompt with one fixed greedy line; counts calls."""

    name = "fake"

    def __init__(self, text: str = "4*6 = 24", entropy: float = 0.1) -> None:
        self.text, self.entropy, self.calls = text, entropy, 0

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.calls += 1
        n_tok = 12
        c = Completion(
            text=self.text,
            tokens=n_tok,
            finish_reason="stop",
            token_logprobs=[-0.1] * n_tok,
            token_entropies=[self.entropy] * n_tok,
        )
        return GenerationResult(completions=[c], prompt_tokens=5)

    async def render_chat(self, messages: list[ChatMessage]) -> str:
        return messages[-1].content


class Is24(ProcessVerifier):
    """An exact checker: the answer ends in "= 24"; every step passes."""

    exact = True

    def score(self, problem: str, candidate: str, reference: str | None = None) -> float:
        return 1.0 if candidate.strip().endswith("= 24") else 0.0

    def score_steps(self, problem: str, steps: list[str]) -> list[float]:
        return [1.0] * len(steps)


def task_of(text: str) -> Task:
    """Puzzles (digits first) are checked exactly, sums have answers on an ``Answer:`` line
    but no checker; anything else is open."""
    if text.strip()[:1].isdigit():
        return Task("game24", Is24(), get_format("answer_line"), "\n")
    if "+" in text:
        return Task("arithmetic", None, get_format("answer_line"), "\n")
    return OPEN_TASK


def P(text: str, **kw: object) -> Problem:  # noqa: N802 - reads like a constructor
    """The problem as the service hands it on: one user message, its task detected."""
    kw.setdefault("messages", [ChatMessage(role="user", content=text)])
    return Problem(text=text, task=task_of(text), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model() -> RouterModel:
    rows = [r for it in synthetic_items(150, seed=11) for r in rows_from_item(it)]
    return fit_router_model(rows, version="m1", probe_tokens=16, holdout=0.0, arms=default_arms())


def settings(**kw: object) -> PolicySettings:
    base: dict[str, object] = {"version": "v9", "exploration_rate": 0.0, "probe_tokens": 16}
    base.update(kw)
    return PolicySettings(**base)  # type: ignore[arg-type]


def policy(
    model: RouterModel, backend: Backend | None, s: PolicySettings | None = None, **kw: object
) -> AdaptivePolicy:
    return AdaptivePolicy(
        s or settings(),
        StrategiesSettings(),
        backend=backend,
        model=model,
        **kw,  # type: ignore[arg-type]
    )


def estimate(pol: AdaptivePolicy, text: str, probe: ProbeSummary) -> DifficultyEstimate:
    task = task_of(text)
    return pol.estimator.estimate(text, probe, task=task, probe_tokens=probe.tokens)


async def solve(pol: AdaptivePolicy, problem: Problem) -> tuple[Decision, StrategyResult, int]:
    """Decide, run and learn through the service: (decision, result, generated tokens with
    the probe's)."""
    assert pol.backend is not None
    service = RouterService(AppConfig(), pol.backend, pol, learner=learner_for(pol))
    served: ServedResult = await service.answer(RequestSpec(problem))
    verifier = sum(r.verifier_tokens for r in served.results)
    return served.decision, served.results[0], served.completion_tokens + verifier


def result(score: float | None, tokens: int = 400, wall_ms: float = 300.0) -> StrategyResult:
    return StrategyResult(
        strategy="self_consistency",
        text="x",
        answer=None,
        candidates=[],
        prompt_tokens=5,
        visible_tokens=50,
        hidden_tokens=tokens - 50,
        verifier_tokens=0,
        wall_ms=wall_ms,
        samples=8,
        stop_reason="budget",
        score=score,
    )


def replica(url: str, model: RouterModel, **kw: object) -> AdaptivePolicy:
    s = settings(**kw)
    # A generous socket timeout: on an oversubscribed CI box a 0.5 s one would trip the
    # fail-open path and split the counts these tests check.
    store = RedisPolicyStore.from_url(
        url,
        key_prefix="acrtest",
        version=AdaptivePolicy.version_for(s, model),
        refresh_s=0.0,
        socket_timeout_s=5.0,
    )
    return policy(model, GreedyBackend(), s, store=store)


# -- in memory -------------------------------------------------------------------------------


async def test_cache_entries_expire_by_the_injected_clock() -> None:
    now = [100.0]
    store = InMemoryPolicyStore("v", clock=lambda: now[0])
    await store.cache_put("h", {"a": 1}, ttl_s=10)
    assert await store.cache_get("h") == {"a": 1}
    now[0] += 10.5
    assert await store.cache_get("h") is None
    await store.cache_put("h", {"a": 1}, ttl_s=0)
    assert await store.cache_get("h") is None


async def test_a_verified_probe_is_served_as_the_single_pass_answer(model: RouterModel) -> None:
    backend = GreedyBackend("4*6 = 24")
    pol = policy(model, backend, settings())
    d = await pol.decide(RequestSpec(P("4 6 1 1")))
    probe = d.probe
    assert probe is not None and probe.verifier_score == 1.0
    assert d.strategy == "single_pass" and d.reuse_probe
    assert d.probe_tokens == 12 and d.predicted_cost_tokens == 12
    assert d.probe is not None
    served = probe_as_result(d.probe, d.strategy, task_of("4 6 1 1"))
    assert served.text == "4*6 = 24" and served.completion_tokens == 12
    assert backend.calls == 1  # the answer was never generated twice


def test_bounded_reasoning_is_offered_only_where_it_does_more_than_a_greedy_answer(
    model: RouterModel,
) -> None:
    from difficulty.probe import ProbeSummary

    pol = policy(model, GreedyBackend(), settings())
    assert "bounded_reasoning" in {a.strategy for a in pol.arms}

    def offered(p: AdaptivePolicy, text: str, finish_reason: str) -> set[str]:
        probe = ProbeSummary(tokens=12, finish_reason=finish_reason, mean_entropy=0.4)
        est = p._on_this_backend(estimate(p, text, probe))
        return {a.strategy for a in p.pricer.arm_stats(est, {})}

    # No exact step checker: one greedy chain, the probe's (or single pass's) token for token.
    assert "bounded_reasoning" not in offered(pol, "What is 12+7*3?", "stop")
    assert "bounded_reasoning" not in offered(pol, "What is 12+7*3?", "length")
    assert "single_pass" in offered(pol, "What is 12+7*3?", "stop")
    # An exact step checker to back up on makes it a different computation...
    assert "bounded_reasoning" in offered(pol, "4 6 1 1", "stop")
    # ... and so does a model that thinks (a real thinking budget; single pass would only
    # cut its thinking short).
    thinker = policy(model, GreedyBackend(), settings(), reasoning=True)
    assert "bounded_reasoning" in offered(thinker, "What is 12+7*3?", "stop")
    assert "single_pass" not in offered(thinker, "What is 12+7*3?", "stop")


async def test_bounded_reasoning_is_priced_by_the_sequential_calls_it_was_seen_to_make(
    model: RouterModel,
) -> None:
    # Backtracking on an exact step checker makes several calls, each of which waits for a
    # decode cycle under load; one call's latency model underpriced it and missed the SLO.
    from difficulty.probe import ProbeSummary

    # A thinking model: bounded reasoning is offered on every task, so both counts show.
    pol = policy(model, GreedyBackend(), settings(), reasoning=True)
    d = await pol.decide(RequestSpec(P("4 6 1 1"), strategy="bounded_reasoning"))
    bounded = dataclasses.replace(
        result(score=1.0, wall_ms=800.0), strategy="bounded_reasoning", samples=4
    )
    for _ in range(5):
        await learner_for(pol).record(d, bounded, None)

    def calls(text: str) -> float:
        probe = ProbeSummary(tokens=12, finish_reason="length", mean_entropy=0.4)
        est = pol._on_this_backend(estimate(pol, text, probe))
        return next(
            a.calls for a in pol.pricer.arm_stats(est, {}) if a.strategy == "bounded_reasoning"
        )

    assert calls("4 6 1 2") == pytest.approx(4.0)
    assert calls("What is 12+7*3?") == 1.0  # another task kind has its own count


def test_the_call_speed_fit_learns_the_overhead_of_a_call_and_the_time_of_a_token() -> None:
    from policies.load import CallSpeed

    speed = CallSpeed(overhead_ms=0.0, ms_per_token=0.5)
    rng = random.Random(3)
    for _ in range(40):
        calls, tokens = rng.choice([1, 2, 4]), rng.randint(10, 200)
        speed.observe(calls, tokens, 40.0 * calls + 3.0 * tokens)
    overhead, per_token = speed.theta
    assert overhead == pytest.approx(40.0, rel=0.05)
    assert per_token == pytest.approx(3.0, rel=0.05)


def test_the_call_speed_fit_stays_sane_when_runs_barely_tell_its_two_terms_apart() -> None:
    from policies.load import CallSpeed

    speed = CallSpeed(overhead_ms=0.0, ms_per_token=0.5)
    rng = random.Random(5)
    for _ in range(20):  # one-call runs of similar length: the split is not identified
        tokens = rng.randint(60, 80)
        speed.observe(1, tokens, 200.0 + 2.0 * tokens + rng.uniform(-30, 30))
    speed.observe(24, 400, 3000.0)  # a beam search whose calls overlapped
    speed.observe(1, 70, 340.0)
    overhead, per_token = speed.theta
    assert 0.0 <= overhead <= 400.0 and per_token > 0.5
    assert 170.0 <= overhead + 70 * per_token <= 680.0  # one call still predicted within 2x


class LongAnswerBackend(Backend):
    """One long greedy answer; a request cut short gets its first ``max_tokens`` characters."""

    name = "fake"
    ANSWER = "12+7*3: 7*3=21, 12+21=33. Answer: 33"

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        prompt = request.prompt or ""
        done = next(
            (k for k in range(len(self.ANSWER), 0, -1) if prompt.endswith(self.ANSWER[:k])), 0
        )
        rest = self.ANSWER[done:]
        text = rest[: request.max_tokens]
        c = Completion(
            text=text,
            tokens=len(text),
            finish_reason="stop" if len(text) == len(rest) else "length",
            token_logprobs=[-0.1] * len(text),
            token_entropies=[0.2] * len(text),
        )
        return GenerationResult(completions=[c], prompt_tokens=5)

    async def render_chat(self, messages: list[ChatMessage]) -> str:
        return "Q:" + messages[-1].content + "\n"


async def test_single_pass_after_a_cut_probe_continues_it_and_counts_each_token_once(
    model: RouterModel,
) -> None:
    backend = LongAnswerBackend()
    # A huge lambda makes the cheapest arm, single pass, the choice.
    pol = policy(model, backend, settings(lambda_per_1k_tokens=50.0))
    text = "What is 12+7*3?"
    problem = P(text, messages=[ChatMessage(role="user", content=text)])
    d, res, total = await solve(pol, problem)
    assert d.strategy == "single_pass" and d.continue_probe and not d.reuse_probe
    probe_req, rest_req = backend.requests
    assert probe_req.max_tokens == 16
    assert rest_req.prompt == "Q:" + text + "\n" + backend.ANSWER[:16]
    assert res.text == backend.ANSWER and res.answer == "33"
    assert total == len(backend.ANSWER)  # 16 probe tokens + the rest, nothing twice


async def test_a_refuted_probe_leads_to_search_on_the_same_item(model: RouterModel) -> None:
    pol = policy(model, GreedyBackend("4+6 = 10", entropy=1.4), settings(lambda_per_1k_tokens=0.01))
    d = await pol.decide(RequestSpec(P("4 6 1 1")))
    assert d.strategy in ("self_consistency", "best_of_n", "beam_search")
    assert not d.reuse_probe
    assert d.probe_tokens == 12


async def test_reasoning_effort_and_a_named_strategy_force_the_choice(model: RouterModel) -> None:
    pol = policy(model, GreedyBackend(), settings())
    high = await pol.decide(RequestSpec(P("4 6 1 1"), effort="high"))
    assert (high.strategy, high.source) == ("best_of_n", "effort")
    named = await pol.decide(RequestSpec(P("4 6 1 1"), strategy="beam_search"))
    assert (named.strategy, named.source) == ("beam_search", "explicit")
    assert pol.backend is not None and pol.backend.calls == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "text",
    [
        "Why is the sky blue?",
        "Write a haiku about routers.",
        "What is the capital of France?",
        "",
        "🚀" * 1000,
        "Explain 2+2 in French, please.",
    ],
)
async def test_out_of_distribution_prompts_are_routed_without_error(
    model: RouterModel, text: str
) -> None:
    pol = policy(model, GreedyBackend("I think so."), settings())
    d = await pol.decide(RequestSpec(P(text)))
    assert d.strategy in {a.strategy for a in model.card.arms}
    assert d.reason
    if not text[:1].isdigit() and "+" not in text:
        assert d.difficulty_bin == model.ood_bin
        assert "unseen in training" in d.reason


async def test_a_deep_queue_makes_the_policy_downgrade(model: RouterModel) -> None:
    pol = policy(
        model,
        None,
        settings(latency_slo_ms=1500, lambda_per_1k_tokens=0.0, capacity_tokens_per_s=2000),
    )
    calm = await pol.decide(RequestSpec(P("11 12 13 13")), load=Load(capacity_tokens_per_s=2000))
    busy = await pol.decide(
        RequestSpec(P("11 12 13 13")),
        load=Load(inflight=40, queued_tokens=20_000, capacity_tokens_per_s=2000),
    )
    assert (calm.predicted_cost_tokens or 0) > (busy.predicted_cost_tokens or 0)
    assert busy.downgraded


def test_the_load_tracker_counts_inflight_work_and_forgets_expired_requests() -> None:
    now = [0.0]
    t = LoadTracker(1000.0, clock=lambda: now[0])
    t.begin("a", 300, deadline_s=10)
    t.begin("b", 500, deadline_s=1)
    snap = t.snapshot()
    assert (snap.inflight, snap.queued_tokens) == (2, 800)
    now[0] = 2.0
    assert t.snapshot().inflight == 1
    assert t.end("b", 500) is None  # expired: it no longer counts, and ends quietly
    assert t.end("a", 300) == pytest.approx(2000)


def test_the_load_tracker_measures_throughput_over_the_time_work_was_in_flight() -> None:
    now = [0.0]
    t = LoadTracker(1000.0, clock=lambda: now[0])
    now[0] = 100.0  # idle time teaches nothing
    t.begin("a", 3000, deadline_s=60)
    t.begin("b", 3000, deadline_s=60)
    now[0] = 106.0
    t.end("a", 3000)  # 3000 tokens over 6 busy seconds: 500 tok/s
    assert t.capacity == pytest.approx(0.7 * 1000 + 0.3 * 500)


async def test_decision_latency_without_the_probe_is_about_a_millisecond(
    model: RouterModel,
) -> None:
    pol = policy(model, None)
    rng = random.Random(0)
    prompts = [" ".join(str(rng.randint(1, 13)) for _ in range(4)) for _ in range(300)]
    times = []
    for p in prompts:
        t0 = time.perf_counter()
        await pol.decide(RequestSpec(P(p), serving=False))
        times.append(time.perf_counter() - t0)
    # The target is p99 <= 1 ms (measured by `lab.router_eval evaluate`); on a shared,
    # oversubscribed CI box only the median is stable enough to assert.
    assert float(np.percentile(times, 50)) < 0.002


# -- real Redis, two replicas ----------------------------------------------------------------


async def test_outcomes_recorded_by_one_replica_steer_the_other(
    redis_url: str, model: RouterModel
) -> None:
    a, b = replica(redis_url, model), replica(redis_url, model)
    try:
        text = "11 12 13 13"
        d = await a.decide(RequestSpec(P(text), probe=False))
        before = next(c for c in d.candidates if c.arm == d.arm).p_success
        for _ in range(60):
            await learner_for(a).record(d, result(score=0.0), None)
        d_b = await b.decide(RequestSpec(P(text + " "), probe=False))  # different cache key
        after = next(c for c in d_b.candidates if c.arm == d.arm).p_success
        assert d_b.difficulty_bin == d.difficulty_bin
        assert after < before - 0.3
        assert d_b.arm != d.arm
    finally:
        await a.close()
        await b.close()


async def test_every_key_carries_the_prefix_and_the_policy_version(
    redis_url: str, model: RouterModel
) -> None:
    a = replica(redis_url, model)
    try:
        d = await a.decide(RequestSpec(P("4 6 1 1")))
        await learner_for(a).record(d, result(score=1.0), None)
        client = Redis.from_url(redis_url)
        keys = [k.decode() for k in await client.keys("*")]
        await client.aclose()
        assert keys
        assert all(k.startswith("acrtest:v9.m1:") for k in keys), keys
        assert any(":arm:" in k for k in keys) and any(":dcache:" in k for k in keys)
    finally:
        await a.close()


async def test_the_decision_cache_is_shared_between_replicas_and_has_a_ttl(
    redis_url: str, model: RouterModel
) -> None:
    a, b = replica(redis_url, model, decision_cache_ttl_s=60), replica(redis_url, model)
    try:
        first = await a.decide(RequestSpec(P("4 6 1 1")))
        probe = first.probe
        assert probe is not None and first.source == "auto"
        second = await b.decide(RequestSpec(P("  4 6 1 1 ")))
        probe2 = second.probe
        assert probe2 is None and second.source == "cache"
        assert second.probe_tokens == 0
        assert b.backend is not None and b.backend.calls == 0  # type: ignore[attr-defined]
        client = Redis.from_url(redis_url)
        keys = await client.keys("acrtest:*:dcache:*")
        ttl = await client.ttl(keys[0])
        await client.aclose()
        assert 0 < ttl <= 300
    finally:
        await a.close()
        await b.close()


async def test_concurrent_updates_from_two_replicas_are_all_counted(
    redis_url: str, model: RouterModel
) -> None:
    a, b = replica(redis_url, model), replica(redis_url, model)
    try:
        d = await a.decide(RequestSpec(P("3 3 8 8"), probe=False))
        await asyncio.gather(
            *[learner_for(a).record(d, result(score=1.0), None) for _ in range(50)],
            *[learner_for(b).record(d, result(score=0.0), None) for _ in range(50)],
            *[learner_for(b).record(d, None, 0.5) for _ in range(20)],
        )
        assert d.difficulty_bin is not None
        scope = stats_scope("fake", d.task, d.difficulty_bin)
        stats = (await a.store.arm_stats(scope, [d.arm]))[d.arm]
        assert stats.succ == pytest.approx(60) and stats.fail == pytest.approx(60)
        assert stats.n == 100 and stats.tokens == pytest.approx(100 * 400)
    finally:
        await a.close()
        await b.close()


async def test_outcomes_of_one_task_kind_leave_another_kinds_stats_in_the_same_bin_alone(
    model: RouterModel,
) -> None:
    # Outcomes arrive only for chosen arms; pooled per-bin stats let an arm's successes on
    # one task (beam search on Game of 24) raise its estimate for another task's prompts.
    pol = policy(model, GreedyBackend(), settings())
    store = pol.store
    d = await pol.decide(RequestSpec(P("3 3 8 8"), probe=False))
    assert d.difficulty_bin is not None and d.task != "arithmetic"
    for _ in range(20):
        await learner_for(pol).record(d, result(score=1.0), None)
    own = await store.arm_stats(stats_scope("fake", d.task, d.difficulty_bin), [d.arm])
    other = await store.arm_stats(stats_scope("fake", "arithmetic", d.difficulty_bin), [d.arm])
    assert own[d.arm].succ == pytest.approx(20)
    assert other[d.arm].succ == 0 and other[d.arm].n == 0


async def test_feedback_moves_only_the_success_posterior(
    redis_url: str, model: RouterModel
) -> None:
    a = replica(redis_url, model)
    try:
        d = await a.decide(RequestSpec(P("Why is the sky blue?"), probe=False))
        await learner_for(a).record(d, None, 0.25)
        assert d.difficulty_bin is not None
        scope = stats_scope("fake", d.task, d.difficulty_bin)
        s = (await a.store.arm_stats(scope, [d.arm]))[d.arm]
        assert (s.succ, s.fail, s.n) == (pytest.approx(0.25), pytest.approx(0.75), 0)
    finally:
        await a.close()


async def test_the_policy_keeps_deciding_when_redis_is_unreachable(model: RouterModel) -> None:
    from router.serving.embedded_redis import free_port

    s = settings()
    store = RedisPolicyStore.from_url(
        f"redis://127.0.0.1:{free_port()}/0",
        key_prefix="acrtest",
        version=AdaptivePolicy.version_for(s, model),
    )
    pol = policy(model, GreedyBackend(), s, store=store)
    d = await pol.decide(RequestSpec(P("4 6 1 1")))
    await learner_for(pol).record(d, result(score=1.0), None)
    d2 = await pol.decide(RequestSpec(P("4 6 1 2")))
    assert d.reason and d2.reason
    assert store.fallback.stats  # outcomes kept locally meanwhile
    await pol.close()


async def test_the_policy_builds_from_the_service_config_with_a_shared_redis(
    redis_url: str, model: RouterModel
) -> None:
    config = AppConfig()
    client = Redis.from_url(redis_url)
    pol = AdaptivePolicy.build(
        config.policy,
        config.strategies,
        None,
        redis_client=client,
        key_prefix=config.redis.key_prefix,
        model=model,
    )
    assert pol.settings.lambda_per_1k_tokens == config.policy.lambda_per_1k_tokens
    assert pol.lambda_per_1k_tokens == cost_weight(config.policy.lambda_per_1k_tokens, pol.model)
    assert (
        pol.strategies.budgets["best_of_n"].samples
        == config.strategies.budgets["best_of_n"].samples
    )
    assert pol.version == f"{config.policy.version}.m1"
    d = await pol.decide(RequestSpec(P("4 6 1 1"), effort="medium"))
    assert d.strategy == config.strategies.effort["medium"]
    await learner_for(pol).record(d, result(score=1.0), None)
    assert await client.keys(f"{config.redis.key_prefix}:{pol.version}:*")
    await pol.close()


async def test_solve_reuses_a_verified_probe_and_counts_the_probe_once(model: RouterModel) -> None:
    backend = GreedyBackend("4*6 = 24")
    pol = policy(model, backend, settings())
    d, res, total = await solve(pol, P("4 6 1 1"))
    assert d.reuse_probe and res.text == "4*6 = 24"
    assert total == 12 and backend.calls == 1
    assert pol.tracker.snapshot().inflight == 0


async def test_solve_runs_the_chosen_search_after_a_refuted_probe(model: RouterModel) -> None:
    backend = GreedyBackend("4+6 = 10", entropy=1.4)
    pol = policy(model, backend, settings(lambda_per_1k_tokens=0.0))
    d, res, total = await solve(pol, P("4 6 1 1"))
    assert not d.reuse_probe and d.strategy != "single_pass"
    assert total == res.completion_tokens + 12
    assert backend.calls >= 2


def test_the_load_tracker_learns_how_much_slower_requests_are_than_predicted() -> None:
    now = [0.0]
    t = LoadTracker(1000.0, clock=lambda: now[0])
    # Predictions include the factor learned so far (as the selector's do).
    for i in range(20):
        t.begin(f"r{i}", 100, deadline_s=60, predicted_ms=100.0 * t.slowdown)
        now[0] += 0.3  # every request takes 3x the model's raw prediction
        t.end(f"r{i}", 100)
    assert 2.5 < t.snapshot().slowdown <= 3.0
    for i in range(200):
        t.begin(f"s{i}", 100, deadline_s=60, predicted_ms=100.0 * t.slowdown)
        now[0] += 0.1
        t.end(f"s{i}", 100)
    assert t.snapshot().slowdown < 1.2  # and it recovers when predictions hold again


def test_a_strategy_slower_than_predicted_is_priced_slower_without_slowing_the_others() -> None:
    from policies.latency import predict_latency_ms

    now = [0.0]
    t = LoadTracker(1000.0, clock=lambda: now[0])

    def predicted(strategy: str) -> float:
        # The selector's prediction: the raw 100 ms times the factor it uses now.
        return 100.0 * t.slowdown_by.get(strategy, t.slowdown)

    for i in range(30):
        # Single passes take what was predicted; bounded reasoning 3x (it backtracked).
        t.begin(f"s{i}", 50, 60, predicted_ms=predicted("single_pass"), strategy="single_pass")
        now[0] += 0.1
        t.end(f"s{i}", 50)
        t.begin(
            f"b{i}",
            50,
            60,
            predicted_ms=predicted("bounded_reasoning"),
            strategy="bounded_reasoning",
        )
        now[0] += 0.3
        t.end(f"b{i}", 50)
    load = t.snapshot()
    assert load.slowdown_by_strategy["bounded_reasoning"] > 2.5
    assert load.slowdown_by_strategy["single_pass"] < 1.5 < load.slowdown
    slow = predict_latency_ms(50, 100.0, load, strategy="bounded_reasoning")
    fast = predict_latency_ms(50, 100.0, load, strategy="single_pass")
    unseen = predict_latency_ms(50, 100.0, load, strategy="beam_search")
    assert slow > 1.8 * fast
    assert unseen == predict_latency_ms(50, 100.0, load)  # the global factor
    # Priced out and no longer chosen, bounded reasoning drifts back as others finish.
    for i in range(300):
        t.begin(f"x{i}", 50, 60, predicted_ms=predicted("single_pass"), strategy="single_pass")
        now[0] += 0.1
        t.end(f"x{i}", 50)
    assert t.snapshot().slowdown_by_strategy["bounded_reasoning"] < 1.3


async def test_a_deadline_too_short_to_deliberate_takes_single_pass_at_once(
    model: RouterModel,
) -> None:
    backend = GreedyBackend()
    pol = policy(model, backend, settings())
    d = await pol.decide(RequestSpec(P("4 6 1 1"), deadline_ms=1))
    assert d.strategy == "single_pass" and "no time" in d.reason
    assert backend.calls == 0
