"""Reasoning models: a real thinking budget (budget forcing) and the thinking kept apart from
the answer, counted as reasoning tokens and returned as ``reasoning_content``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from backends.base import ChatMessage, GenerationRequest, ThinkTags
from backends.chat_template import ChatTemplate
from backends.openai_http import OpenAIHTTPBackend
from policies.base import Problem
from policies.bounded_reasoning import BoundedReasoning
from policies.budget import Budget
from router.config import load_config
from router.serving.runtime import build_runtime
from tests.fakes import FakeBackend
from tests.llama_server import LlamaServer, start_llama_server, unavailable_reason

THINK = ThinkTags("<think>", "</think>", answer_max_tokens=12)
THOUGHT = "Let me add the numbers carefully one digit at a time and check"


def thinker(prompt: str, i: int, req: GenerationRequest) -> str:
    """Thinks at length after <think>; answers once the block is closed."""
    if prompt.endswith("</think>\n\n"):
        return "Answer: 42"
    return THOUGHT


def test_thinking_stops_at_the_budget_is_closed_and_the_model_answers() -> None:
    be = FakeBackend(thinker)
    problem = Problem(
        text="What is 17+25?",
        messages=[ChatMessage(role="user", content="What is 17+25?")],
        think=THINK,
    )
    res = asyncio.run(BoundedReasoning().run(problem, be, Budget(max_tokens=10), 1e12))
    think_call, answer_call = be.calls
    assert think_call.max_tokens == 10 and think_call.stop == ["</think>"]
    assert think_call.prompt is not None and think_call.prompt.endswith("<think>\n")
    assert answer_call.prompt is not None and answer_call.prompt.endswith(
        THOUGHT[:10] + "\n</think>\n\n"
    )
    assert answer_call.max_tokens == THINK.answer_max_tokens
    assert res.reasoning == THOUGHT[:10] and res.text == "Answer: 42"
    assert res.stop_reason == "budget"  # the router, not the model, closed the block
    assert (res.hidden_tokens, res.visible_tokens) == (10, len("Answer: 42"))
    assert res.samples == res.samples_planned == 2


def test_a_reasoning_model_returns_its_thinking_apart_through_the_api() -> None:
    cfg = load_config(env={})
    cfg.model.reasoning.think_open = "<think>"
    rt = build_runtime(cfg, backend=FakeBackend(thinker))

    async def main() -> dict:  # type: ignore[type-arg]
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=rt.http_app), base_url="http://t"
        ) as c:
            body = {
                "messages": [{"role": "user", "content": "What is 17+25?"}],
                "reasoning_effort": "low",
            }
            r = await c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]

    body = asyncio.run(main())
    low = cfg.strategies.thinking_budget_tokens["low"]
    msg = body["choices"][0]["message"]
    assert body["router"]["strategy"] == "bounded_reasoning"
    assert body["router"]["budget"]["max_tokens"] == low  # the effort bought this budget
    assert msg["content"] == "Answer: 42"
    assert msg["reasoning_content"] == THOUGHT[:low].strip()
    usage = body["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] >= len(msg["reasoning_content"])
    assert usage["completion_tokens"] == usage["completion_tokens_details"][
        "reasoning_tokens"
    ] + len("Answer: 42")


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaServer]:
    if unavailable_reason() is not None:
        pytest.skip(str(unavailable_reason()))
    server = start_llama_server()
    yield server
    server.stop()


@pytest.mark.full
def test_budget_forcing_runs_through_the_real_servers_completions_in_the_models_template(
    llama: LlamaServer,
) -> None:
    backend = OpenAIHTTPBackend(
        llama.base_url,
        "smollm2",
        template=ChatTemplate.from_path(str(llama.gguf_path)),
        extra_body={"repeat_penalty": 1.0},
    )
    problem = Problem(
        text="What is 17+25?",
        messages=[ChatMessage(role="user", content="What is 17+25?")],
        think=THINK,
    )

    async def main() -> object:
        await backend.start()
        try:
            return await BoundedReasoning().run(
                problem, backend, Budget(max_tokens=16, temperature=0.0), 1e12
            )
        finally:
            await backend.close()

    res = asyncio.run(main())
    assert res.reasoning  # SmolLM2 never closes <think> itself: the router did, at 16 tokens
    assert res.stop_reason == "budget"
    assert res.hidden_tokens <= 16 + 1 and 0 < res.visible_tokens <= THINK.answer_max_tokens
    assert res.samples == 2
