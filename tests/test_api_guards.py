"""The HTTP layer's guards in-process (ASGI, scripted backend): the latency budget header,
API keys that are not ASCII, metric labels of made-up paths, the body limit on chunked
bodies, and request models and an OpenAPI schema bounded by the configured limits.
``tests/test_hostile_inputs.py`` sends the same requests to the real deployment."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from router.config import AppConfig, load_config
from router.http.request_models import request_models
from router.metrics import OTHER_ENDPOINT, endpoint_label
from router.serving.runtime import build_runtime
from tests.fakes import FakeBackend

CHAT = {"messages": [{"role": "user", "content": "What is 2+3?"}]}
HEADER = b"x-acr-latency-budget-ms"


def _app(config: AppConfig | None = None) -> Any:
    cfg = config or load_config(env={})
    backend = FakeBackend(lambda prompt, i, req: "2+3=5\nAnswer: 5")
    return build_runtime(cfg, backend=backend).http_app


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.mark.parametrize(
    "value",
    [b"\xb2", b"\xb9\xb2\xb3", "١٢".encode(), "１２".encode(), b"9" * 5000, b"0", b"+5", b" 12"],
)
async def test_a_latency_header_that_is_not_ascii_digits_in_range_is_a_400(value: bytes) -> None:
    async with _client(_app()) as client:
        r = await client.post("/v1/route", json=CHAT, headers=[(HEADER, value)])
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_header" and err["param"] == HEADER.decode()


async def test_a_valid_latency_header_sets_the_budget() -> None:
    async with _client(_app()) as client:
        r = await client.post("/v1/route", json=CHAT, headers=[(HEADER, b"1500")])
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("header", "value", "status"),
    [
        (b"authorization", "Bearer clé-ü".encode(), 200),
        (b"x-api-key", "clé-ü".encode(), 200),
        (b"authorization", b"Bearer cl\xe9-\xfc", 401),  # the same text, in latin-1 bytes
        (b"authorization", b"Bearer \xb2\xff", 401),
        (b"authorization", "Bearer 🔑".encode(), 401),
        (b"authorization", b"Bearer ascii-only", 401),
    ],
)
async def test_api_keys_are_compared_as_bytes_whatever_their_characters(
    header: bytes, value: bytes, status: int
) -> None:
    cfg = load_config(env={})
    cfg.auth.api_keys = ["clé-ü"]
    async with _client(_app(cfg)) as client:
        r = await client.post("/v1/route", json=CHAT, headers=[(header, value)])
    assert r.status_code == status, r.text


def test_only_the_api_s_routes_are_endpoint_labels() -> None:
    routes = {"/v1/route", "/v1/chat/completions"}
    assert endpoint_label("/v1/route", routes) == "/v1/route"
    for path in ("/v1/x", "/v1/route/", "/admin", "/v1/%C2%B2", ""):
        assert endpoint_label(path, routes) == OTHER_ENDPOINT


async def test_made_up_paths_do_not_grow_the_metric_labels() -> None:
    cfg = load_config(env={})
    cfg.auth.api_keys = ["k"]
    app = _app(cfg)
    async with _client(app) as client:
        for i in range(40):
            await client.get(f"/v1/x-{i}")  # unauthenticated: a 401
            await client.get(f"/y-{i}", headers={"authorization": "Bearer k"})
            await client.post(f"/v1/route/{i}", json=CHAT, headers={"authorization": "Bearer k"})
        await client.post("/v1/route", json=CHAT, headers={"authorization": "Bearer k"})
        text = (await client.get("/metrics")).text
    labels = set(re.findall(r'endpoint="([^"]*)"', text))
    assert labels == {"/v1/route", OTHER_ENDPOINT}, labels


def _chunked(total: int, size: int = 65_536) -> AsyncIterator[bytes]:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "'
        for start in range(0, total, size):
            yield b"a" * min(size, total - start)
        yield b'"}]}'

    return body()


JSON = {"content-type": "application/json"}


async def test_a_chunked_body_past_the_limit_gets_a_413_envelope() -> None:
    cfg = load_config(env={})
    cfg.server.max_body_bytes = 10_000
    async with _client(_app(cfg)) as client:
        r = await client.post("/v1/chat/completions", content=_chunked(20_000), headers=JSON)
        small = await client.post("/v1/chat/completions", content=_chunked(50, 7), headers=JSON)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "body_too_large"
    assert "transfer-encoding" not in r.request.headers or "content-length" not in r.request.headers
    assert small.status_code == 200, small.text


async def test_an_unreadable_content_length_is_a_400() -> None:
    async with _client(_app()) as client:
        request = client.build_request("POST", "/v1/route", json=CHAT)
        request.headers["content-length"] = "1e3"
        r = await client.send(request)
    assert r.status_code == 400 and r.json()["error"]["param"] == "content-length"


def _small_limits() -> AppConfig:
    cfg = load_config(env={})
    lim = cfg.limits
    lim.max_n, lim.max_tokens, lim.max_messages = 3, 40, 5
    lim.max_message_chars, lim.max_prompt_chars = 70, 90
    lim.max_stop, lim.max_stop_chars = 2, 6
    lim.max_samples, lim.max_search_width = 5, 6
    cfg.server.max_request_timeout_ms = 45_000
    return cfg


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref") or next((a["$ref"] for a in node.get("anyOf", []) if "$ref" in a), None)
    return schema["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else node


def _branch(node: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(a for a in node.get("anyOf", [node]) if a.get("type") == kind)


async def test_the_published_schema_states_the_configured_bounds() -> None:
    async with _client(_app(_small_limits())) as client:
        schema = (await client.get("/openapi.json")).json()
    comps = schema["components"]["schemas"]
    chat = comps["ChatCompletionRequest"]["properties"]
    assert _branch(chat["n"], "integer")["maximum"] == 3
    assert _branch(chat["max_tokens"], "integer")["maximum"] == 40
    assert _branch(chat["max_completion_tokens"], "integer")["maximum"] == 40
    assert chat["messages"]["maxItems"] == 5 and chat["messages"]["minItems"] == 1
    assert "90 characters" in chat["messages"]["description"]
    assert _branch(chat["stop"], "array")["maxItems"] == 2
    assert _branch(chat["stop"], "string") == {"type": "string", "minLength": 1, "maxLength": 6}
    assert _branch(chat["seed"], "integer")["maximum"] == 2**63 - 1
    message = comps["InMessage"]["properties"]
    assert _branch(message["content"], "string")["maxLength"] == 70
    assert comps["TextPart"]["properties"]["text"]["maxLength"] == 70
    options = _resolve(schema, chat["acr"])["properties"]
    assert _branch(options["timeout_ms"], "integer")["maximum"] == 45_000
    assert "beam_search" in _branch(options["strategy"], "string")["enum"]
    budget = _resolve(schema, options["budget"])["properties"]
    assert _branch(budget["samples"], "integer")["maximum"] == 5
    assert _branch(budget["beam_width"], "integer")["maximum"] == 6
    assert _branch(budget["max_tokens"], "integer")["maximum"] == 40
    prompt = comps["CompletionRequest"]["properties"]["prompt"]
    assert _branch(prompt, "string")["maxLength"] == 90
    assert _branch(prompt, "array")["maxItems"] == 3
    post = schema["paths"]["/v1/chat/completions"]["post"]
    assert "422" not in post["responses"] and {"400", "413"} <= set(post["responses"])
    assert post["parameters"][0]["schema"]["maximum"] == 3_600_000


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("n", 4, "n"),
        ("max_tokens", 41, "max_tokens"),
        ("stop", ["a", "b", "c"], "stop"),
        ("stop", "abcdefg", "stop"),
        ("messages", [{"role": "user", "content": "x" * 71}], "messages.0.content"),
        ("messages", [{"role": "user", "content": "x"}] * 6, "messages"),
        ("acr", {"budget": {"samples": 6}}, "acr.budget.samples"),
        ("acr", {"budget": {"beam_width": 7}}, "acr.budget.beam_width"),
        ("acr", {"timeout_ms": 45_001}, "acr.timeout_ms"),
        ("acr", {"strategy": "dfs"}, "acr.strategy"),
    ],
)
async def test_what_the_schema_bounds_is_refused_with_a_400_naming_the_field(
    field: str, value: Any, param: str
) -> None:
    models = request_models(_small_limits(), ["acr-bundled"])
    body = {**CHAT, field: value}
    with pytest.raises(ValueError):
        models.chat(**body)
    async with _client(_app(_small_limits())) as client:
        r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text


async def test_a_request_at_every_bound_is_served() -> None:
    body = {
        "messages": [{"role": "system", "content": "s" * 5}] * 4
        + [{"role": "user", "content": "What is 2+3?" + " " * 58}],
        "n": 3,
        "max_tokens": 40,
        "stop": ["xxxxxx", "y"],
        "seed": 2**63 - 1,
        "acr": {"strategy": "self_consistency", "budget": {"samples": 5}, "timeout_ms": 45_000},
    }
    async with _client(_app(_small_limits())) as client:
        r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 3


@pytest.mark.parametrize(
    "field",
    [
        {"frequency_penalty": 0.5},
        {"logit_bias": {"50256": -100}},
        {"top_k": 5},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"response_format": {"type": "json_object"}},
    ],
)
async def test_a_field_the_bundled_backend_cannot_honour_is_refused_by_name(
    field: dict[str, object],
) -> None:
    body = {"messages": [{"role": "user", "content": "What is 2+3?"}], **field}
    async with _client(_app(_small_limits())) as client:
        r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == next(iter(field)), r.text


async def test_prompts_times_n_share_the_bound_of_n_in_completions() -> None:
    cfg = load_config(env={})
    cap = cfg.limits.max_n
    async with _client(_app(cfg)) as client:
        ok = await client.post("/v1/completions", json={"prompt": ["2+3?"] * cap, "n": 1})
        over = await client.post("/v1/completions", json={"prompt": ["2+3?"] * cap, "n": 2})
    assert ok.status_code == 200, ok.text
    assert over.status_code == 400, over.text
    assert over.json()["error"]["param"] == "n"
