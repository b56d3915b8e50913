"""Per-key limits: reservations in a real redis-server, settled however a request ends,
and this replica's own counts when Redis is down.

The HTTP tests run the bundled model in process behind the real API (uvicorn on a free
port) and call it with the official ``openai`` client.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from redis.asyncio import Redis

from backends.base import Backend, BackendError, GenerationRequest, GenerationResult, StreamDelta
from backends.batching import MicroBatcher
from router.config import AppConfig, load_config
from router.quota.limiter import WINDOW_S, RateLimiter
from router.quota.local import LocalWindows
from router.serving.embedded_redis import EmbeddedRedis, free_port
from router.serving.runtime import Runtime, build_runtime
from tests.fakes import FakeBackend
from tests.router_http import served

NOW = 7_000_020.0  # 20 s into a window: no test straddles two


def limiter(client: Redis | None, rpm: int = 0, tpm: int = 0, **kw: Any) -> RateLimiter:
    kw.setdefault("clock", lambda: NOW)
    return RateLimiter(client, prefix="t", requests_per_minute=rpm, tokens_per_minute=tpm, **kw)


# -- the limiter against a real redis-server --------------------------------------------------


async def test_requests_over_the_per_minute_limit_are_refused_until_the_next_window(
    redis_url: str,
) -> None:
    now = {"t": NOW}
    client = Redis.from_url(redis_url)
    lim = limiter(client, rpm=3, clock=lambda: now["t"])
    verdicts = [await lim.reserve("k1", 0) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert verdicts[-1].limit == "requests_per_minute"
    assert 1 <= verdicts[-1].retry_after_s <= 60
    assert (await lim.reserve("k2", 0)).allowed, "limits are per key"
    now["t"] += WINDOW_S
    assert (await lim.reserve("k1", 0)).allowed
    await client.aclose()


async def test_concurrent_reservations_never_hold_more_than_the_token_limit(
    redis_url: str,
) -> None:
    clients = [Redis.from_url(redis_url) for _ in range(4)]  # four replicas
    lims = [limiter(c, tpm=100) for c in clients]
    verdicts = await asyncio.gather(*(lims[i % 4].reserve("k", 30) for i in range(40)))
    assert sum(v.allowed for v in verdicts) == 3, "100 tokens hold three requests of 30"
    refused = [v for v in verdicts if not v.allowed]
    assert {v.limit for v in refused} == {"tokens_per_minute"}
    counts = await lims[0].window_counts("k")
    assert (counts.requests, counts.used, counts.held) == (3, 0, 90)
    for c in clients:
        await c.aclose()


async def test_settling_charges_what_was_spent_and_releases_the_rest(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    lim = limiter(client, tpm=100)
    first = (await lim.reserve("k", 60)).reservation
    assert first is not None
    assert not (await lim.reserve("k", 50)).allowed, "60 held + 50 > 100"
    await lim.settle(first, 25, "ok")
    await lim.settle(first, 25, "ok")  # a second ending of the same request charges nothing
    counts = await lim.window_counts("k")
    assert (counts.used, counts.held) == (25, 0)
    assert (await lim.reserve("k", 70)).allowed, "25 used + 70 fits now"
    assert not (await lim.reserve("k", 10)).allowed
    await client.aclose()


async def test_a_reservation_grows_only_when_it_fits_and_a_refused_one_keeps_its_hold(
    redis_url: str,
) -> None:
    client = Redis.from_url(redis_url)
    lim = limiter(client, tpm=100)
    a = (await lim.reserve("k", 20)).reservation
    b = (await lim.reserve("k", 20)).reservation
    assert a is not None and b is not None
    assert (await lim.resize(a, 70)).allowed, "70 + 20 fits"
    refused = await lim.resize(b, 40)
    assert not refused.allowed and refused.limit == "tokens_per_minute"
    assert (await lim.window_counts("k")).held == 90, "b still holds its 20"
    await lim.settle(b, 5, "refused")
    counts = await lim.window_counts("k")
    assert (counts.used, counts.held) == (5, 70)
    await client.aclose()


async def test_a_request_larger_than_the_whole_limit_runs_only_alone_in_its_window(
    redis_url: str,
) -> None:
    client = Redis.from_url(redis_url)
    lim = limiter(client, tpm=100)
    big = await lim.reserve("k", 500)
    assert big.allowed and big.reservation is not None
    assert not (await lim.reserve("k", 1)).allowed
    await lim.settle(big.reservation, 400, "ok")
    assert not (await lim.reserve("k", 500)).allowed, "the window is spent"
    await client.aclose()


async def test_a_reservation_never_settled_expires_with_its_window(redis_url: str) -> None:
    now = {"t": NOW}
    client = Redis.from_url(redis_url)
    lim = limiter(client, tpm=100, clock=lambda: now["t"])
    assert (await lim.reserve("k", 90)).allowed  # a replica dies holding it
    assert not (await lim.reserve("k", 20)).allowed
    keys = [k async for k in client.scan_iter(match="t:ratelimit:*")]
    assert keys
    ttls = [await client.ttl(k) for k in keys]
    window_end = (int(NOW // WINDOW_S) + 1) * WINDOW_S - NOW
    assert all(window_end < ttl <= window_end + WINDOW_S for ttl in ttls), ttls
    now["t"] += WINDOW_S
    assert (await lim.reserve("k", 90)).allowed
    await client.aclose()


async def test_with_redis_stopped_the_local_limiter_still_refuses_past_the_limit() -> None:
    server = EmbeddedRedis().start()
    client = Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    lim = limiter(client, rpm=0, tpm=100)
    before = (await lim.reserve("k", 40)).reservation  # held in Redis, running on
    assert before is not None and before.store == "redis"
    server.stop()
    try:
        first = await lim.reserve("k", 40)
        assert first.allowed and first.degraded and first.reservation is not None
        assert first.reservation.store == "local"
        grown = await lim.resize(before, 50)  # its hold moves here whole
        assert grown.allowed and grown.degraded and before.store == "local"
        refused = await lim.reserve("k", 40)
        assert not refused.allowed and refused.degraded, "40 + 50 held here, 40 more > 100"
        assert refused.limit == "tokens_per_minute"
        await lim.settle(first.reservation, 40, "ok")
        await lim.settle(before, 30, "ok")
        counts = lim.local.windows[("k", int(NOW // WINDOW_S))]
        assert (counts.used, counts.held) == (70, 0)
        assert (await lim.reserve("k", 30)).allowed
        assert not (await lim.reserve("k", 1)).allowed
        degraded = lim.metrics.registry.get_sample_value(
            "acr_rate_limit_degraded_total", {"operation": "reserve"}
        )
        assert degraded is not None and degraded >= 4
    finally:
        await client.aclose()
        server.cleanup()


async def test_no_redis_configured_still_enforces_the_limits_in_process() -> None:
    lim = limiter(None, rpm=2)
    verdicts = [await lim.reserve("k", 0) for _ in range(3)]
    assert [v.allowed for v in verdicts] == [True, True, False]
    assert not any(v.degraded for v in verdicts), "no Redis is a configuration, not an outage"


def test_local_windows_forget_windows_older_than_the_previous_one() -> None:
    local = LocalWindows()
    for w in range(10):
        local.reserve(f"k{w}", w, 0, 100, 10)
    assert {w for _, w in local.windows} == {8, 9}


async def test_a_dead_redis_at_start_is_answered_locally_and_reported_degraded() -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    lim = limiter(client, rpm=1)
    first, second = await lim.reserve("k", 0), await lim.reserve("k", 0)
    assert first.allowed and first.degraded
    assert not second.allowed and second.degraded, "the limit holds, not fails open"
    await client.aclose()


# -- key ids ----------------------------------------------------------------------------------


async def test_without_auth_every_caller_shares_one_bucket_whatever_bearer_it_sends(
    redis_url: str,
) -> None:
    cfg = load_config(env={})
    cfg.redis.url = redis_url
    cfg.auth.requests_per_minute = 2
    rt = build_runtime(cfg, backend=FakeBackend(lambda p, i, r: "Answer: 24"))
    chat = {"messages": [{"role": "user", "content": "4 9 10 13"}], "reasoning_effort": "low"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=rt.http_app), base_url="http://t"
    ) as client:
        codes = [
            (await client.post("/v1/chat/completions", json=chat, headers=h)).status_code
            for h in ({"authorization": "Bearer a"}, {"authorization": "Bearer b"}, {})
        ]
    assert codes == [200, 200, 429]


async def test_with_auth_each_accepted_key_has_its_own_bucket(redis_url: str) -> None:
    cfg = load_config(env={})
    cfg.redis.url = redis_url
    cfg.auth.api_keys = ["key-a", "key-b"]
    cfg.auth.requests_per_minute = 1
    rt = build_runtime(cfg, backend=FakeBackend(lambda p, i, r: "Answer: 24"))
    chat = {"messages": [{"role": "user", "content": "4 9 10 13"}], "reasoning_effort": "low"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=rt.http_app), base_url="http://t"
    ) as client:
        codes = [
            (
                await client.post(
                    "/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {k}"}
                )
            ).status_code
            for k in ("key-a", "key-b", "key-a")
        ]
    assert codes == [200, 200, 429]


# -- through the HTTP API, the bundled model in process ---------------------------------------

KEY = "sk-acr-test-1"
KEY_ID = hashlib.sha256(KEY.encode()).hexdigest()[:12]  # the id the API derives from a key
WINDOW = int(NOW // WINDOW_S)


class CountingModel:
    """The bundled model as ``MicroBatcher`` drives it, with the test's own account of what
    it generated and read. ``delay_s`` slows every batch; after ``fail_after`` requests it
    fails like a model server that went away."""

    def __init__(self, model: Any, *, delay_s: float = 0.0, fail_after: int | None = None):
        self.model = model
        self.name = model.name
        self.delay_s = delay_s
        self.fail_after = fail_after
        self.requests = 0
        self.generated = 0
        self.prompt_read = 0

    def generate_batch_sync(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        self.requests += len(requests)
        if self.fail_after is not None and self.requests > self.fail_after:
            raise BackendError("the model server went away")
        time.sleep(self.delay_s)
        results: list[GenerationResult] = self.model.generate_batch_sync(requests)
        self.generated += sum(r.completion_tokens for r in results)
        self.prompt_read += sum(r.prompt_tokens for r in results)
        return results

    def render_chat_sync(self, messages: Any) -> str:
        return str(self.model.render_chat_sync(messages))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


class SlowStreaming(MicroBatcher):
    """The bundled model streaming its answer one character every ``pause_s``."""

    pause_s = 0.05

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        result = await self.generate(request)
        comp = result.completions[0]
        for ch in comp.text:
            await asyncio.sleep(self.pause_s)
            yield StreamDelta(text=ch)
        yield StreamDelta(completion=comp, prompt_tokens=result.prompt_tokens)


@pytest.fixture(scope="module")
def bundled() -> Any:
    """The bundled model loaded once (each test batches it on its own event loop)."""
    from router.commands.bench import load_model

    return load_model(None, "cpu", 1, name="acr-bundled").model  # type: ignore[attr-defined]


def runtime(backend: Backend, redis_url: str, tokens_per_minute: int) -> Runtime:
    cfg: AppConfig = load_config(env={})
    cfg.model.name = "acr-bundled"
    cfg.redis.url = redis_url
    cfg.auth.api_keys = [KEY]
    cfg.auth.tokens_per_minute = tokens_per_minute
    rt = build_runtime(cfg, backend=backend)
    assert rt.service.quota.limiter is not None
    rt.service.quota.limiter.clock = lambda: NOW  # one window for the whole test
    return rt


@contextmanager
def serving(rt: Runtime) -> Iterator[AsyncOpenAI]:
    """``rt``'s API on a free port (uvicorn in a thread) and an official client for it."""
    with served(rt) as url:
        yield AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60)


