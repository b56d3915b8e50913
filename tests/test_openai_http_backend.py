"""The OpenAI-compatible HTTP backend against scripted servers (``httpx.MockTransport``):
discovery, request shapes, logprob parsing, fan-out, errors without URLs, the breaker
(with an injected clock), streaming and readiness. ``tests/test_llama_backend.py`` runs the
same backend against a real llama.cpp server.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import httpx
import pytest

from backends.base import BackendError, ChatMessage, GenerationRequest
from backends.breaker import CircuitBreaker
from backends.openai_discovery import SPEED_MESSAGES, SPEED_TOKENS
from backends.openai_http import OpenAIHTTPBackend
from backends.openai_parse import margin, split_total, token_stats

BASE = "http://upstream.internal:8000/v1"
Q = [ChatMessage(role="user", content="q")]


class FakeServer:
    """A scripted OpenAI-compatible server: each choice's text is ``t<seed>-<i>``."""

    def __init__(self, **kw: Any) -> None:
        self.native_n = kw.get("native_n", True)
        self.usage = kw.get("usage", True)
        self.template = kw.get("template")  # None, "apply-template" or "tokenize"
        self.down = kw.get("down", False)
        self.fail: dict[int, int] = kw.get("fail", {})  # seed -> status
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.in_flight = self.max_in_flight = 0
        self.gate: asyncio.Event | None = None
        self.slots: int | None = kw.get("slots")  # llama.cpp's /props total_slots

    async def __call__(self, req: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused")
        body = json.loads(req.content) if req.content else {}
        self.requests.append((req.url.path, body))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            if self.gate is not None:
                await self.gate.wait()
            return self.answer(req.url.path, body)
        finally:
            self.in_flight -= 1

    def answer(self, path: str, body: dict[str, Any]) -> httpx.Response:
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        if path == "/props" and self.slots is not None:
            return httpx.Response(200, json={"total_slots": self.slots})
        if path in ("/v1/chat/completions", "/v1/completions"):
            if self.slots is not None and body.get("n", 1) > self.slots:
                return httpx.Response(400, json={"error": {"message": "n past the slots"}})
            if body.get("seed") in self.fail:
                return httpx.Response(self.fail[body["seed"]], json={"error": {"message": "x"}})
            return httpx.Response(200, json=self.completion(path, body))
        if path == "/apply-template" and self.template == "apply-template":
            return httpx.Response(200, json={"prompt": f"<s>{body['messages'][0]['content']}|"})
        if path == "/tokenize" and self.template == "tokenize":
            if "messages" in body:
                return httpx.Response(200, json={"tokens": [1, 7, 8]})
            return httpx.Response(
                200, json={"tokens": [1, 5] if body["add_special_tokens"] else [5]}
            )
        if path == "/detokenize" and self.template == "tokenize":
            return httpx.Response(
                200, json={"prompt": "".join(f"<{t}>" for t in body["tokens"]) + "Hi"}
            )
        return httpx.Response(404, json={"detail": "Not Found"})

    def completion(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        chat = path.endswith("chat/completions")
        n = body.get("n", 1) if self.native_n else 1
        choices = []
        for i in range(n):
            text = f"t{body.get('seed')}-{i}" + "x" * i
            choice: dict[str, Any] = {"index": i, "finish_reason": "length" if i else "stop"}
            choice.update({"message": {"content": text}} if chat else {"text": text})
            tops = [{"a": -0.1, "b": -2.5}, {"c": -0.7, "d": -0.7}][: 1 + i % 2]
            if chat and body.get("logprobs") and "top_logprobs" in body:
                content = [
                    {
                        "logprob": v,
                        "top_logprobs": [{"token": k, "logprob": x} for k, x in t.items()],
                    }
                    for t in tops
                    for v in [max(t.values())]
                ]
                choice["logprobs"] = {"content": content}
            elif not chat and body.get("logprobs"):
                choice["logprobs"] = {
                    "token_logprobs": [max(t.values()) for t in tops],
                    "top_logprobs": tops,
                }
            choices.append(choice)
        data: dict[str, Any] = {"model": body.get("model"), "choices": choices}
        if self.usage:
            data["usage"] = {"prompt_tokens": 9, "completion_tokens": 3 * n}
        return data

    def calls(self, path: str) -> list[dict[str, Any]]:
        return [b for p, b in self.requests if p == path]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def backend(server: Any, **kw: Any) -> OpenAIHTTPBackend:
    client = httpx.AsyncClient(transport=httpx.MockTransport(server))
    return OpenAIHTTPBackend(BASE, "m", client=client, **kw)


async def test_discovery_finds_a_server_that_ignores_n_and_its_logprobs_on_both_endpoints() -> None:
    server = FakeServer(native_n=False)
    be = backend(server)
    await be.start()
    caps = be.capabilities
    assert (caps.native_n, caps.logprobs, caps.completions) == (False, True, True)
    assert (caps.chat_template, caps.exact_token_counts, caps.max_concurrency) == (False, True, 4)
    n_probe = server.calls("/v1/chat/completions")[0]
    assert n_probe["n"] == 2 and n_probe["temperature"] == 1.0 and n_probe["max_tokens"] <= 2
    # Capability probes are a token or two; only the timed speed probes (logprob cost,
    # parallel slots) generate SPEED_TOKENS, on their own prompt.
    probes = [b for p, b in server.requests if "completions" in p]
    speed = [b for b in probes if b.get("messages") == SPEED_MESSAGES]
    assert all(b["max_tokens"] <= 2 for b in probes if b not in speed)
    assert speed and all(b["max_tokens"] == SPEED_TOKENS for b in speed)


async def test_discovery_finds_native_n_and_a_tokenize_template_and_strips_the_added_bos() -> None:
    server = FakeServer(template="tokenize")
    be = backend(server)
    await be.start()
    assert be.capabilities.native_n and be.capabilities.chat_template
    assert await be.render_chat(Q) == "<7><8>Hi"  # BOS id 1 dropped: the server adds it
    assert server.calls("/detokenize")[-1]["tokens"] == [7, 8]


async def test_an_apply_template_endpoint_is_found_and_renders_chat() -> None:
    be = backend(FakeServer(template="apply-template"))
    await be.start()
    assert be.capabilities.continuations
    assert await be.render_chat(Q) == "<s>q|"


async def test_declared_capabilities_are_not_probed_and_override_discovery() -> None:
    server = FakeServer()
    be = backend(server, declared={"native_n": False, "logprobs": False, "max_concurrency": 2})
    await be.start()
    assert not be.capabilities.native_n and be.capabilities.max_concurrency == 2
    assert not any(b.get("n") == 2 or b.get("logprobs") for _, b in server.requests)
    with pytest.raises(ValueError, match="unknown capabilities"):
        backend(server, declared={"batching": True})


async def test_an_unreachable_server_gets_conservative_capabilities_and_is_rediscovered() -> None:
    server, clock = FakeServer(down=True), Clock()
    be = backend(server, breaker=CircuitBreaker(threshold=10, clock=clock))
    await be.start()  # must not raise
    assert not (be.capabilities.native_n or be.capabilities.completions)
    server.down = False
    await be.generate(GenerationRequest(prompt="x"))  # too soon to probe again
    assert not server.calls("/v1/models")
    clock.t += 6
    await be.generate(GenerationRequest(prompt="x"))
    assert be.capabilities.native_n and be.capabilities.completions


async def test_a_native_multi_choice_raw_prompt_splits_usage_by_logprob_counts() -> None:
    server = FakeServer()
    be = backend(server, declared={"native_n": True})
    req = GenerationRequest(prompt="hi", n=2, max_tokens=5, temperature=0.7, stop=["\n"], seed=3)
    res = await be.generate(req.model_copy(update={"logprobs": True}))
    body = server.calls("/v1/completions")[-1]
    assert (body["n"], body["stop"], body["seed"], body["logprobs"]) == (2, ["\n"], 3, 5)
    assert body["model"] == "m" and body["prompt"] == "hi"
    assert [c.text for c in res.completions] == ["t3-0", "t3-1x"]
    assert [c.tokens for c in res.completions] == [2, 4]  # usage 6 split 1:2
    assert [c.finish_reason for c in res.completions] == ["stop", "length"]
    second = res.completions[1]
    assert second.token_margins == pytest.approx([2.4, 0.0])
    assert second.token_entropies is not None and second.token_entropies[1] == pytest.approx(
        math.log(2)
    )
    assert res.prompt_tokens == 9 and res.model == "m"


async def test_chat_asks_logprobs_with_top_logprobs_and_splits_usage_evenly_without() -> None:
    server = FakeServer(usage=True)
    be = backend(server, declared={"native_n": True}, served_name="upstream-id")
    res = await be.generate(GenerationRequest(messages=Q, n=3, logprobs=True))
    body = server.calls("/v1/chat/completions")[-1]
    assert (body["logprobs"], body["top_logprobs"], body["model"]) == (True, 5, "upstream-id")
    assert res.completions[0].token_logprobs == [-0.1] and res.model == "m"
    res = await be.generate(GenerationRequest(messages=Q, n=3))  # no logprobs: 9 tokens / 3
    assert [c.tokens for c in res.completions] == [3, 3, 3]


async def test_fan_out_sends_n_single_calls_with_seed_plus_i_at_most_max_concurrency() -> None:
    server = FakeServer(native_n=False)
    be = backend(server, max_concurrency=2, extra_body={"repeat_penalty": 1.0, "n": 99})
    await be.start()
    server.requests.clear()
    res = await be.generate(GenerationRequest(messages=Q, n=5, temperature=0.8, seed=40))
    bodies = server.calls("/v1/chat/completions")
    assert sorted(b["seed"] for b in bodies) == [40, 41, 42, 43, 44]
    assert all(b["n"] == 1 and b["repeat_penalty"] == 1.0 for b in bodies)
    assert server.max_in_flight == 2
    assert [c.text for c in res.completions] == [f"t{s}-0" for s in range(40, 45)]
    assert res.prompt_tokens == 9 and res.completion_tokens == 15


async def test_more_choices_than_llama_cpp_slots_are_split_over_calls_a_slot_count_apart() -> None:
    server = FakeServer(slots=3)
    be = backend(server)
    await be.start()
    assert be.capabilities.max_n == 3 and be.capabilities.native_n
    server.requests.clear()
    res = await be.generate(GenerationRequest(messages=Q, n=8, temperature=0.8, seed=40))
    bodies = server.calls("/v1/chat/completions")
    assert sorted((b["seed"], b["n"]) for b in bodies) == [(40, 3), (43, 3), (46, 2)]
    assert len(res.completions) == 8
    server.requests.clear()
    await be.generate(GenerationRequest(messages=Q, n=3, temperature=0.8, seed=1))
    assert [b["n"] for b in server.calls("/v1/chat/completions")] == [3]


async def test_fan_out_without_a_seed_draws_distinct_seeds_and_greedy_sends_none() -> None:
    server = FakeServer(native_n=False)
    be = backend(server, declared={"native_n": False})
    await be.start()
    server.requests.clear()
    await be.generate(GenerationRequest(prompt="p", n=4, temperature=1.0))
    seeds = [b.get("seed") for b in server.calls("/v1/completions")]
    assert None not in seeds and len(set(seeds)) == 4
    server.requests.clear()
    await be.generate(GenerationRequest(prompt="p", n=2, temperature=0.0))
    assert [b.get("seed") for b in server.calls("/v1/completions")] == [None, None]


async def test_a_partial_fan_out_failure_returns_the_completions_that_came_back() -> None:
    server = FakeServer(native_n=False, fail={11: 503, 13: 500})
    be = backend(server, declared={"native_n": False})
    res = await be.generate(GenerationRequest(prompt="p", n=4, temperature=1, seed=10))
    assert [c.text for c in res.completions] == ["t10-0", "t12-0"]
    assert res.timings_ms["fanout_failed"] == 2


async def test_a_fan_out_where_every_call_fails_raises_and_a_refusal_is_not_retryable() -> None:
    be = backend(FakeServer(fail={1: 503, 2: 503}), declared={"native_n": False})
    with pytest.raises(BackendError, match="all 2 sampling calls failed") as err:
        await be.generate(GenerationRequest(prompt="p", n=2, temperature=1, seed=1))
    assert err.value.retryable
    be = backend(FakeServer(fail={1: 503, 2: 400}), declared={"native_n": False})
    with pytest.raises(BackendError) as err:
        await be.generate(GenerationRequest(prompt="p", n=2, temperature=1, seed=1))
    assert not err.value.retryable


@pytest.mark.parametrize(
    ("status", "retryable", "fragment"),
    [
        (400, False, "refused the request (400): prompt too long at"),
        (503, True, "failed (503)"),
        (429, True, "refused the request (429)"),
    ],
)
async def test_http_errors_map_to_backend_errors_that_never_name_the_server(
    status: int, retryable: bool, fragment: str
) -> None:
    detail = f"prompt too long at {BASE}/completions " + "y" * 400

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status, json={"error": {"message": detail}}, headers={"retry-after": "7"}
        )

    with pytest.raises(BackendError) as err:
        await backend(handler, declared={}).generate(GenerationRequest(prompt="x"))
    message = str(err.value)
    assert err.value.retryable is retryable and fragment in message
    assert "upstream.internal" not in message and len(message) < 260
    assert err.value.retry_after_s == (7.0 if status == 429 else None)


@pytest.mark.parametrize("exc", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")])
async def test_unanswered_calls_are_retryable_without_the_url(exc: Exception) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise type(exc)(f"{exc} for {req.url}")

    with pytest.raises(BackendError) as err:
        await backend(handler).generate(GenerationRequest(prompt="x"))
    assert err.value.retryable and "upstream.internal" not in str(err.value)


async def test_the_open_breaker_reports_the_real_remaining_cooldown_rounded_up() -> None:
    server, clock = FakeServer(down=True), Clock()
    be = backend(server, breaker=CircuitBreaker(threshold=2, cooldown_s=10, clock=clock))
    await be.start()
    for _ in range(2):
        with pytest.raises(BackendError, match="unreachable"):
            await be.generate(GenerationRequest(prompt="x"))
    for elapsed, expected in [(0.0, 10), (2.5, 8), (9.2, 1)]:
        clock.t += elapsed - (clock.t - be.breaker.opened_at)  # type: ignore[operator]
        with pytest.raises(BackendError, match="unavailable") as err:
            await be.generate(GenerationRequest(prompt="x"))
        assert err.value.retryable and err.value.retry_after_s == expected
    assert await be.ready() == "model server failing (2 consecutive errors); retrying in 1 s"


async def test_after_the_cooldown_one_probe_passes_others_wait_and_its_success_closes() -> None:
    server, clock = FakeServer(down=True), Clock()
    be = backend(
        server,
        breaker=CircuitBreaker(threshold=1, cooldown_s=5, clock=clock),
        declared={"native_n": True},
    )
    with pytest.raises(BackendError):
        await be.generate(GenerationRequest(prompt="x"))
    server.down, server.gate, clock.t = False, asyncio.Event(), clock.t + 5
    probe = asyncio.create_task(be.generate(GenerationRequest(prompt="x", seed=1)))
    await asyncio.sleep(0.05)
    with pytest.raises(BackendError) as err:  # the probe is still out
        await asyncio.wait_for(be.generate(GenerationRequest(prompt="x")), 2)
    assert err.value.retry_after_s == 1.0
    server.gate.set()
    assert (await asyncio.wait_for(probe, 2)).completions[0].text == "t1-0"
    assert be.breaker.state == "closed"
    await be.generate(GenerationRequest(prompt="x"))  # flows again at once


async def test_a_failed_probe_reopens_for_a_full_cooldown_and_a_cancelled_one_frees_the_slot() -> (
    None
):
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown_s=5, clock=clock)
    for _ in range(3):
        breaker.record(False)
    clock.t += 5
    assert breaker.check() is True and not breaker.allow()
    breaker.release(True)  # cancelled without a verdict
    assert breaker.check() is True
    breaker.record(False)
    assert breaker.state == "open" and breaker.retry_after_s() == 5


async def test_ready_asks_the_server_unless_a_call_just_succeeded_and_names_no_url() -> None:
    server, clock = FakeServer(), Clock()
    be = backend(server, breaker=CircuitBreaker(clock=clock))
    assert await be.ready() is None and server.calls("/v1/models")
    await be.generate(GenerationRequest(prompt="x"))
    server.down, server.requests = True, []
    assert await be.ready() is None  # a call succeeded a moment ago: no health request
    clock.t += 6
    reason = await be.ready()
    assert reason == "model server unreachable (ConnectError)"


def sse(events: list[dict[str, Any]], done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(e)}\n\n" for e in events] + (["data: [DONE]\n\n"] if done else [])
    return (": ping\n\n" + "".join(lines)).encode()


async def test_streaming_yields_deltas_then_the_completion_counted_by_usage_or_chunks() -> None:
    chunks = (
        [{"choices": [{"delta": {"role": "assistant"}}]}]
        + [
            {"choices": [{"delta": {"content": t}, "finish_reason": None}]}
            for t in ("Pa", "ris", "!")
        ]
        + [{"choices": [{"delta": {}, "finish_reason": "length"}]}]
    )
    bodies = [
        sse(chunks),
        sse([*chunks, {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}]),
    ]
    sent: list[dict[str, Any]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        body = json.loads(req.content or b"{}")
        if not body.get("stream"):
            return httpx.Response(404)  # discovery finds nothing else here
        sent.append(body)
        return httpx.Response(200, content=bodies[len(sent) - 1])

    be = backend(handler)
    for expected_tokens, expected_prompt in [(3, 0), (2, 4)]:
        deltas = [d async for d in be.stream(GenerationRequest(messages=Q))]
        assert [d.text for d in deltas[:-1]] == ["Pa", "ris", "!"]
        final = deltas[-1].completion
        assert final is not None and final.text == "Paris!" and final.finish_reason == "length"
        assert (final.tokens, deltas[-1].prompt_tokens) == (expected_tokens, expected_prompt)
    assert sent[0]["stream"] is True and sent[0]["stream_options"] == {"include_usage": True}


async def test_a_stream_cut_off_midway_is_a_retryable_error() -> None:
    body = sse([{"choices": [{"delta": {"content": "a"}}]}, {"error": {"message": "oom"}}])
    be = backend(lambda req: httpx.Response(200, content=body), declared={"native_n": True})
    with pytest.raises(BackendError, match="mid-stream: oom") as err:
        _ = [d async for d in be.stream(GenerationRequest(prompt="x"))]
    assert err.value.retryable


async def test_render_chat_without_any_template_names_model_tokenizer_path() -> None:
    be = backend(FakeServer())
    await be.start()
    assert not be.capabilities.chat_template and not be.capabilities.continuations
    with pytest.raises(BackendError, match=r"model\.tokenizer_path") as err:
        await be.render_chat(Q)
    assert not err.value.retryable and be.count_tokens("abc") is None


class StubTemplate:
    """Stands in for ``ChatTemplate``: a BOS-adding tokenizer of one token per character."""

    source, bos_token, adds_bos = "/models/secret.gguf", "<s>", True

    def render(self, messages: list[dict[str, str]]) -> str:
        if not messages[0]["content"]:
            raise ValueError("the chat template of /models/secret.gguf rejected the messages")
        return "<s>" + "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"

    def count_tokens(self, text: str, add_special_tokens: bool = True) -> int:
        return len(text) + int(add_special_tokens)


async def test_a_local_template_renders_without_a_second_bos_and_counts_tokens() -> None:
    server = FakeServer(usage=False)
    be = backend(server, template=StubTemplate(), declared={"native_n": True})  # type: ignore[arg-type]
    assert await be.render_chat(Q) == "[user]q[assistant]"
    assert be.count_tokens("abc") == 4
    assert be.capabilities.chat_template and be.capabilities.exact_token_counts
    res = await be.generate(GenerationRequest(prompt="abc", n=2))  # no usage: local counts
    assert [c.text for c in res.completions] == ["tNone-0", "tNone-1x"]
    assert [c.tokens for c in res.completions] == [7, 8] and res.prompt_tokens == 4
    with pytest.raises(BackendError) as err:
        await be.render_chat([ChatMessage(role="user", content="")])
    assert not err.value.retryable and "secret" not in str(err.value)


def test_token_statistics_from_both_logprob_shapes() -> None:
    legacy = token_stats({"token_logprobs": [None, -0.2], "top_logprobs": [None, {"a": -0.2}]})
    assert legacy is not None and legacy.logprobs == [-0.2]
    assert legacy.margins[0] == pytest.approx(-0.2 - math.log(1 - math.exp(-0.2)))
    assert token_stats({"content": None}) is not None and token_stats(None) is None
    assert margin([-0.0]) == 30.0 and margin([-1.0, -3.0, -2.0][:2]) == 2.0
    assert split_total(10, [1, 1, 1]) == [4, 3, 3] and split_total(6, [0, 0]) == [3, 3]
