"""Reward models as verifiers: a local transformers checkpoint, and one served over HTTP with
vLLM's ``/classify`` API; task profiles that use one can then choose among candidates."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from backends.verifiers.http_reward import HTTPRewardVerifier
from backends.verifiers.reward_model import RewardModelVerifier
from policies.base import Problem
from policies.best_of_n import BestOfN
from policies.budget import Budget
from tasks.profiles import TaskProfiles
from tests.fakes import FakeBackend
from tests.tiny_model import build_tiny_reward_model

CANDIDATES = ["a short poem", "a longer poem about the sea", "zzz", "the sea is wide"]


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory: pytest.TempPathFactory) -> RewardModelVerifier:
    path = build_tiny_reward_model(tmp_path_factory.mktemp("rm"))
    return RewardModelVerifier.from_pretrained(path)


def _classify_app(rm: RewardModelVerifier) -> FastAPI:
    """A server speaking vLLM's /classify API with a real (tiny) model behind it."""
    app = FastAPI()

    @app.post("/classify")
    async def classify(body: dict) -> dict:  # type: ignore[type-arg]
        scores = rm._scores(list(body["input"]))
        return {"data": [{"index": i, "probs": [1 - s, s]} for i, s in enumerate(scores)]}

    return app


@pytest.fixture(scope="module")
def served_url(reward_model: RewardModelVerifier) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(
        uvicorn.Config(_classify_app(reward_model), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/classify"
    server.should_exit = True
    thread.join(timeout=5)


def test_a_local_reward_model_scores_one_batch_like_one_by_one(
    reward_model: RewardModelVerifier,
) -> None:
    batch = asyncio.run(reward_model.score_many("Write a poem.", CANDIDATES))
    singles = [reward_model.score("Write a poem.", c) for c in CANDIDATES]
    assert batch == pytest.approx(singles, abs=1e-5)
    assert all(0.0 <= s <= 1.0 for s in batch) and len(set(batch)) > 1
    assert not reward_model.exact


def test_a_served_reward_model_gives_the_local_models_scores(
    reward_model: RewardModelVerifier, served_url: str
) -> None:
    served = HTTPRewardVerifier(served_url, "tiny-rm")
    got = asyncio.run(served.score_many("Write a poem.", CANDIDATES))
    want = asyncio.run(reward_model.score_many("Write a poem.", CANDIDATES))
    assert got == pytest.approx(want, abs=1e-5)


def test_an_unreachable_reward_model_is_a_verifier_error_without_its_address() -> None:
    from backends.verifiers.base import VerifierError

    served = HTTPRewardVerifier("http://127.0.0.1:9/classify", "tiny-rm", timeout_s=1)
    with pytest.raises(VerifierError) as info:
        asyncio.run(served.score_many("q", ["a"]))
    assert "127.0.0.1" not in str(info.value)


def test_with_a_reward_model_open_prompts_become_selectable_and_best_of_n_keeps_its_best(
    reward_model: RewardModelVerifier,
) -> None:
    profiles = TaskProfiles(reward_model=reward_model, model="any")
    task = profiles.match("Write a poem about the sea.")
    assert task.kind == "open" and task.verifier is reward_model and task.selectable
    assert not TaskProfiles(model="any").match("Write a poem about the sea.").selectable

    backend = FakeBackend.canned(CANDIDATES)
    problem = Problem(text="Write a poem about the sea.", prompt="Write a poem.", task=task)
    res = asyncio.run(BestOfN().run(problem, backend, Budget(samples=4), 1e12))
    scores = asyncio.run(reward_model.score_many(problem.text, CANDIDATES))
    assert res.text == CANDIDATES[max(range(4), key=lambda i: scores[i])]
    assert res.score == pytest.approx(max(scores), abs=1e-5)


def test_a_missing_reward_model_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a directory"):
        RewardModelVerifier.from_pretrained(tmp_path / "nope")