async def counts_of(rt: Runtime) -> Any:
    """The test key's window as Redis holds it, read by a limiter of the test's own."""
    client = Redis.from_url(rt.config.redis.url or "")
    reader = RateLimiter(
        client, prefix=rt.config.redis.key_prefix, requests_per_minute=0, tokens_per_minute=0
    )
    try:
        return await reader.window_counts(KEY_ID, WINDOW)
    finally:
        await client.aclose()


async def settled(rt: Runtime, timeout_s: float = 15.0) -> Any:
    """The window once nothing is held any more (the server settles after it answers)."""
    deadline = time.monotonic() + timeout_s
    while (counts := await counts_of(rt)).held and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return counts


def most_one_request_holds(answer: dict[str, Any]) -> int:
    """What a served request held: n=1 run of its strategy at its caps, its probe, and its
    prompt (``request_token_ceiling`` of the decision in its ``router`` object)."""
    from policies.bounds import request_token_ceiling
    from policies.budget import Budget

    r = answer["router"]
    ceiling = request_token_ceiling(
        r["strategy"], Budget(**r["budget"]), 1, None, r["probe_tokens"]
    )
    return ceiling + answer["usage"]["prompt_tokens"]


async def test_sixteen_concurrent_requests_overrun_the_token_limit_by_at_most_one_request(
    bundled: Any, redis_url: str
) -> None:
    model = CountingModel(bundled)
    limit = 700  # holds a few requests at once (each may spend about 230 tokens)
    rt = runtime(MicroBatcher(model), redis_url, limit)
    puzzles = [
        f"<24> {a} {b} {c} {d}"
        for a, b, c, d in zip(
            range(1, 17), [3, 4, 5, 6] * 4, [7, 8, 9, 10] * 4, [11, 12, 13, 13] * 4, strict=True
        )
    ]

    async def ask(client: AsyncOpenAI, puzzle: str) -> Any:
        try:
            return await client.chat.completions.create(
                model="acr-bundled", messages=[{"role": "user", "content": puzzle}]
            )
        except openai.RateLimitError as refused:
            return refused

    with serving(rt) as client:
        outcomes = await asyncio.gather(*(ask(client, p) for p in puzzles))
    answers = [o.model_dump() for o in outcomes if not isinstance(o, openai.RateLimitError)]
    refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    assert answers and refused, "the limit must admit some of the burst and refuse the rest"
    assert all(1 <= int(e.response.headers["retry-after"]) <= WINDOW_S for e in refused)
    counts = await settled(rt)
    assert counts.held == 0, "every reservation was settled"
    assert counts.used <= limit + max(most_one_request_holds(a) for a in answers)
    assert counts.used >= sum(a["usage"]["total_tokens"] for a in answers)
    assert counts.used >= model.generated, "every token the model generated was charged"
    assert rt.metrics.registry.get_sample_value(
        "acr_rate_limited_total", {"limit": "tokens_per_minute"}
    ) == len(refused)


