"""The Responses API in front of a real server (llama-cpp-python's, with SmolLM2, which
calls tools when told which; llama.cpp's own server with this model's template does not) on
real Ray Serve and a real redis-server with persistence: function tools with a
call's output fed back, JSON output, a streamed tool call, and a conversation that
continues across a Redis restart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from router.config import load_config
from router.serving.embedded_redis import EmbeddedRedis, free_port
from router.serving.local import LocalService
from tests.llama_server import LlamaServer, start_llama_server, unavailable_reason
from tests.test_responses_api import WEATHER_TOOL, client

pytestmark = pytest.mark.full


@dataclass
class Stack:
    """The router on Ray Serve in front of the server, with its own redis-server."""

    service: LocalService
    server: LlamaServer
    redis: EmbeddedRedis


@pytest.fixture(scope="module")
def llama() -> Iterator[Stack]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    server = start_llama_server()
    redis = EmbeddedRedis(appendonly=True).start()
    cfg = load_config(env={})
    cfg.server.port = free_port()
    cfg.redis.url = redis.url
    cfg.model = cfg.model.model_copy(
        update={"name": "smollm2", "kind": "openai", "base_url": server.base_url}
    )
    svc = LocalService(cfg).start()
    yield Stack(svc, server, redis)
    svc.stop()
    server.stop()
    redis.cleanup()


def test_a_function_call_and_its_output_fed_back_through_a_real_server(
    llama: Stack,
) -> None:
    svc = llama.service
    c = client(svc)
    first = c.responses.create(
        model="smollm2",
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
    )
    (call,) = [o for o in first.output if o.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments)
    second = c.responses.create(
        model="smollm2",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "22 C"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert second.status in ("completed", "incomplete") and second.output


def test_json_output_and_a_streamed_tool_call_through_a_real_server(
    llama: Stack,
) -> None:
    svc = llama.service
    c = client(svc)
    r = c.responses.create(
        model="smollm2",
        input="Describe a city as JSON with a key 'name'.",
        text={"format": {"type": "json_object"}},
        max_output_tokens=64,
    )
    if r.status == "completed":
        assert isinstance(json.loads(r.output_text), dict)
    with c.responses.stream(
        model="smollm2",
        input="What is the weather in Oslo?",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    (call,) = [o for o in final.output if o.type == "function_call"]
    assert call.name == "get_weather"


def test_a_conversation_continues_across_a_redis_restart_with_persistence(llama: Stack) -> None:
    c = client(llama.service)
    first = c.responses.create(model="smollm2", input="Name a colour.", max_output_tokens=16)
    llama.redis.kill()
    llama.redis.start()  # the AOF brings the stored response back
    second = c.responses.create(
        model="smollm2",
        input="And another one?",
        previous_response_id=first.id,
        max_output_tokens=16,
    )
    assert second.previous_response_id == first.id
    assert c.responses.retrieve(first.id).id == first.id
