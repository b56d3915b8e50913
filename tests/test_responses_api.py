"""The Responses API through real Ray Serve and a real redis-server, with the official
``openai`` client: create (plain, reasoning effort, function tools with a call's output fed
back, JSON output), stream, continue by ``previous_response_id``, retrieve, delete, list
input items; against the bundled model and the real llama.cpp server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import redis

from router.config import load_config
from router.serving.embedded_redis import EmbeddedRedis, free_port
from router.serving.local import LocalService
from tests.test_conformance import WEATHER

pytestmark = pytest.mark.full

PUZZLE = "4 9 10 13"
WEATHER_TOOL = {"type": "function", **WEATHER["function"]}


@pytest.fixture(scope="module")
def bundled(redis_server: EmbeddedRedis) -> Iterator[LocalService]:
    cfg = load_config(env={})
    cfg.server.port = free_port()
    cfg.redis.url = redis_server.url
    cfg.auth.api_keys = ["alice", "bob"]
    svc = LocalService(cfg).start()
    yield svc
    svc.stop()


def client(svc: LocalService, key: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=svc.url + "/v1", api_key=key, max_retries=0, timeout=120)


def test_a_plain_response_has_its_output_usage_and_the_routers_decision(
    bundled: LocalService,
) -> None:
    r = client(bundled).responses.create(model="acr-bundled", input=PUZZLE)
    assert r.object == "response" and r.status in ("completed", "incomplete")
    assert r.output[0].type == "message" and r.output_text.strip()
    assert r.usage is not None and r.usage.output_tokens > 0
    assert r.usage.output_tokens_details.reasoning_tokens <= r.usage.output_tokens
    router = (r.model_extra or {})["router"]
    assert router["strategy"] and router["stored"] is True
    # The same request through chat completions makes the same decision.
    chat = client(bundled).chat.completions.create(
        model="acr-bundled", messages=[{"role": "user", "content": PUZZLE}]
    )
    assert (chat.model_extra or {})["router"]["arm"] == router["arm"]


def test_reasoning_effort_forces_the_strategy_chat_would_run(bundled: LocalService) -> None:
    r = client(bundled).responses.create(
        model="acr-bundled", input=PUZZLE, reasoning={"effort": "high"}
    )
    router = (r.model_extra or {})["router"]
    assert router["source"] == "effort" and router["strategy"] == "best_of_n"
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens > 0


def test_three_turns_by_previous_response_id_continue_the_conversation(
    bundled: LocalService,
) -> None:
    c = client(bundled)
    first = c.responses.create(model="acr-bundled", input=PUZZLE, instructions="Solve it.")
    second = c.responses.create(
        model="acr-bundled", input="What is 2+3?", previous_response_id=first.id
    )
    third = c.responses.create(
        model="acr-bundled", input="What is 4+4?", previous_response_id=second.id
    )
    assert third.previous_response_id == second.id
    items = c.responses.input_items.list(third.id, order="asc")
    assert [i.type for i in items.data] == ["message"]
    got = c.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == second.output_text
    # What the third turn was built from: both earlier turns and their answers.
    store = redis.Redis.from_url(bundled.config.redis.url or "", decode_responses=True)
    keys = store.keys(f"*:response:*:{third.id}")
    (record,) = [json.loads(store.get(k) or "{}") for k in keys]
    store.close()
    texts = [m.get("content") for m in record["context"]]
    assert PUZZLE in texts and "What is 2+3?" in texts and "What is 4+4?" in texts
    assert first.output_text in texts and "Solve it." not in texts  # instructions not kept


def test_another_key_can_neither_read_nor_delete_a_stored_response(
    bundled: LocalService,
) -> None:
    mine = client(bundled, "alice").responses.create(model="acr-bundled", input=PUZZLE)
    other = client(bundled, "bob")
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="acr-bundled", input="2+2?", previous_response_id=mine.id)
    client(bundled, "alice").responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        client(bundled, "alice").responses.retrieve(mine.id)


def test_store_false_keeps_nothing(bundled: LocalService) -> None:
    r = client(bundled).responses.create(model="acr-bundled", input=PUZZLE, store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client(bundled).responses.retrieve(r.id)


def test_a_stream_sends_the_events_in_order_and_ends_with_the_stored_response(
    bundled: LocalService,
) -> None:
    with client(bundled).responses.stream(model="acr-bundled", input=PUZZLE) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed" or kinds[-1] == "response.incomplete"
    assert "response.output_text.delta" in kinds
    assert kinds.index("response.output_item.added") < kinds.index("response.output_text.delta")
    assert final.output_text.strip()
    assert client(bundled).responses.retrieve(final.id).output_text == final.output_text


def test_fields_the_router_does_not_implement_are_refused_by_name(
    bundled: LocalService,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(bundled).responses.create(model="acr-bundled", input=PUZZLE, background=True)
    assert caught.value.body["param"] == "background"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        client(bundled).responses.create(
            model="acr-bundled",
            input=PUZZLE,
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
        )
    assert caught.value.body["param"] == "tools"  # type: ignore[index]


class CountingRedis:
    """The store's Redis client, counting the commands it sends."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.counts: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in ("get", "set", "delete"):
            self.counts[name] = self.counts.get(name, 0) + 1
        return attr


async def test_each_turn_costs_one_read_and_one_write_and_stored_responses_expire(
    redis_url: str,
) -> None:
    import asyncio

    import httpx

    from router.serving.runtime import build_runtime
    from tests.fakes import FakeBackend

    cfg = load_config(env={})
    cfg.redis.url = redis_url
    cfg.responses.ttl_s = 2
    rt = build_runtime(cfg, backend=FakeBackend(lambda p, i, r: "Answer: 24"))
    assert rt.responses is not None
    counting = CountingRedis(rt.responses.client)
    rt.responses.client = counting
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=rt.http_app), base_url="http://t")
    c = openai.AsyncOpenAI(base_url="http://t/v1", api_key="k", http_client=http, max_retries=0)
    previous = None
    per_turn = []
    for text in (PUZZLE, "What is 2+3?", "What is 4+4?"):
        before = dict(counting.counts)
        r = await c.responses.create(model="acr-bundled", input=text, previous_response_id=previous)
        previous = r.id
        per_turn.append({k: v - before.get(k, 0) for k, v in counting.counts.items()})
    assert per_turn[0] == {"set": 1}
    assert per_turn[1:] == [{"get": 1, "set": 1}] * 2
    assert (await c.responses.retrieve(previous)).id == previous
    await asyncio.sleep(2.5)
    with pytest.raises(openai.NotFoundError):
        await c.responses.retrieve(previous)
    await http.aclose()
