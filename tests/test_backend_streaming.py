"""Token streaming: ``TransformersBackend.stream`` over the continuous batcher, the incremental
text decoding it uses, and (integration) the same stream through a Ray Serve replica."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.base import BackendError, ChatMessage, Completion, GenerationRequest, StreamDelta
from backends.decoding import TextStream
from backends.transformers_backend import TransformersBackend
from tests.tiny_model import build_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def backend(checkpoint: Path) -> Iterator[TransformersBackend]:
    b = TransformersBackend.from_pretrained(checkpoint, device="cpu", batching="continuous")
    yield b
    if b._continuous is not None:
        b._continuous.close()


async def _collect(
    backend: TransformersBackend, req: GenerationRequest
) -> tuple[list[str], Completion, int]:
    """(text deltas, the final completion, prompt tokens) of one stream."""
    texts: list[str] = []
    final: StreamDelta | None = None
    async for delta in backend.stream(req):
        assert final is None, "nothing may follow the completion"
        if delta.completion is not None:
            final = delta
        else:
            texts.append(delta.text)
    assert final is not None and final.completion is not None
    return texts, final.completion, final.prompt_tokens


@pytest.mark.parametrize(
    "req",
    [
        GenerationRequest(prompt="9", max_tokens=40),
        # "5555555555555nnn...": the two-character stop spans tokens and starts with a
        # character the text repeats, so its possible start must be held back each step.
        GenerationRequest(prompt="5", max_tokens=40, stop=["5n"]),
        GenerationRequest(prompt="5", max_tokens=7),
        GenerationRequest(prompt="12+3=", max_tokens=30, temperature=1.0, seed=3, logprobs=True),
    ],
    ids=["greedy", "stop-string", "max-tokens", "seeded-sample"],
)
async def test_streamed_deltas_concatenate_to_exactly_the_generated_completion(
    backend: TransformersBackend, req: GenerationRequest
) -> None:
    want = (await backend.generate(req)).completions[0]
    texts, got, prompt_tokens = await _collect(backend, req)
    assert "".join(texts) == got.text == want.text
    assert got == want
    assert prompt_tokens == len(backend.tokenizer(req.prompt or "")["input_ids"])
    assert all(texts), "no empty text deltas"


async def test_a_stop_string_is_never_streamed_even_in_part(backend: TransformersBackend) -> None:
    req = GenerationRequest(prompt="5", max_tokens=40, stop=["5n"])
    texts, got, _ = await _collect(backend, req)
    assert got.finish_reason == "stop"
    assert got.text and "n" not in "".join(texts)
    # Each prefix of the stream was a prefix of the cut text all along.
    sent = ""
    for t in texts:
        sent += t
        assert got.text.startswith(sent)


async def test_deltas_arrive_one_by_one_while_the_answer_is_still_decoding(
    backend: TransformersBackend,
) -> None:
    req = GenerationRequest(prompt="1+1=", max_tokens=200)
    t0 = time.perf_counter()
    stamps: list[tuple[float, int, bool]] = []
    async for delta in backend.stream(req):
        assert backend._continuous is not None
        stamps.append(
            (time.perf_counter() - t0, backend._continuous.steps, delta.completion is None)
        )
    texts = [s for s in stamps if s[2]]
    end_s = stamps[-1][0]
    assert len(texts) > 10
    first_s, first_steps, _ = texts[0]
    # The first piece came when a sliver of the 200 steps had run, well before the end.
    assert first_steps < 100
    assert first_s < end_s / 2


async def test_closing_a_stream_early_stops_its_decode_steps(backend: TransformersBackend) -> None:
    stream = backend.stream(GenerationRequest(prompt="1+1=", max_tokens=250))
    for _ in range(3):
        delta = await anext(stream)
        assert delta.text
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.sleep(0.05)
    batcher = backend._continuous
    assert batcher is not None
    assert batcher.live_rows() == 0
    steps = batcher.steps
    await asyncio.sleep(0.05)
    assert batcher.steps == steps < 250
    # The worker still serves.
    res = await backend.generate(GenerationRequest(prompt="7", max_tokens=4))
    assert res.completions[0].tokens == 4


async def test_a_stream_of_several_samples_is_refused(backend: TransformersBackend) -> None:
    with pytest.raises(BackendError, match="n=1") as err:
        await anext(backend.stream(GenerationRequest(prompt="7", n=2, max_tokens=4)))
    assert err.value.retryable is False


async def test_static_batching_streams_the_whole_completion_as_one_delta(
    checkpoint: Path,
) -> None:
    static = TransformersBackend.from_pretrained(checkpoint, device="cpu", batching="static")
    req = GenerationRequest(prompt="9", max_tokens=20)
    deltas = [d async for d in static.stream(req)]
    want = static.generate_batch_sync([req])[0].completions[0]
    assert [d.text for d in deltas] == [want.text, ""]
    assert deltas[-1].completion == want
    assert static._continuous is None


# -- incremental text decoding -----------------------------------------------------------------


class _ByteTokenizer:
    """Token ids are UTF-8 bytes; a partial multi-byte sequence decodes to U+FFFD."""

    clean_up_tokenization_spaces = False

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def _feed(stream: TextStream, text: str) -> list[str]:
    return [stream.push([b]) for b in text.encode()]


def test_a_partial_utf8_character_is_held_back_until_it_is_whole() -> None:
    stream = TextStream(_ByteTokenizer(), [])  # type: ignore[arg-type]
    pieces = _feed(stream, "aé€b")
    assert pieces == ["a", "", "é", "", "", "€", "b"]
    assert "\ufffd" not in "".join(pieces)
    assert stream.finish("aé€b") == ""


def test_text_that_may_start_a_stop_string_waits_for_the_next_token() -> None:
    stream = TextStream(_ByteTokenizer(), ["END"])  # type: ignore[arg-type]
    pieces = _feed(stream, "xEyENEND tail")
    # "E" and "EN" are held until they turn out not to start "END"; nothing past it is sent.
    assert "".join(pieces) == "xEyEN"
    assert stream.finish("xEyEN") == ""


def test_the_rest_of_the_final_text_comes_with_finish() -> None:
    stream = TextStream(_ByteTokenizer(), ["END"])  # type: ignore[arg-type]
    assert "".join(_feed(stream, "abcEN")) == "abc"
    assert stream.finish("abcEN") == "EN"  # max_tokens cut it before a stop could complete


# -- through Ray Serve -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def serve_handle() -> Iterator[Any]:
    """One ``ModelReplica`` of the bundled model on a fresh local Ray (0.5 CPU)."""
    import logging
    import os

    import ray
    from ray import serve

    from router.config import ModelConfig
    from router.serving.app import ModelReplica

    if ray.is_initialized():
        pytest.skip("Ray is already running in this process")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        # No HTTP proxy: the test talks to the replica through its handle only.
        serve.start(proxy_location="Disabled")
        replica: Any = ModelReplica
        app = replica.options(ray_actor_options={"num_cpus": 0.5}).bind(
            ModelConfig(num_cpus=0.5, device="cpu").model_dump()
        )
        handle = serve.run(app, name="acr-stream-test", route_prefix=None, blocking=False)
        yield handle
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.full
async def test_a_serve_replica_streams_text_deltas_and_the_completion(serve_handle: Any) -> None:
    from router.serving.handle import ServeHandleBackend

    backend = ServeHandleBackend(serve_handle, "acr-bundled")
    chat = [ChatMessage(role="user", content="12+30")]
    req = GenerationRequest(messages=chat, max_tokens=40, logprobs=True)
    deltas = [d async for d in backend.stream(req)]
    final = deltas[-1].completion
    assert final is not None and deltas[-1].prompt_tokens > 0
    assert "".join(d.text for d in deltas) == final.text
    assert final.tokens > 1 and len(deltas) > 2
    assert final.token_margins is not None and len(final.token_margins) == final.tokens
    assert final == (await backend.generate(req)).completions[0]
    with pytest.raises(BackendError) as err:
        await anext(backend.stream(GenerationRequest(prompt="7", n=2, max_tokens=4)))
    assert err.value.retryable is False
    # Leaving early cancels the replica's call without an error on this side.
    early = backend.stream(req)
    assert (await anext(early)).text
    await early.aclose()  # type: ignore[attr-defined]
    assert (await backend.generate(req)).completions[0] == final
