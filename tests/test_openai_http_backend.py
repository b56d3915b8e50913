"""The OpenAI-compatible HTTP backend: request shape, parsing, errors and the breaker.

A scripted ``httpx.MockTransport`` plays the server here; the integration test points the
same backend at the router's own running HTTP API.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from backends.base import BackendError, ChatMessage, GenerationRequest
from backends.openai_http import CircuitBreaker, OpenAIHTTPBackend


def _backend(handler: Any, **kw: Any) -> OpenAIHTTPBackend:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAIHTTPBackend("http://srv/v1", "m", client=client, **kw)


async def test_a_raw_prompt_goes_to_completions_with_sampling_fields() -> None:
    seen: dict[str, Any] = {}

    def handler(req: httpx.Request) -> httpx.Response:
        seen["url"] = str(req.url)
        seen["body"] = json.loads(req.content)
        return httpx.Response(
            200,
            json={
                "model": "m",
                "choices": [
                    {
                        "index": 1,
                        "text": "b",
                        "finish_reason": "length",
                        "logprobs": {
                            "token_logprobs": [-0.5, -0.1],
                            "top_logprobs": [{"x": -0.5, "y": -1.0}, {"b": -0.1}],
                        },
                    },
                    {
                        "index": 0,
                        "text": "a",
                        "finish_reason": "stop",
                        "logprobs": {"token_logprobs": [-0.2], "top_logprobs": [{"a": -0.2}]},
                    },
                ],
                "usage": {"prompt_tokens": 4, "completion_tokens": 3},
            },
        )

    be = _backend(handler)
    res = await be.generate(
        GenerationRequest(
            prompt="hi", n=2, max_tokens=5, temperature=0.7, stop=["\n"], seed=3, logprobs=True
        )
    )
    assert seen["url"] == "http://srv/v1/completions"
    assert seen["body"]["n"] == 2 and seen["body"]["stop"] == ["\n"] and seen["body"]["seed"] == 3
    assert seen["body"]["logprobs"] == 5
    assert [c.text for c in res.completions] == ["a", "b"]
    assert [c.tokens for c in res.completions] == [1, 2]
    assert res.completions[1].finish_reason == "length"
    assert res.prompt_tokens == 4
    ent = res.completions[1].token_entropies
    assert ent is not None and ent[0] > 0 and ent[1] == 0


async def test_chat_requests_go_to_chat_completions_and_split_usage_without_logprobs() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        assert str(req.url).endswith("/chat/completions")
        body = json.loads(req.content)
        assert body["messages"] == [{"role": "user", "content": "q"}]
        return httpx.Response(
            200,
            json={
                "choices": [
                    {"index": i, "message": {"content": f"c{i}"}, "finish_reason": "stop"}
                    for i in range(3)
                ],
                "usage": {"prompt_tokens": 2, "completion_tokens": 10},
            },
        )

    be = _backend(handler)
    res = await be.generate(
        GenerationRequest(messages=[ChatMessage(role="user", content="q")], n=3)
    )
    assert [c.tokens for c in res.completions] == [4, 3, 3]
    assert res.completion_tokens == 10


async def test_server_errors_are_retryable_and_client_errors_are_not() -> None:
    status = {"code": 503}

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(status["code"], text="nope")

    be = _backend(handler)
    with pytest.raises(BackendError) as err:
        await be.generate(GenerationRequest(prompt="x"))
    assert err.value.retryable
    status["code"] = 400
    with pytest.raises(BackendError) as err:
        await be.generate(GenerationRequest(prompt="x"))
    assert not err.value.retryable


async def test_the_breaker_opens_after_repeated_failures_and_half_opens_later() -> None:
    now = {"t": 0.0}
    calls = {"n": 0}

    def handler(req: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        raise httpx.ConnectError("down")

    be = _backend(
        handler, breaker=CircuitBreaker(threshold=2, cooldown_s=5, clock=lambda: now["t"])
    )
    for _ in range(2):
        with pytest.raises(BackendError, match="unreachable"):
            await be.generate(GenerationRequest(prompt="x"))
    with pytest.raises(BackendError, match="circuit open"):
        await be.generate(GenerationRequest(prompt="x"))
    assert calls["n"] == 2
    now["t"] = 6.0
    with pytest.raises(BackendError, match="unreachable"):
        await be.generate(GenerationRequest(prompt="x"))
    assert calls["n"] == 3
