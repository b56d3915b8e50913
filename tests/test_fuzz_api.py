"""Property-based fuzzing of the HTTP API: no generated request may produce a 5xx.

The app runs in-process (ASGI) over a scripted backend, so ten thousand requests take a
minute; the real Ray Serve path is covered by the integration tests. ``ACR_FUZZ_EXAMPLES``
scales the run (default 10,000 requests across the properties below).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.base import (
    Backend,
    ChatMessage,
    Completion,
    GenerationRequest,
    GenerationResult,
)
from router.config import load_config
from router.runtime import build_runtime

TOTAL = int(os.environ.get("ACR_FUZZ_EXAMPLES", "10000"))
ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/route", "/v1/feedback"]


class EchoBackend(Backend):
    """Answers every sample with a fixed trace instantly; counts calls."""

    name = "acr-bundled"

    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.calls += 1
        comp = Completion(
            text="1+1=2\nAnswer: 2",
            tokens=min(request.max_tokens, 8),
            finish_reason="stop",
            token_logprobs=[-0.1] * min(request.max_tokens, 8) if request.logprobs else None,
            token_entropies=[0.2] * min(request.max_tokens, 8) if request.logprobs else None,
        )
        return GenerationResult(completions=[comp] * request.n, prompt_tokens=3, model=self.name)

    async def render_chat(self, messages: list[ChatMessage]) -> str:
        return "\n".join(m.content for m in messages) + "\n"


@pytest.fixture(scope="module")
def loop() -> Any:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def client(loop: Any) -> Any:
    cfg = load_config(env={})
    cfg.server.request_timeout_ms = 5_000
    rt = build_runtime(cfg, backend=EchoBackend())
    c = httpx.AsyncClient(transport=httpx.ASGITransport(app=rt.http_app), base_url="http://t")
    yield c
    loop.run_until_complete(c.aclose())


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
field_values = json_values | st.sampled_from(
    [
        0,
        -1,
        1,
        2,
        17,
        256,
        257,
        10**9,
        1e308,
        -0.0,
        0.5,
        2.5,
        "",
        "low",
        "high",
        "auto",
        "max",
        [],
        {},
        [""],
        ["\n"],
        ["a"] * 20,
        "x" * 70,
    ]
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant", "tool", "bot", 3]),
            "content": st.one_of(
                st.text(max_size=60), json_values, st.just([{"type": "text", "text": "4 9 10 13"}])
            ),
        }
    ),
    max_size=4,
)
chat_bodies = st.fixed_dictionaries(
    {"messages": messages | json_values},
    optional={
        k: field_values
        for k in [
            "model",
            "n",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "stop",
            "seed",
            "stream",
            "stream_options",
            "reasoning_effort",
            "logprobs",
            "top_logprobs",
            "user",
            "acr",
            "prompt",
            "id",
            "reward",
        ]
    },
)
acr_bodies = st.fixed_dictionaries(
    {"messages": st.just([{"role": "user", "content": "What is 2+3?"}])},
    optional={
        "acr": st.fixed_dictionaries(
            {},
            optional={
                "strategy": st.sampled_from(
                    [
                        "auto",
                        "single_pass",
                        "bounded_reasoning",
                        "best_of_n",
                        "self_consistency",
                        "beam_search",
                        "dfs",
                        "",
                        7,
                    ]
                ),
                "budget": st.dictionaries(
                    st.sampled_from(
                        [
                            "max_tokens",
                            "samples",
                            "batch_size",
                            "beam_width",
                            "expansions",
                            "max_steps",
                            "temperature",
                            "bogus",
                        ]
                    ),
                    field_values,
                    max_size=4,
                ),
                "latency_budget_ms": field_values,
                "timeout_ms": field_values,
            },
        ),
        "reasoning_effort": st.sampled_from(["low", "medium", "high", "auto", "none", None]),
        "n": st.integers(min_value=-2, max_value=20),
        "stream": st.booleans(),
    },
)
raw_bodies = st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8"))


def _post(loop: Any, client: httpx.AsyncClient, path: str, **kw: Any) -> httpx.Response:
    return loop.run_until_complete(client.post(path, **kw))


def _assert_ok_or_envelope(resp: httpx.Response) -> None:
    assert resp.status_code < 500, (resp.status_code, resp.text[:500])
    if resp.status_code >= 400:
        err = resp.json()["error"]
        assert isinstance(err["message"], str) and err["message"]
        assert set(err) == {"message", "type", "param", "code"}


FUZZ = settings(
    max_examples=max(1, TOTAL // 10),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


@FUZZ
@given(body=chat_bodies, path=st.sampled_from(ENDPOINTS))
def test_structured_bodies_with_wild_field_values_never_get_a_5xx(
    loop: Any, client: httpx.AsyncClient, body: dict[str, Any], path: str
) -> None:
    payload = json.dumps(body, allow_nan=True)
    _assert_ok_or_envelope(
        _post(loop, client, path, content=payload, headers={"content-type": "application/json"})
    )


@settings(FUZZ, max_examples=max(1, TOTAL * 3 // 10))
@given(body=acr_bodies)
def test_router_options_are_validated_or_served_never_a_5xx(
    loop: Any, client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    _assert_ok_or_envelope(_post(loop, client, "/v1/chat/completions", json=body))


@settings(FUZZ, max_examples=max(1, TOTAL * 3 // 10))
@given(body=json_values, path=st.sampled_from(ENDPOINTS))
def test_any_json_document_never_gets_a_5xx(
    loop: Any, client: httpx.AsyncClient, body: Any, path: str
) -> None:
    _assert_ok_or_envelope(_post(loop, client, path, json=body))


@settings(FUZZ, max_examples=max(1, TOTAL * 3 // 10))
@given(body=raw_bodies, path=st.sampled_from(ENDPOINTS))
def test_raw_bytes_invalid_utf8_and_broken_json_never_get_a_5xx(
    loop: Any, client: httpx.AsyncClient, body: bytes, path: str
) -> None:
    resp = _post(loop, client, path, content=body, headers={"content-type": "application/json"})
    _assert_ok_or_envelope(resp)
    assert resp.status_code != 200 or body.strip().startswith(b"{")


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, 1e309], ids=["nan", "inf", "-inf", "overflow"]
)
def test_non_finite_numbers_are_rejected_with_a_400(
    loop: Any, client: httpx.AsyncClient, value: float
) -> None:
    body = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}], "temperature": value}, allow_nan=True
    )
    if value == 1e309:
        body = body.replace("Infinity", "1e309")
    resp = _post(
        loop,
        client,
        "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400, resp.text
    assert "temperature" in resp.json()["error"]["message"]


def test_an_oversized_body_gets_a_413(loop: Any, client: httpx.AsyncClient) -> None:
    big = b'{"messages": [{"role": "user", "content": "' + b"a" * 2_000_000 + b'"}]}'
    resp = _post(
        loop,
        client,
        "/v1/chat/completions",
        content=big,
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "body_too_large"
