"""No caller can take the backend from the others: requests the real server rejects are
that caller's 4xx, not retried, and never open the circuit breaker.

llama-cpp-python's server answers a conversation with an assistant tool call and a tool
result (valid OpenAI) with a 500 that says the request failed its validation. Before,
the router retried each, answered 503 and, after 5 in a row, opened the breaker: every
caller got 503 for 10 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from openai import APIStatusError, AsyncOpenAI

from backends.openai_http import OpenAIHTTPBackend
from router.serving.runtime import Runtime, build_runtime
from tests.llama_server import LlamaServer, start_llama_server, unavailable_reason
from tests.router_http import openai_backend_config, served
from tests.test_conformance import TOOL_TURNS, WEATHER

pytestmark = pytest.mark.full

REJECTED = 50


@pytest.fixture(scope="module")
def server() -> Iterator[LlamaServer]:
    if unavailable_reason() is not None:
        pytest.skip(str(unavailable_reason()))
    srv = start_llama_server()
    yield srv
    srv.stop()


async def test_one_callers_rejected_requests_leave_every_other_request_answered(
    server: LlamaServer,
) -> None:
    cfg = openai_backend_config(server.base_url)
    cfg.auth.api_keys = ["mallory", "alice", "bob"]
    rt: Runtime = build_runtime(cfg)
    with served(rt) as url:

        def client(key: str) -> AsyncOpenAI:
            return AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)

        async def rejected() -> list[int]:
            codes = []
            for _ in range(REJECTED):
                try:
                    await client("mallory").chat.completions.create(
                        model="smollm2", messages=TOOL_TURNS, tools=[WEATHER], max_tokens=8
                    )
                    codes.append(200)
                except APIStatusError as err:
                    codes.append(err.status_code)
            return codes

        async def others(key: str) -> list[int]:
            codes = []
            for i in range(6):
                r = await client(key).chat.completions.with_raw_response.create(
                    model="smollm2",
                    messages=[{"role": "user", "content": f"Name a colour ({i})."}],
                    max_tokens=8,
                    temperature=0,
                )
                codes.append(r.status_code)
            return codes

        bad, good_a, good_b = await asyncio.gather(rejected(), others("alice"), others("bob"))
    assert bad == [400] * REJECTED
    assert good_a + good_b == [200] * 12
    backend = rt.service.backend
    assert isinstance(backend, OpenAIHTTPBackend)
    assert backend.breaker.state == "closed" and backend.breaker.failures == 0
    # Each rejected request reached the server once: none was retried.
    assert rt.metrics.retries._value.get() == 0
