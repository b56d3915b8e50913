"""Continuous batching against a tiny real checkpoint: rows join and leave between decode
steps, and nothing a caller sees may depend on what else shares the batch."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

import backends.continuous_batching as tb_module
from backends.base import GenerationRequest
from backends.transformers_backend import TransformersBackend
from tests.tiny_model import build_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def backend(checkpoint: Path) -> TransformersBackend:
    return TransformersBackend.from_pretrained(checkpoint, device="cpu", batching="continuous")


async def _staggered(
    backend: TransformersBackend, reqs: list[GenerationRequest], gap_s: float
) -> list[list[str]]:
    async def one(i: int, req: GenerationRequest) -> list[str]:
        await asyncio.sleep(i * gap_s)
        return [c.text for c in (await backend.generate(req)).completions]

    return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(reqs))))


async def test_requests_that_join_a_running_batch_get_what_they_would_get_alone(
    backend: TransformersBackend,
) -> None:
    reqs = [
        GenerationRequest(prompt="1+1=", max_tokens=40),
        GenerationRequest(prompt="a much longer prompt: 17*3-2=", max_tokens=30),
        GenerationRequest(prompt="9", max_tokens=5),
        GenerationRequest(prompt="xyz", max_tokens=60),
    ]
    alone = [[c.text for c in backend.generate_batch_sync([r])[0].completions] for r in reqs]
    together = await _staggered(backend, reqs, 0.004)
    assert together == alone
    assert backend._continuous is not None
    # Staggered, they overlapped: fewer steps than decoding them one after another.
    assert backend._continuous.steps < sum(r.max_tokens for r in reqs)
    await backend.close()


async def test_a_seed_reproduces_samples_whatever_joins_the_batch(
    backend: TransformersBackend,
) -> None:
    seeded = GenerationRequest(prompt="12+3=", n=4, max_tokens=20, temperature=1.0, seed=11)
    other = GenerationRequest(prompt="xyz", n=3, max_tokens=9, temperature=1.3, seed=5)
    first = [c.text for c in backend.generate_batch_sync([seeded])[0].completions]
    _, mixed = await _staggered(backend, [other, seeded], 0.002)
    assert mixed == first
    assert len(set(first)) > 1
    await backend.close()


async def test_a_short_request_returns_while_a_longer_one_started_earlier_runs_on(
    backend: TransformersBackend,
) -> None:
    order: list[str] = []

    async def run(tag: str, req: GenerationRequest, delay_s: float) -> int:
        await asyncio.sleep(delay_s)
        res = await backend.generate(req)
        order.append(tag)
        return res.completions[0].tokens

    long_tokens, short_tokens = await asyncio.gather(
        run("long", GenerationRequest(prompt="1+1=", max_tokens=200), 0.0),
        run("short", GenerationRequest(prompt="7", max_tokens=3), 0.01),
    )
    assert (long_tokens, short_tokens) == (200, 3)
    # A static batch would have held the short request until the long one ended.
    assert order == ["short", "long"]
    await backend.close()


async def test_a_cancelled_request_stops_costing_decode_steps(
    backend: TransformersBackend,
) -> None:
    task = asyncio.create_task(backend.generate(GenerationRequest(prompt="5", max_tokens=200)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)
    batcher = backend._continuous
    assert batcher is not None
    steps = batcher.steps
    assert batcher.live_rows() == 0
    assert steps < 200  # it left the batch instead of decoding to max_tokens
    # The worker is still serving.
    res = await backend.generate(GenerationRequest(prompt="7", max_tokens=4))
    assert res.completions[0].tokens == 4
    await backend.close()


async def test_a_failing_decode_step_fails_its_requests_and_the_worker_goes_on(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tb_module.forward
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected forward failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(tb_module, "forward", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        await backend.generate(GenerationRequest(prompt="5", max_tokens=20))
    res = await backend.generate(GenerationRequest(prompt="5", max_tokens=6))
    assert res.completions[0].tokens == 6
    await backend.close()


async def test_bundle_experts_take_turns_in_continuous_batching(tmp_path: Path) -> None:
    build_tiny_checkpoint(tmp_path / "a", seed=0)
    build_tiny_checkpoint(tmp_path / "b", seed=1)
    (tmp_path / "bundle.json").write_text(json.dumps({"default": "a", "routes": {"x": "b"}}))
    bundle = TransformersBackend.from_pretrained(tmp_path, device="cpu")
    assert bundle.describe()["batching"] == "continuous"
    reqs = [GenerationRequest(prompt=p, max_tokens=12) for p in ("x12+3=", "12+3=", "x9-4=")]
    static = [[c.text for c in r.completions] for r in bundle.generate_batch_sync(reqs)]
    assert await _staggered(bundle, reqs, 0.001) == static
    await bundle.close()


async def test_static_batching_still_serves_generate(checkpoint: Path) -> None:
    backend = TransformersBackend.from_pretrained(checkpoint, device="cpu", batching="static")
    req = GenerationRequest(prompt="1+1=", max_tokens=8)
    res = await backend.generate(req)
    assert backend._continuous is None
    assert res.completions[0].text == backend.generate_batch_sync([req])[0].completions[0].text


def test_an_unknown_batching_mode_is_refused_with_the_valid_ones(checkpoint: Path) -> None:
    from backends.base import BackendError

    with pytest.raises(BackendError, match="continuous, static"):
        TransformersBackend.from_pretrained(checkpoint, device="cpu", batching="dynamic")


async def test_rows_that_would_pad_too_much_start_a_cohort_of_their_own(
    checkpoint: Path,
) -> None:
    from backends.continuous_batching import ContinuousBatcher

    backend = TransformersBackend.from_pretrained(checkpoint, device="cpu")
    reqs = [
        GenerationRequest(prompt="1+1=", max_tokens=120),
        GenerationRequest(prompt="7", max_tokens=60),
    ]
    alone = [[c.text for c in backend.generate_batch_sync([r])[0].completions] for r in reqs]
    seen: list[int] = []
    for pad_budget in (0, 10_000):
        backend._continuous = ContinuousBatcher(
            backend.decoder, backend.name, max_pad_row_tokens=pad_budget
        )
        batcher = backend._continuous

        async def watch(b: ContinuousBatcher = batcher) -> None:
            await asyncio.sleep(0.06)
            seen.append(b.cohorts())

        got, _ = await asyncio.gather(_staggered(backend, reqs, 0.03), watch())
        assert got == alone
        await backend.close()
    # No padding allowed: the late request runs beside the first; plenty allowed: it joins.
    assert seen == [2, 1]


def test_a_result_for_a_request_cancelled_meanwhile_is_dropped_quietly(
    backend: TransformersBackend,
) -> None:
    from concurrent.futures import Future

    from backends.continuous_batching import ContinuousBatcher, _fail, _Job

    batcher = ContinuousBatcher(backend.decoder, backend.name)
    fut: Future[Any] = Future()
    job = _Job([1, 2], GenerationRequest(prompt="12", max_tokens=2), backend.model, fut, 0.0)
    fut.cancel()  # the caller's deadline fired between the worker's check and its answer
    batcher._finish(job)
    _fail(job, RuntimeError("late"))
    assert fut.cancelled()


async def test_continuous_batching_reports_the_same_margins_as_a_static_decode(
    backend: TransformersBackend,
) -> None:
    reqs = [
        GenerationRequest(prompt="9", max_tokens=15, logprobs=True),
        GenerationRequest(
            prompt="12+3=", n=3, max_tokens=10, temperature=1.0, seed=2, logprobs=True
        ),
    ]
    static = [backend.generate_batch_sync([r])[0] for r in reqs]
    results = await asyncio.gather(*(backend.generate(r) for r in reqs))
    for got, want in zip(results, static, strict=True):
        for c, w in zip(got.completions, want.completions, strict=True):
            assert c.token_margins is not None and len(c.token_margins) == c.tokens
            assert all(m >= 0 for m in c.token_margins)
            assert c.token_margins == pytest.approx(w.token_margins, abs=1e-5)
    await backend.close()


async def test_a_token_callback_sees_every_token_before_the_result(
    backend: TransformersBackend,
) -> None:
    from backends.continuous_batching import ContinuousBatcher

    batcher = ContinuousBatcher(backend.decoder, backend.name)
    seen: list[int] = []
    prompt = backend.tokenizer("9")["input_ids"]
    req = GenerationRequest(prompt="9", max_tokens=9, logprobs=True)
    fut = batcher.submit(prompt, req, backend.model, on_token=seen.append)
    fut.add_done_callback(lambda _f: seen.append(-1))  # marks when the result arrived
    res = await asyncio.wrap_future(fut)
    text = backend.tokenizer.decode(seen[:-1], skip_special_tokens=True)
    assert seen[-1] == -1 and len(seen) == 10
    assert text == res.completions[0].text
    with pytest.raises(ValueError, match="n == 1"):
        batcher.submit(prompt, req.model_copy(update={"n": 2}), backend.model, on_token=print)
    batcher.close()


async def test_a_token_callback_that_raises_cancels_only_its_own_request(
    backend: TransformersBackend,
) -> None:
    from backends.continuous_batching import ContinuousBatcher

    batcher = ContinuousBatcher(backend.decoder, backend.name)

    def gone(_token: int) -> None:
        raise RuntimeError("event loop is closed")

    prompt = backend.tokenizer("5")["input_ids"]
    other = batcher.submit(prompt, GenerationRequest(prompt="5", max_tokens=30), backend.model)
    bad = batcher.submit(
        prompt, GenerationRequest(prompt="5", max_tokens=30), backend.model, on_token=gone
    )
    res = await asyncio.wrap_future(other)
    assert bad.cancelled()
    assert res.completions[0].tokens == 30
    batcher.close()
