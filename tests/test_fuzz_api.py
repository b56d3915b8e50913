"""Fuzzing of the HTTP API: no generated request may produce a 5xx.

Two layers. Property-based (hypothesis) bodies of wild JSON against the app in-process (ASGI)
over a scripted backend: ten thousand requests in a minute (``ACR_FUZZ_EXAMPLES`` scales
them). And schema-driven (schemathesis) requests generated from the service's own OpenAPI
document, schema-valid and schema-violating, against the real deployment: the router on Ray
Serve with the bundled model and a real redis-server (``ACR_FUZZ_DEPLOYMENT_REQUESTS``,
default 10,000), counted by endpoint and status.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.base import (
    Backend,
    ChatMessage,
    Completion,
    GenerationRequest,
    GenerationResult,
)
from router.config import load_config
from router.serving.embedded_redis import EmbeddedRedis
from router.serving.local import LocalService
from router.serving.runtime import build_runtime
from tests.schema_fuzz import Plan, fuzz
from tests.service_configs import service_config

TOTAL = int(os.environ.get("ACR_FUZZ_EXAMPLES", "10000"))
ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/route", "/v1/feedback"]


class EchoBackend(Backend):
    """Answers every sample with a fixed trace instantly; counts calls."""

    name = "acr-bundled"

    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.calls += 1
        comp = Completion(
            text="1+1=2\nAnswer: 2",
            tokens=min(request.max_tokens, 8),
            finish_reason="stop",
            token_logprobs=[-0.1] * min(request.max_tokens, 8) if request.logprobs else None,
            token_entropies=[0.2] * min(request.max_tokens, 8) if request.logprobs else None,
        )
        return GenerationResult(completions=[comp] * request.n, prompt_tokens=3, model=self.name)

    async def render_chat(self, messages: list[ChatMessage]) -> str:
        return "\n".join(m.content for m in messages) + "\n"


@pytest.fixture(scope="module")
def loop() -> Any:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def client(loop: Any) -> Any:
    cfg = load_config(env={})
    cfg.server.request_timeout_ms = 5_000
    rt = build_runtime(cfg, backend=EchoBackend())
    c = httpx.AsyncClient(transport=httpx.ASGITransport(app=rt.http_app), base_url="http://t")
    yield c
    loop.run_until_complete(c.aclose())


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
field_values = json_values | st.sampled_from(
    [
        0,
        -1,
        1,
        2,
        17,
        256,
        257,
        10**9,
        1e308,
        -0.0,
        0.5,
        2.5,
        "",
        "low",
        "high",
        "auto",
        "max",
        [],
        {},
        [""],
        ["\n"],
        ["a"] * 20,
        "x" * 70,
    ]
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant", "tool", "bot", 3]),
            "content": st.one_of(
                st.text(max_size=60), json_values, st.just([{"type": "text", "text": "4 9 10 13"}])
            ),
        }
    ),
    max_size=4,
)
chat_bodies = st.fixed_dictionaries(
    {"messages": messages | json_values},
    optional={
        k: field_values
        for k in [
            "model",
            "n",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "stop",
            "seed",
            "stream",
            "stream_options",
            "reasoning_effort",
            "logprobs",
            "top_logprobs",
            "user",
            "acr",
            "prompt",
            "id",
            "reward",
        ]
    },
)
acr_bodies = st.fixed_dictionaries(
    {"messages": st.just([{"role": "user", "content": "What is 2+3?"}])},
    optional={
        "acr": st.fixed_dictionaries(
            {},
            optional={
                "strategy": st.sampled_from(
                    [
                        "auto",
                        "single_pass",
                        "bounded_reasoning",
                        "best_of_n",
                        "self_consistency",
                        "beam_search",
                        "dfs",
                        "",
                        7,
                    ]
                ),
                "budget": st.dictionaries(
                    st.sampled_from(
                        [
                            "max_tokens",
                            "samples",
                            "batch_size",
                            "beam_width",
                            "expansions",
                            "max_steps",
                            "temperature",
                            "bogus",
                        ]
                    ),
                    field_values,
                    max_size=4,
                ),
                "latency_budget_ms": field_values,
                "timeout_ms": field_values,
            },
        ),
        "reasoning_effort": st.sampled_from(["low", "medium", "high", "auto", "none", None]),
        "n": st.integers(min_value=-2, max_value=20),
        "stream": st.booleans(),
    },
)
raw_bodies = st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8"))


def _post(loop: Any, client: httpx.AsyncClient, path: str, **kw: Any) -> httpx.Response:
    return loop.run_until_complete(client.post(path, **kw))


def _assert_ok_or_envelope(resp: httpx.Response) -> None:
    assert resp.status_code < 500, (resp.status_code, resp.text[:500])
    if resp.status_code >= 400:
        err = resp.json()["error"]
        assert isinstance(err["message"], str) and err["message"]
        assert set(err) == {"message", "type", "param", "code"}


FUZZ = settings(
    max_examples=max(1, TOTAL // 10),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


@FUZZ
@given(body=chat_bodies, path=st.sampled_from(ENDPOINTS))
def test_structured_bodies_with_wild_field_values_never_get_a_5xx(
    loop: Any, client: httpx.AsyncClient, body: dict[str, Any], path: str
) -> None:
    payload = json.dumps(body, allow_nan=True)
    _assert_ok_or_envelope(
        _post(loop, client, path, content=payload, headers={"content-type": "application/json"})
    )


@settings(FUZZ, max_examples=max(1, TOTAL * 3 // 10))
@given(body=acr_bodies)
def test_router_options_are_validated_or_served_never_a_5xx(
    loop: Any, client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    _assert_ok_or_envelope(_post(loop, client, "/v1/chat/completions", json=body))


@settings(FUZZ, max_examples=max(1, TOTAL * 3 // 10))
@given(body=json_values, path=st.sampled_from(ENDPOINTS))
def test_any_json_document_never_gets_a_5xx(
    loop: Any, client: httpx.AsyncClient, body: Any, path: str
) -> None:
    _assert_ok_or_envelope(_post(loop, client, path, json=body))


@settings(FUZZ, max_examples=max(1, TOTAL * 3 // 10))
@given(body=raw_bodies, path=st.sampled_from(ENDPOINTS))
def test_raw_bytes_invalid_utf8_and_broken_json_never_get_a_5xx(
    loop: Any, client: httpx.AsyncClient, body: bytes, path: str
) -> None:
    resp = _post(loop, client, path, content=body, headers={"content-type": "application/json"})
    _assert_ok_or_envelope(resp)
    assert resp.status_code != 200 or body.strip().startswith(b"{")


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, 1e309], ids=["nan", "inf", "-inf", "overflow"]
)
def test_non_finite_numbers_are_rejected_with_a_400(
    loop: Any, client: httpx.AsyncClient, value: float
) -> None:
    body = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}], "temperature": value}, allow_nan=True
    )
    if value == 1e309:
        body = body.replace("Infinity", "1e309")
    resp = _post(
        loop,
        client,
        "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400, resp.text
    assert "temperature" in resp.json()["error"]["message"]


def test_an_oversized_body_gets_a_413(loop: Any, client: httpx.AsyncClient) -> None:
    big = b'{"messages": [{"role": "user", "content": "' + b"a" * 2_000_000 + b'"}]}'
    resp = _post(
        loop,
        client,
        "/v1/chat/completions",
        content=big,
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "body_too_large"


DEPLOYMENT_REQUESTS = int(os.environ.get("ACR_FUZZ_DEPLOYMENT_REQUESTS", "10000"))
CHAT_PATH = "/v1/chat/completions"
#: each operation's share of the requests, by generation mode (schema-valid or not)
SHARES: dict[tuple[str, str, str], float] = {
    ("POST", CHAT_PATH, "positive"): 0.37,
    ("POST", CHAT_PATH, "negative"): 0.08,
    ("POST", "/v1/responses", "positive"): 0.07,
    ("POST", "/v1/responses", "negative"): 0.02,
    ("GET", "/v1/responses/{response_id}", "positive"): 0.005,
    ("DELETE", "/v1/responses/{response_id}", "positive"): 0.005,
    ("GET", "/v1/responses/{response_id}/input_items", "positive"): 0.005,
    ("POST", "/v1/completions", "positive"): 0.15,
    ("POST", "/v1/completions", "negative"): 0.05,
    ("POST", "/v1/route", "positive"): 0.10,
    ("POST", "/v1/route", "negative"): 0.05,
    ("POST", "/v1/feedback", "positive"): 0.03,
    ("POST", "/v1/feedback", "negative"): 0.02,
    ("GET", "/v1/models", "positive"): 0.02,
    ("GET", "/healthz", "positive"): 0.01,
    ("GET", "/readyz", "positive"): 0.01,
    ("GET", "/metrics", "positive"): 0.01,
}


def _plan(total: int) -> Plan:
    plan = {key: max(1, round(share * total)) for key, share in SHARES.items()}
    plan[("POST", CHAT_PATH, "positive")] += total - sum(plan.values())
    return plan


@pytest.fixture(scope="module")
def deployment(redis_server: EmbeddedRedis) -> Iterator[LocalService]:
    """The bundled model's router on Ray Serve with small limits and budgets."""
    cfg = service_config(redis_server.url, "acr:outcomes:fuzz", small_limits=True)
    svc = LocalService(cfg).start()
    yield svc
    svc.stop()


