"""Several backends behind one router (``backends``), in process over scripted backends: the
model list, a named backend, the pool's choice by task profile and price, failover, refusals,
per-model accounting and the config's checks. The real servers' pools are in
``test_pool_servers.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from backends.base import GenerationRequest
from policies.base import StrategyError
from router.config import AppConfig, BackendConfig, load_config
from router.serving.runtime import Runtime, build_runtime
from tests.fakes import FakeBackend

PUZZLE = "4 9 10 13"
OPEN = "Write a haiku about the sea."
SOLUTION = "13-9=4 (left: 4 4 10)\n10-4=6 (left: 4 6)\n4*6=24 (left: 24)\nAnswer: (13-9)*(10-4)"


def scripted(name: str) -> FakeBackend:
    """A backend that signs its answers with its name (game24 steps for a puzzle)."""

    def script(prompt: str, i: int, req: GenerationRequest) -> str:
        return SOLUTION if PUZZLE in prompt else f"{name} says hello"

    backend = FakeBackend(script)
    backend.name = name
    return backend


def pool_config(*backends: BackendConfig, pool_id: str = "auto") -> AppConfig:
    cfg = load_config(env={})
    cfg.backends = list(backends)
    cfg.pool.id = pool_id
    return AppConfig.model_validate(cfg.model_dump())


def openai_member(name: str, **fields: Any) -> BackendConfig:
    return BackendConfig(name=name, kind="openai", base_url="http://127.0.0.1:9/v1", **fields)


@pytest.fixture
async def two() -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """A pool of a game24 specialist (``small``) and a general model (``large``)."""
    cfg = pool_config(
        openai_member("small", profiles=["game24"], price_per_1k_completion_tokens=0.5),
        openai_member("large", price_per_1k_completion_tokens=4.0),
    )
    rt = build_runtime(cfg, backends={"small": scripted("small"), "large": scripted("large")})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=rt.http_app), base_url="http://t"
    ) as c:
        yield c, rt


async def chat(client: httpx.AsyncClient, text: str, **body: Any) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": text}], **body}
    )


async def test_the_model_list_names_every_backend_and_the_pool(
    two: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = two
    ids = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
    assert ids == ["small", "large", "auto"]


async def test_a_request_naming_a_backend_runs_there_and_says_so(
    two: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = two
    r = await chat(client, PUZZLE, model="large")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "large" and r.headers["x-acr-model"] == "large"
    assert body["router"]["model"] == "large"
    assert "named in request" in body["router"]["model_reason"]


async def test_the_pool_sends_a_prompt_only_where_its_task_profile_may_go(
    two: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = two
    r = await chat(client, OPEN, model="auto")
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "large"
    assert r.json()["choices"][0]["message"]["content"] == "large says hello"
    assert "the only backend up" in r.json()["router"]["model_reason"]


async def test_the_pool_prefers_the_cheaper_backend_when_both_predict_the_same_success(
    two: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = two
    r = await chat(client, PUZZLE)  # no model: the pool chooses
    assert r.status_code == 200, r.text
    router = r.json()["router"]
    assert router["model"] == "small", router
    assert "best utility" in router["model_reason"] and "large" in router["model_reason"]


async def test_a_pool_request_fails_over_to_the_next_backend_when_one_is_down(
    two: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, rt = two
    small = rt.backends["small"]
    assert isinstance(small, FakeBackend)
    small.fail_next = 1000
    r = await chat(client, PUZZLE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "large"
    assert "failed over from small" in body["router"]["model_reason"]
    assert body["choices"][0]["message"]["content"].endswith("Answer: (13-9)*(10-4)")


async def test_a_request_naming_a_down_backend_gets_a_503_not_another_model(
    two: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, rt = two
    large = rt.backends["large"]
    assert isinstance(large, FakeBackend)
    large.fail_next = 1000
    r = await chat(client, OPEN, model="large")
    assert r.status_code == 503, r.text
    assert "retry-after" in r.headers
    assert r.json()["error"]["code"] == "backend_unavailable"


async def test_a_model_outside_the_pool_is_a_404_listing_the_pool(
    two: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = two
    r = await chat(client, PUZZLE, model="gpt-9")
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert "small" in message and "large" in message and "auto" in message


async def test_a_prompt_no_backend_may_serve_is_a_400_naming_the_profiles() -> None:
    cfg = pool_config(
        openai_member("a", profiles=["game24"]), openai_member("b", profiles=["game24"])
    )
    rt = build_runtime(cfg, backends={"a": scripted("a"), "b": scripted("b")})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=rt.http_app), base_url="http://t"
    ) as client:
        r = await chat(client, OPEN)
        named = await chat(client, OPEN, model="b")
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert "'open'" in r.json()["error"]["message"] and "game24" in r.json()["error"]["message"]
    assert named.status_code == 400


async def test_tokens_and_cost_are_counted_per_model_and_key(
    two: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = two
    first = (await chat(client, PUZZLE, model="small")).json()
    second = (await chat(client, OPEN, model="large")).json()
    metrics = (await client.get("/metrics")).text

    def value(name: str, model: str, kind: str | None = None) -> float:
        wanted = [f'model="{model}"', 'key="anonymous"', *([f'kind="{kind}"'] if kind else [])]
        for line in metrics.splitlines():
            if line.startswith(name + "{") and all(w in line for w in wanted):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} for {model} missing")

    small_tokens = first["usage"]["completion_tokens"]
    large_tokens = second["usage"]["completion_tokens"]
    assert value("acr_model_tokens_total", "small", "completion") == small_tokens
    assert value("acr_model_tokens_total", "large", "completion") == large_tokens
    large_prompt = second["usage"]["prompt_tokens"]
    assert value("acr_model_tokens_total", "large", "prompt") == large_prompt
    assert value("acr_model_cost_total", "small") == pytest.approx(small_tokens * 0.5 / 1000)
    assert value("acr_model_cost_total", "large") == pytest.approx(large_tokens * 4.0 / 1000)


async def test_route_and_text_completions_go_through_the_pool_too(
    two: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = two
    route = await client.post("/v1/route", json={"messages": [{"role": "user", "content": OPEN}]})
    assert route.status_code == 200, route.text
    assert route.json()["router"]["model"] == "large"
    text = await client.post("/v1/completions", json={"prompt": [PUZZLE, OPEN], "max_tokens": 64})
    assert text.status_code == 200, text.text
    assert [c["text"] for c in text.json()["choices"]][1] == "large says hello"


async def test_a_pool_route_is_the_ranked_decision_of_the_chosen_model(
    two: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = two
    route = await client.post("/v1/route", json={"messages": [{"role": "user", "content": PUZZLE}]})
    assert route.status_code == 200, route.text
    router = route.json()["router"]
    assert router["model"] == "small"
    # the decision the ranking priced is the one returned: its arm and P are in the reason
    assert f"({router['arm']} P=" in router["model_reason"]


async def test_a_backend_whose_policy_refuses_what_the_request_forces_is_left_out(
    two: tuple[httpx.AsyncClient, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, rt = two
    small = next(m for m in rt.service.members if m.name == "small")  # type: ignore[attr-defined]

    async def refuses(*args: Any, **kwargs: Any) -> Any:
        raise StrategyError("strategy 'beam_search' cannot run on small")

    monkeypatch.setattr(small.service.policy, "decide", refuses)
    r = await chat(client, PUZZLE, max_tokens=64)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "large"
    monkeypatch.setattr(
        next(m for m in rt.service.members if m.name == "large").service.policy,  # type: ignore[attr-defined]
        "decide",
        refuses,
    )
    refused = await chat(client, PUZZLE, max_tokens=64)
    assert refused.status_code == 400, refused.text
    assert "cannot run on small" in refused.json()["error"]["message"]


def test_a_single_model_config_is_a_pool_of_one() -> None:
    cfg = load_config(env={})
    assert [b.name for b in cfg.pool_backends()] == [cfg.model.name]
    rt = build_runtime(cfg, backend=scripted(cfg.model.name))
    assert rt.service.models() == [cfg.model.name]


def test_the_config_refuses_duplicate_names_a_pool_id_clash_and_unknown_profiles() -> None:
    with pytest.raises(ValidationError, match="distinct names"):
        pool_config(openai_member("a"), openai_member("a"))
    with pytest.raises(ValidationError, match="also a backend's name"):
        pool_config(openai_member("a"), pool_id="a")
    with pytest.raises(ValidationError, match="unknown task profiles \\['chess'\\]"):
        pool_config(openai_member("a", profiles=["chess"]))


async def test_feedback_reaches_the_backend_that_served_the_response(
    two: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = two
    answer = (await chat(client, OPEN)).json()
    assert answer["model"] == "large"  # the second backend: the first does not know the id
    first = await client.post("/v1/feedback", json={"id": answer["id"], "reward": 1.0})
    again = await client.post("/v1/feedback", json={"id": answer["id"], "reward": 1.0})
    unknown = await client.post("/v1/feedback", json={"id": "chatcmpl-nope", "reward": 1.0})
    assert first.status_code == 200, first.text
    assert again.status_code == 409 and unknown.status_code == 404
