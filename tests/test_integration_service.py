"""The real service end to end: Ray Serve, the bundled model, a real redis-server, and the
official ``openai`` client against our HTTP API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import redis

from backends.base import ChatMessage, GenerationRequest
from backends.openai_http import OpenAIHTTPBackend
from difficulty.model import RouterModel, bundled_router_path
from router.config import load_config
from router.serving.embedded_redis import EmbeddedRedis, free_port
from router.serving.local import LocalService

pytestmark = pytest.mark.full

PUZZLE = "4 9 10 13"


@pytest.fixture(scope="module")
def service(redis_server: EmbeddedRedis) -> Iterator[LocalService]:
    cfg = load_config(env={})
    cfg.server.port = free_port()
    cfg.redis.url = redis_server.url
    cfg.redis.outcomes_stream = "acr:outcomes:it"
    # Auto decides without exploring, and a few outcomes move its estimates.
    cfg.policy.exploration_rate = 0.0
    cfg.policy.prior_strength = 2.0
    svc = LocalService(cfg).start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def client(service: LocalService) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.url + "/v1", api_key="unused", max_retries=0)


def _stream_len(service: LocalService) -> int:
    r = redis.Redis.from_url(service.config.redis.url or "")
    try:
        return int(r.xlen(service.config.redis.outcomes_stream))
    finally:
        r.close()


def test_models_lists_the_bundled_model(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == ["acr-bundled"]


def test_a_chat_answer_arrives_with_usage_router_decision_and_an_outcome_in_redis(
    client: openai.OpenAI, service: LocalService
) -> None:
    before = _stream_len(service)
    raw = client.chat.completions.with_raw_response.create(
        model="acr-bundled",
        messages=[{"role": "user", "content": PUZZLE}],
        reasoning_effort="low",
    )
    resp = raw.parse()
    content = resp.choices[0].message.content or ""
    assert content.strip().splitlines()[-1].startswith("Answer:")
    usage = resp.usage
    assert usage is not None and usage.completion_tokens > 0
    details = usage.completion_tokens_details
    assert details is not None and details.reasoning_tokens is not None
    assert usage.completion_tokens >= details.reasoning_tokens
    router = (resp.model_extra or {})["router"]
    assert router["strategy"] == "single_pass"
    assert raw.headers["x-acr-strategy"] == "single_pass"
    for _ in range(100):  # the outcome reaches Redis in the background, from the spool
        if _stream_len(service) > before:
            break
        time.sleep(0.05)
    assert _stream_len(service) == before + 1
    r = redis.Redis.from_url(service.config.redis.url or "", decode_responses=True)
    last = r.xrevrange(service.config.redis.outcomes_stream, count=1)[0][1]
    r.close()
    assert last["strategy"] == "single_pass"
    assert int(last["completion_tokens"]) == usage.completion_tokens
    assert last["id"] == resp.id
    assert PUZZLE not in json.dumps(last), "prompt text must not be logged by default"


def test_streaming_yields_the_same_text_as_a_plain_request(client: openai.OpenAI) -> None:
    kwargs = dict(
        model="acr-bundled", messages=[{"role": "user", "content": PUZZLE}], reasoning_effort="low"
    )
    plain = client.chat.completions.create(**kwargs).choices[0].message.content  # type: ignore[call-overload]
    pieces = []
    usage = None
    for chunk in client.chat.completions.create(
        stream=True,
        stream_options={"include_usage": True},
        **kwargs,  # type: ignore[call-overload]
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == plain
    assert usage is not None and usage.completion_tokens > 0


def test_search_spends_hidden_tokens_and_reports_them(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="acr-bundled",
        messages=[{"role": "user", "content": "Use 3 3 8 8 to make 24"}],
        reasoning_effort="high",
        extra_body={"acr": {"budget": {"samples": 8}}},
    )
    router = (resp.model_extra or {})["router"]
    assert router["strategy"] == "best_of_n"
    assert resp.usage is not None and resp.usage.completion_tokens_details is not None
    assert (resp.usage.completion_tokens_details.reasoning_tokens or 0) > 0
    assert router["samples"] >= 1


def test_text_completions_return_n_choices(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model="acr-bundled",
        prompt="What is 2+3?",
        n=2,
        max_tokens=40,
        extra_body={"reasoning_effort": "low"},
    )
    assert [c.index for c in resp.choices] == [0, 1]
    assert all(c.text for c in resp.choices)


@pytest.mark.parametrize(
    ("body", "param_hint"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 0}, "n"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "max"}, "reasoning"),
        ({"messages": [{"role": "user", "content": "hi"}], "acr": {"strategy": "dfs"}}, "acr"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ],
)
def test_bad_requests_get_a_400_envelope(
    service: LocalService, body: dict[str, object], param_hint: str
) -> None:
    r = httpx.post(service.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert param_hint in (err["param"] or "") + err["message"]


def test_unknown_model_and_bad_json_are_4xx_through_the_openai_client(
    client: openai.OpenAI, service: LocalService
) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    r = httpx.post(
        service.url + "/v1/chat/completions",
        content=b"\xff\xfe{",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "json_invalid"


def test_route_decides_without_generating(service: LocalService) -> None:
    before = _stream_len(service)
    r = httpx.post(
        service.url + "/v1/route",
        json={"messages": [{"role": "user", "content": PUZZLE}], "reasoning_effort": "medium"},
    )
    assert r.status_code == 200
    assert r.json()["router"]["strategy"] == "bounded_reasoning"
    assert r.headers["x-acr-strategy"] == "bounded_reasoning"
    assert _stream_len(service) == before


def test_metrics_are_exported_with_the_acr_prefix(service: LocalService) -> None:
    text = httpx.get(service.url + "/metrics").text
    assert "acr_requests_total" in text
    assert "acr_tokens_total" in text


async def test_the_http_backend_talks_to_our_own_openai_compatible_api(
    service: LocalService,
) -> None:
    backend = OpenAIHTTPBackend(service.url + "/v1", "acr-bundled", timeout_s=60)
    try:
        res = await backend.generate(
            GenerationRequest(messages=[ChatMessage(role="user", content="What is 7+8?")], n=1)
        )
    finally:
        await backend.close()
    assert res.completions[0].text
    assert res.completions[0].tokens > 0


ARITHMETIC = "What is 31+45-12*3+7?"


def _router(resp: object) -> dict[str, object]:
    return (getattr(resp, "model_extra", None) or {})["router"]


def test_auto_decides_with_the_bundled_router_and_its_probe(
    client: openai.OpenAI,
) -> None:
    bundled = RouterModel.load(bundled_router_path())
    for prompt, task in ((PUZZLE, "game24"), ("What is 17+25?", "arithmetic")):
        resp = client.chat.completions.create(
            model="acr-bundled", messages=[{"role": "user", "content": prompt}], seed=3
        )
        router = _router(resp)
        assert router["source"] == "auto" and router["task"] == task
        assert str(router["policy_version"]).endswith(bundled.version)
        assert router["probe_tokens"] and router["predicted_success"] is not None
        assert len(router["candidates"]) >= 2  # type: ignore[arg-type]
        assert resp.choices[0].message.content


def test_feedback_moves_the_shared_estimate_and_then_the_decision(
    client: openai.OpenAI, service: LocalService
) -> None:
    def ask() -> tuple[str, dict[str, object]]:
        resp = client.chat.completions.create(
            model="acr-bundled", messages=[{"role": "user", "content": ARITHMETIC}], seed=5
        )
        return resp.id, _router(resp)

    first_id, first = ask()
    arm = first["arm"]
    r = redis.Redis.from_url(service.config.redis.url or "", decode_responses=True)
    key = (
        f"{service.config.redis.key_prefix}:{first['policy_version']}:arm:acr-bundled:"
        f"{first['task']}:{first['difficulty_bin']}:{arm}"
    )
    fails_before = float(r.hget(key, "fail") or 0.0)
    url = service.url + "/v1/feedback"
    assert httpx.post(url, json={"id": first_id, "reward": 0.0}).json()["applied"] == 1.0
    assert httpx.post(url, json={"id": first_id, "reward": 0.0}).status_code == 409
    moved_to = None
    for _ in range(20):
        rid, router = ask()
        if router["arm"] != arm:
            moved_to = router["arm"]
            break
        assert httpx.post(url, json={"id": rid, "reward": 0.0}).status_code == 200
    assert float(r.hget(key, "fail") or 0.0) >= fails_before + 1.0  # the posterior moved
    r.close()
    assert moved_to is not None, f"auto kept {arm} after 20 failures reported by feedback"
