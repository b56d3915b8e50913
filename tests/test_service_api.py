"""The HTTP API in-process over a scripted backend and a real redis-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis

from backends.base import ChatMessage, GenerationRequest
from policies.base import Problem
from policies.request import RequestSpec
from router.config import AppConfig, load_config
from router.serving.runtime import Runtime, build_runtime
from tests.fakes import FakeBackend

SOLUTION = (
    "13-9=4 (left: 4 4 10)\n10-4=6 (left: 4 6)\n4*6=24 (left: 24)\nAnswer: (13-9)*(10-4) = 24"
)
CHAT = {"messages": [{"role": "user", "content": "4 9 10 13"}]}


def solution(prompt: str, i: int, req: GenerationRequest) -> str:
    return SOLUTION if i % 2 == 0 else "Answer: 1+1 = 24"


def make(config: AppConfig | None = None, backend: FakeBackend | None = None) -> Runtime:
    cfg = config or load_config(env={})
    return build_runtime(cfg, backend=backend or FakeBackend(solution))


@pytest.fixture
async def api() -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    rt = make()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=rt.http_app), base_url="http://t"
    ) as c:
        yield c, rt


async def test_a_chat_answer_reports_usage_that_matches_the_tokens_generated(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, rt = api
    r = await client.post("/v1/chat/completions", json={**CHAT, "reasoning_effort": "high"})
    assert r.status_code == 200, r.text
    body = r.json()
    be = rt.backend
    assert isinstance(be, FakeBackend)
    assert body["usage"]["completion_tokens"] == be.generated_tokens
    hidden = body["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert hidden == be.generated_tokens - len(body["choices"][0]["message"]["content"])
    assert body["router"]["strategy"] == "best_of_n"
    assert body["router"]["verifier_score"] == 1.0
    assert r.headers["x-acr-strategy"] == "best_of_n"


async def test_n_single_pass_samples_share_one_backend_call(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, rt = api
    r = await client.post("/v1/chat/completions", json={**CHAT, "n": 3, "reasoning_effort": "low"})
    assert r.status_code == 200
    assert len(r.json()["choices"]) == 3
    assert [c.n for c in rt.backend.calls] == [3]  # type: ignore[attr-defined]


async def test_an_explicit_strategy_and_budget_win_over_the_effort(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, rt = api
    body = {
        **CHAT,
        "reasoning_effort": "low",
        "acr": {"strategy": "best_of_n", "budget": {"samples": 5}},
    }
    r = await client.post("/v1/chat/completions", json=body)
    assert r.json()["router"]["strategy"] == "best_of_n"
    assert r.json()["router"]["budget"]["samples"] == 5
    assert rt.backend.calls[0].n == 5  # type: ignore[attr-defined]


async def test_streaming_sends_chunks_then_usage_then_done(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = api
    body = {
        **CHAT,
        "stream": True,
        "stream_options": {"include_usage": True},
        "reasoning_effort": "low",
    }
    r = await client.post("/v1/chat/completions", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in r.text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == SOLUTION
    assert chunks[-1]["usage"]["completion_tokens"] > 0


async def test_a_slow_backend_gets_a_408_envelope_at_the_deadline() -> None:
    rt = make(backend=FakeBackend(solution, latency_s=2.0))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=rt.http_app), base_url="http://t"
    ) as client:
        r = await client.post(
            "/v1/chat/completions",
            json={**CHAT, "reasoning_effort": "low", "acr": {"timeout_ms": 100}},
        )
    assert r.status_code == 408
    assert r.json()["error"]["code"] == "deadline_exceeded"


async def test_a_failing_backend_is_retried_then_falls_back_then_gives_503() -> None:
    be = FakeBackend(solution)
    rt = make(backend=be)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=rt.http_app), base_url="http://t"
    ) as client:
        be.fail_next = 1
        r = await client.post("/v1/chat/completions", json={**CHAT, "reasoning_effort": "high"})
        assert r.status_code == 200
        assert r.json()["router"]["strategy"] == "best_of_n"
        be.fail_next = 2
        r = await client.post("/v1/chat/completions", json={**CHAT, "reasoning_effort": "high"})
        assert r.status_code == 200
        assert "fell back to single_pass" in r.json()["router"]["reason"]
        be.fail_next = 10
        r = await client.post("/v1/chat/completions", json={**CHAT, "reasoning_effort": "high"})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "backend_unavailable"
        be.fail_next, be.fail_retryable = 1, False
        r = await client.post("/v1/chat/completions", json={**CHAT, "reasoning_effort": "low"})
        assert r.status_code == 400


async def test_api_keys_are_required_when_configured_and_rate_limits_answer_429(
    redis_url: str,
) -> None:
    cfg = load_config(env={})
    cfg.auth.api_keys = ["secret-1"]
    cfg.auth.requests_per_minute = 2
    cfg.redis.url = redis_url
    rt = make(cfg)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=rt.http_app), base_url="http://t"
    ) as client:
        r = await client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer wrong"}
        )
        assert r.status_code == 401
        ok = {"authorization": "Bearer secret-1"}
        codes = [
            (await client.post("/v1/chat/completions", json=CHAT, headers=ok)).status_code
            for _ in range(3)
        ]
        assert codes == [200, 200, 429]
        assert (await client.get("/healthz")).status_code == 200, "health needs no key"


async def test_every_served_request_lands_in_the_outcome_stream(redis_url: str) -> None:
    cfg = load_config(env={})
    cfg.redis.url = redis_url
    rt = make(cfg)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=rt.http_app), base_url="http://t"
    ) as client:
        ids = []
        for effort in ("low", "medium", "high"):
            r = await client.post("/v1/chat/completions", json={**CHAT, "reasoning_effort": effort})
            ids.append(r.json()["id"])
        fb = await client.post("/v1/feedback", json={"id": ids[0], "reward": 1.0})
        assert fb.status_code == 200
        missing = await client.post("/v1/feedback", json={"id": "nope", "reward": 1.0})
        assert missing.status_code == 404
    # Outcomes reach Redis in the background, from the spool the answers waited for.
    assert rt.outcomes is not None
    for _ in range(200):
        if rt.outcomes.pending == 0:
            break
        await asyncio.sleep(0.05)
    await rt.outcomes.stop()
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    entries = [f for _, f in r.xrange(cfg.redis.outcomes_stream)]
    r.close()
    served = [e for e in entries if e["status"] == "ok"]
    assert [e["id"] for e in served] == ids
    assert [e["strategy"] for e in served] == ["single_pass", "bounded_reasoning", "best_of_n"]
    assert all(int(e["completion_tokens"]) > 0 for e in served)
    assert any(e["status"] == "feedback" and e["id"] == ids[0] for e in entries)


async def test_route_returns_the_decision_without_calling_the_model(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, rt = api
    r = await client.post("/v1/route", json={**CHAT, "reasoning_effort": "high"})
    assert r.status_code == 200
    assert r.json()["router"]["strategy"] == "best_of_n"
    assert rt.backend.calls == []  # type: ignore[attr-defined]


async def test_models_health_and_metrics(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = api
    assert (await client.get("/v1/models")).json()["data"][0]["id"] == "acr-bundled"
    await client.post("/v1/chat/completions", json=CHAT)
    metrics = (await client.get("/metrics")).text
    assert 'acr_requests_total{endpoint="/v1/chat/completions",status="200"}' in metrics


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({**CHAT, "n": 17}, 400, "n"),
        ({**CHAT, "max_tokens": 999_999}, 400, "max_tokens"),
        ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"messages": [{"role": "system", "content": "x"}]}, 400, "messages"),
        ({**CHAT, "model": "gpt-4"}, 404, "model"),
        ({**CHAT, "acr": {"timeout_ms": 999_999}}, 400, "acr.timeout_ms"),
        ({**CHAT, "acr": {"budget": {"samples": 0}}}, 400, "acr.budget.samples"),
    ],
)
async def test_limits_are_enforced_with_the_valid_range_in_the_message(
    api: tuple[httpx.AsyncClient, Runtime], body: dict[str, Any], status: int, param: str
) -> None:
    client, rt = api
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param
    assert rt.backend.calls == [], "nothing unvalidated may reach the backend"  # type: ignore[attr-defined]


async def test_single_pass_continues_a_cut_probe_and_usage_counts_each_token_once() -> None:
    answer = "Work: " + "7*3=21, 12+21=33; " * 8 + "Answer: 33"  # longer than the probe

    def script(prompt: str, i: int, req: GenerationRequest) -> str:
        done = next((k for k in range(len(answer), 0, -1) if prompt.endswith(answer[:k])), 0)
        return answer[done:]

    cfg = load_config(
        env={"ACR_POLICY_LAMBDA_PER_1K_TOKENS": "50", "ACR_POLICY_EXPLORATION_RATE": "0"}
    )
    rt = make(cfg, FakeBackend(script))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=rt.http_app), base_url="http://t"
    ) as client:
        r = await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "What is 12+7*3?"}]},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    be = rt.backend
    assert isinstance(be, FakeBackend)
    assert body["router"]["strategy"] == "single_pass"
    assert body["router"]["continue_probe"] is True
    probe, rest = be.calls
    assert probe.max_tokens < len(answer)  # the probe was cut
    assert rest.prompt is not None and rest.prompt.endswith(answer[: probe.max_tokens])
    assert body["choices"][0]["message"]["content"] == answer
    # Every generated token once, all of them visible.
    assert body["usage"]["completion_tokens"] == be.generated_tokens == len(answer)
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


async def test_the_prompts_of_one_completions_request_share_one_deadline_and_run_together() -> None:
    backend = FakeBackend(lambda prompt, i, req: "Answer: 5", latency_s=0.6)
    rt = make(backend=backend)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=rt.http_app), base_url="http://t"
    ) as client:
        body = {
            "prompt": ["What is 2+3?", "What is 1+4?", "What is 0+5?"],
            "reasoning_effort": "low",
            "acr": {"timeout_ms": 1500},
        }
        t0 = asyncio.get_running_loop().time()
        r = await client.post("/v1/completions", json=body)
        elapsed = asyncio.get_running_loop().time() - t0
    # One after another (each with a fresh deadline) they took 1.8 s; side by side ~0.6 s.
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 3 and elapsed < 1.5


def user_spec(text: str, **fields: Any) -> RequestSpec:
    """One user message as the core's request spec."""
    problem = Problem(text=text, messages=[ChatMessage(role="user", content=text)])
    return RequestSpec(problem, **fields)