async def test_a_request_cut_at_its_deadline_is_charged_at_least_what_the_model_generated(
    bundled: Any, redis_url: str
) -> None:
    model = CountingModel(bundled, delay_s=1.0)
    rt = runtime(MicroBatcher(model), redis_url, 10_000)
    with serving(rt) as client:
        with pytest.raises(openai.APIStatusError) as cut:
            await client.chat.completions.create(
                model="acr-bundled",
                messages=[{"role": "user", "content": "<24> 4 9 10 13"}],
                max_tokens=40,
                reasoning_effort="low",
                extra_body={"acr": {"timeout_ms": 300}},
            )
        assert cut.value.status_code == 408
        deadline = time.monotonic() + 10
        while not model.generated and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the cut-off call still runs to its end
    counts = await settled(rt)
    assert model.generated > 0
    assert counts.held == 0
    assert counts.used >= model.generated + model.prompt_read


async def test_a_request_the_backend_fails_is_charged_what_the_model_generated_for_it(
    bundled: Any, redis_url: str
) -> None:
    model = CountingModel(bundled, fail_after=1)  # the probe runs, then the model is gone
    rt = runtime(MicroBatcher(model), redis_url, 10_000)
    with serving(rt) as client:
        with pytest.raises(openai.APIStatusError) as failed:
            await client.chat.completions.create(
                model="acr-bundled",
                messages=[{"role": "user", "content": "<24> 2 5 7 11"}],
                temperature=0.7,  # not the probe's greedy answer: the strategy must run
            )
    assert failed.value.status_code == 503
    counts = await settled(rt)
    assert model.generated > 0, "the probe ran"
    assert (counts.used, counts.held) == (model.generated + model.prompt_read, 0)


