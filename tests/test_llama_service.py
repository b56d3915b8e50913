"""The router in front of a real OpenAI-compatible server: llama.cpp's (llama-cpp-python)
serving the real SmolLM2-135M-Instruct GGUF, through real Ray Serve and redis-server, with
the official ``openai`` client. Every strategy, ``n``, streaming, answer extraction and the
model's chat template go end to end; SmolLM2 is too small to be right, so nothing here checks
accuracy, only that the plumbing does what the router object says."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from router.config import load_config
from router.serving.embedded_redis import EmbeddedRedis, free_port
from router.serving.local import LocalService
from tests.llama_server import LlamaServer, start_llama_server, unavailable_reason

pytestmark = [
    pytest.mark.full,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]

MODEL = "smollm2"
SMALL = {"max_tokens": 24}


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaServer]:
    server = start_llama_server()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service(llama: LlamaServer, redis_server: EmbeddedRedis) -> Iterator[LocalService]:
    cfg = load_config(env={})
    cfg.server.port = free_port()
    cfg.redis.url = redis_server.url
    cfg.redis.outcomes_stream = "acr:outcomes:llama"
    cfg.model = cfg.model.model_copy(
        update={
            "kind": "openai",
            "name": MODEL,
            "base_url": llama.base_url,
            "tokenizer_path": str(llama.gguf_path),
            "extra_body": {"repeat_penalty": 1.0},
        }
    )
    cfg.policy.exploration_rate = 0.0
    svc = LocalService(cfg).start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def client(service: LocalService) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.url + "/v1", api_key="unused", max_retries=0)


def ask(client: openai.OpenAI, text: str, **kw: Any) -> Any:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], **kw
    )


def router(resp: Any) -> dict[str, Any]:
    obj = resp.model_extra["router"]
    assert isinstance(obj, dict)
    return obj


@pytest.mark.parametrize(
    ("strategy", "budget"),
    [
        ("single_pass", SMALL),
        ("bounded_reasoning", SMALL),
        ("best_of_n", {**SMALL, "samples": 4}),
        ("self_consistency", {**SMALL, "samples": 4, "batch_size": 2}),
        ("beam_search", {"max_tokens": 16, "beam_width": 2, "expansions": 2, "max_steps": 2}),
    ],
)
def test_every_strategy_runs_against_the_real_server_and_draws_what_it_planned(
    client: openai.OpenAI, strategy: str, budget: dict[str, Any]
) -> None:
    resp = ask(
        client,
        "What is 17+25? Answer with a number.",
        extra_body={"acr": {"strategy": strategy, "budget": budget}},
    )
    r = router(resp)
    assert r["strategy"] == strategy and r["task"] == "math"
    assert r["samples"] == r["samples_planned"], r
    assert "samples_shortfall" not in r
    if strategy in ("best_of_n", "self_consistency"):
        assert r["samples"] >= 2  # llama.cpp ignores n: the router fans the samples out
    assert resp.usage.completion_tokens > 0 and resp.usage.prompt_tokens > 0
    assert resp.choices[0].message.content is not None


def test_n_choices_are_drawn_even_though_the_server_ignores_n(client: openai.OpenAI) -> None:
    resp = ask(client, "Name a colour.", n=3, temperature=0.9, reasoning_effort="low", **SMALL)
    assert len(resp.choices) == 3
    r = router(resp)
    assert r["samples"] == r["samples_planned"] == 3


def test_numeric_answers_in_free_text_are_extracted_for_the_vote(client: openai.OpenAI) -> None:
    resp = ask(
        client,
        "What is 17+25?",
        extra_body={"acr": {"strategy": "self_consistency", "budget": {**SMALL, "samples": 4}}},
    )
    answers = router(resp)["answers"]
    # SmolLM2 writes no "Answer:" line; the math profile still reads a number out of it.
    assert answers[0] is not None and any(ch.isdigit() for ch in answers[0])


def test_prompts_with_no_extractable_answer_are_never_sent_to_voting_or_search(
    client: openai.OpenAI,
) -> None:
    for text in ("Write a haiku about the sea.", "Translate 'good night' into German."):
        r = router(ask(client, text, **SMALL))
        assert r["task"] == "open"
        assert r["strategy"] == "single_pass", r["reason"]
        offered = {c["arm"].split("@")[0] for c in r["candidates"]}
        assert offered == {"single_pass"}


def test_streaming_sends_the_backends_tokens_as_they_come_and_the_same_text(
    service: LocalService, client: openai.OpenAI
) -> None:
    plain = ask(client, "Say hello in one sentence.", reasoning_effort="low", temperature=0.0)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello in one sentence."}],
        "reasoning_effort": "low",
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    pieces, usage, routed = [], None, None
    with httpx.stream("POST", service.url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    pieces.append(choice["delta"]["content"])
            usage = chunk.get("usage") or usage
            routed = chunk.get("router") or routed
    assert len(pieces) > 2  # token by token, not one block at the end
    assert "".join(pieces) == plain.choices[0].message.content
    assert usage is not None and usage["completion_tokens"] == plain.usage.completion_tokens
    assert routed is not None and routed["strategy"] == "single_pass"


def test_readiness_checks_the_backend_and_redis(service: LocalService) -> None:
    assert httpx.get(service.url + "/healthz").json()["status"] == "ok"
    ready = httpx.get(service.url + "/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
