"""Pools of real backends, through the official ``openai`` client:

- the bundled model (its own Ray Serve replicas) beside llama.cpp's ``llama-server`` with
  SmolLM2: Game of 24 and arithmetic go to the bundled model, open prompts to SmolLM2, and a
  request naming a model runs there;
- two ``llama-server`` processes with the same GGUF: one is killed under load from four
  clients and the pool keeps answering every request; naming the dead one is a 503.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from router.config import BackendConfig, load_config
from router.serving.embedded_redis import EmbeddedRedis, free_port
from router.serving.local import LocalService
from router.serving.runtime import build_runtime
from tests.llama_server import LlamaServer, cpp_unavailable_reason, start_cpp_server
from tests.router_http import served

pytestmark = pytest.mark.full

PUZZLE = "4 9 10 13"
SUM = "What is 12+35?"
OPEN = "Write one sentence about the sea."


def cpp_server() -> LlamaServer:
    reason = cpp_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return start_cpp_server(parallel=2, n_ctx=4096)


@pytest.fixture(scope="module")
def cpp() -> Iterator[LlamaServer]:
    server = cpp_server()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mixed(cpp: LlamaServer, redis_server: EmbeddedRedis) -> Iterator[LocalService]:
    cfg = load_config(env={})
    cfg.server.port = free_port()
    cfg.redis.url = redis_server.url
    cfg.redis.outcomes_stream = "acr:outcomes:pool"
    cfg.backends = [
        BackendConfig(name="acr-bundled", profiles=["game24", "arithmetic"]),
        BackendConfig(name="smollm2", kind="openai", base_url=cpp.base_url),
    ]
    svc = LocalService(cfg).start()
    yield svc
    svc.stop()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=180)


def ask(c: openai.OpenAI, text: str, **kw: Any) -> Any:
    return c.chat.completions.create(
        model=kw.pop("model", "auto"), messages=[{"role": "user", "content": text}], **kw
    )


def router_of(response: Any) -> dict[str, Any]:
    router: dict[str, Any] = (response.model_extra or {})["router"]
    return router


def test_each_prompt_of_mixed_traffic_goes_to_the_model_that_can_answer_it(
    mixed: LocalService,
) -> None:
    c = client(mixed.url + "/v1")
    assert [m.id for m in c.models.list().data] == ["acr-bundled", "smollm2", "auto"]
    puzzle = ask(c, PUZZLE)
    assert puzzle.model == "acr-bundled", router_of(puzzle)
    assert "Answer:" in (puzzle.choices[0].message.content or "")
    total = ask(c, SUM)
    assert total.model == "acr-bundled", router_of(total)
    prose = ask(c, OPEN, max_tokens=24)
    assert prose.model == "smollm2" and (prose.choices[0].message.content or "").strip()
    assert "the only backend up that serves it" in router_of(prose)["model_reason"]


def test_a_named_model_serves_even_what_the_pool_would_send_elsewhere(
    mixed: LocalService,
) -> None:
    c = client(mixed.url + "/v1")
    r = ask(c, PUZZLE, model="smollm2", max_tokens=24)
    assert r.model == "smollm2" and router_of(r)["model_reason"].endswith("named in request")


def test_a_pool_answer_streams_with_the_serving_models_name(mixed: LocalService) -> None:
    c = client(mixed.url + "/v1")
    chunks = list(
        c.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": OPEN}],
            max_tokens=24,
            stream=True,
        )
    )
    assert {ch.model for ch in chunks} == {"smollm2"}
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices).strip()


def test_tokens_are_counted_per_model(mixed: LocalService) -> None:
    import httpx

    c = client(mixed.url + "/v1")
    ask(c, OPEN, max_tokens=8)
    metrics = httpx.get(mixed.url + "/metrics", timeout=30).text
    models = set(re.findall(r'acr_model_tokens_total\{[^}]*model="([^"]+)"', metrics))
    assert {"acr-bundled", "smollm2"} <= models


async def test_killing_one_of_two_servers_under_load_fails_no_request() -> None:
    a, b = cpp_server(), cpp_server()
    try:
        cfg = load_config(env={})
        cfg.backends = [
            BackendConfig(name="a", kind="openai", base_url=a.base_url),
            BackendConfig(name="b", kind="openai", base_url=b.base_url),
        ]
        with served(build_runtime(cfg)) as url:
            served_by, failures = await _load_with_a_kill(url, a)
            named = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=60)
            with pytest.raises(openai.APIStatusError) as refused:
                ask(named, OPEN, model="a", max_tokens=8)
    finally:
        a.stop()
        b.stop()
    assert failures == []
    before, after = served_by
    assert set(before) == {"a", "b"}, "equal servers share the load"
    assert after and set(after) == {"b"}
    assert refused.value.status_code == 503
    assert refused.value.response.headers.get("retry-after")


async def _load_with_a_kill(
    url: str, victim: LlamaServer
) -> tuple[tuple[list[str], list[str]], list[str]]:
    """Four clients ask in a loop; after 8 answers ``victim`` is killed, and the clients go on
    until 16 requests sent after the kill are answered (those in flight at the kill must be
    answered too). Returns (models of requests sent before the kill, after), and the
    failures."""
    c = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)
    before: list[str] = []
    after: list[str] = []
    failures: list[str] = []
    killed = asyncio.Event()

    async def one_client(i: int) -> None:
        while len(after) < 16:
            late = killed.is_set()  # sent after the kill: only b may answer it
            try:
                r = await c.chat.completions.create(
                    model="auto",
                    messages=[{"role": "user", "content": f"{OPEN} ({i})"}],
                    max_tokens=16,
                )
            except openai.APIError as err:
                failures.append(repr(err))
                continue
            (after if late else before).append(r.model)
            if len(before) >= 8 and not killed.is_set():
                victim.kill()
                killed.set()

    await asyncio.wait_for(asyncio.gather(*(one_client(i) for i in range(4))), timeout=300)
    return (before, after), failures