async def test_a_stream_read_to_the_end_is_charged_its_usage(bundled: Any, redis_url: str) -> None:
    rt = runtime(MicroBatcher(CountingModel(bundled)), redis_url, 10_000)
    with serving(rt) as client:
        stream = await client.chat.completions.create(
            model="acr-bundled",
            messages=[{"role": "user", "content": "<calc> 12+7*3"}],
            reasoning_effort="low",
            max_tokens=60,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = [c.usage async for c in stream if c.usage is not None]
    counts = await settled(rt)
    assert len(usage) == 1 and usage[0].total_tokens > 0
    assert (counts.used, counts.held) == (usage[0].total_tokens, 0)


async def test_a_stream_the_client_abandons_is_charged_what_was_sent_not_all_it_held(
    bundled: Any, redis_url: str
) -> None:
    rt = runtime(SlowStreaming(CountingModel(bundled)), redis_url, 10_000)
    lim = rt.service.quota.limiter
    assert lim is not None
    endings: list[tuple[int, int | None, str]] = []
    settle = lim.settle

    async def recorded(reservation: Any, spent: int | None, outcome: str) -> None:
        endings.append((reservation.tokens, spent, outcome))
        await settle(reservation, spent, outcome)

    lim.settle = recorded  # type: ignore[method-assign]
    with serving(rt) as client:
        stream = await client.chat.completions.create(
            model="acr-bundled",
            messages=[{"role": "user", "content": "<24> 1 2 3 4"}],
            reasoning_effort="low",
            max_tokens=60,
            stream=True,
        )
        received = 0
        async for chunk in stream:
            received += bool(chunk.choices and chunk.choices[0].delta.content)
            if received == 3:
                break
        await stream.close()
        counts = await settled(rt)
    assert counts.held == 0, "the abandoned stream's reservation was settled"
    assert len(endings) == 1 and endings[0][2] == "abandoned", endings
    held, spent, _ = endings[0]
    assert spent is not None and received <= spent < held
    assert counts.used == spent


async def test_with_redis_stopped_the_api_still_refuses_a_key_past_its_limit(
    bundled: Any,
) -> None:
    server = EmbeddedRedis().start()
    limit = 500
    rt = runtime(MicroBatcher(CountingModel(bundled)), server.url, limit)
    codes: list[int] = []
    try:
        with serving(rt) as client:

            async def ask(i: int) -> int:
                try:
                    await client.chat.completions.create(
                        model="acr-bundled",
                        messages=[{"role": "user", "content": f"<calc> {i}+{i}*2"}],
                        reasoning_effort="low",
                        max_tokens=40,
                    )
                    return 200
                except openai.APIStatusError as err:
                    return err.status_code

            codes.append(await ask(1))
            server.stop()
            for i in range(2, 40):
                codes.append(await ask(i))
                if codes[-1] == 429:
                    break
    finally:
        server.cleanup()
    assert codes[0] == 200 and codes[-1] == 429, codes
    assert set(codes) <= {200, 429}, "a Redis outage degrades the limits, it does not fail"
    degraded = rt.metrics.registry.get_sample_value(
        "acr_rate_limit_degraded_total", {"operation": "reserve"}
    )
    assert degraded is not None and degraded >= len(codes) - 1


async def test_feedback_counts_against_the_keys_request_limit(bundled: Any, redis_url: str) -> None:
    rt = runtime(MicroBatcher(CountingModel(bundled)), redis_url, 0)
    rt.service.quota.limiter.rpm = 4  # type: ignore[union-attr]
    codes: list[int] = []
    with serving(rt) as client:
        reply = await client.chat.completions.create(
            model="acr-bundled",
            messages=[{"role": "user", "content": "<calc> 2+3*4"}],
            reasoning_effort="low",
            max_tokens=40,
        )
        async with httpx.AsyncClient(base_url=str(client.base_url)) as http:
            for i in range(6):
                r = await http.post(
                    "feedback",
                    json={"id": reply.id if i == 0 else f"chatcmpl-guess-{i}", "reward": 1.0},
                    headers={"authorization": f"Bearer {KEY}"},
                )
                codes.append(r.status_code)
    # one chat request and three feedback calls fill the window of four
    assert codes[0] == 200, codes
    assert codes[1:3] == [404, 404], codes
    assert codes[3:] == [429, 429, 429], codes