@pytest.mark.full
@pytest.mark.timeout(1800)  # ten thousand requests: about 8 minutes on 2 idle cores
def test_schema_generated_requests_to_the_real_deployment_never_get_a_5xx(
    deployment: LocalService,
) -> None:
    report = fuzz(deployment.url, _plan(DEPLOYMENT_REQUESTS))
    print("\n" + report.summary())
    assert len(report.sent) >= DEPLOYMENT_REQUESTS * 0.99, report.summary()
    server_errors = [o for o in report.sent if o.status >= 500]
    assert not server_errors, server_errors[:5]
    bad = [o for o in report.sent if o.status >= 400 and not o.envelope]
    assert not bad, bad[:5]
    # The schema states the real bounds: most schema-valid chat requests are served.
    chat = report.count(CHAT_PATH, "positive")
    assert chat["2xx"] >= 0.5 * sum(chat.values()), report.summary()
    # Requests the schema forbids are refused, never served.
    for path in (CHAT_PATH, "/v1/completions", "/v1/route", "/v1/responses"):
        refused = report.count(path, "negative")
        assert refused["4xx"] >= 0.9 * sum(refused.values()), report.summary()
    labels = set(re.findall(r'endpoint="([^"]*)"', httpx.get(deployment.url + "/metrics").text))
    assert labels <= {CHAT_PATH, "/v1/completions", "/v1/route", "/v1/feedback", "/v1/models",
                      "/v1/responses", "other"}, labels  # fmt: skip