async def test_a_probe_that_outlives_its_share_of_the_deadline_is_abandoned() -> None:
    backend = FakeBackend(lambda prompt, i, req: "Answer: 5", latency_s=5.0)
    rt = make(backend=backend)
    spec = rt.service.validate.check(user_spec("What is 2+3?", deadline_ms=600))
    t0 = asyncio.get_running_loop().time()
    decision = await rt.service.policy.decide(spec)
    assert asyncio.get_running_loop().time() - t0 < 2.0  # the probe alone would take 5 s
    assert decision.probe is None and decision.source == "auto"


async def test_a_request_cancelled_mid_run_still_records_its_outcome_and_ends_its_load(
    redis_url: str,
) -> None:
    cfg = load_config(env={})
    cfg.redis.url = redis_url
    backend = FakeBackend(lambda prompt, i, req: "Answer: 5", latency_s=2.0)
    rt = make(cfg, backend)
    spec = rt.service.validate.check(user_spec("4 9 10 13", effort="high", tenant="k"))
    task = asyncio.create_task(rt.service.answer(spec))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rt.outcomes is not None
    await rt.outcomes.stop()
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    records = [f for _, f in r.xrange(cfg.redis.outcomes_stream)]
    r.close()
    assert [x["status"] for x in records] == ["abandoned"]
    policy = rt.service.policy
    assert not policy.tracker.jobs  # type: ignore[attr-defined]
