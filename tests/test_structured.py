"""Structured requests (tools, JSON output) as tasks, and how an OpenAI-compatible backend
reads tool calls, logprobs and errors, with scripted servers (the real ones are in
``test_conformance.py``)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from backends.base import BackendError, ChatMessage, GenerationRequest
from backends.openai_http import OpenAIHTTPBackend
from backends.openai_parse import client_logprobs, completions_from
from backends.openai_stream import StreamAccumulator
from policies.base import Candidate, Problem
from policies.best_of_n import BestOfN
from policies.budget import Budget
from policies.common import vote
from tasks.structured import (
    JsonSchemaVerifier,
    ToolCallVerifier,
    structured_task,
)
from tests.fakes import FakeBackend

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def call(name: str, args: str) -> dict[str, Any]:
    return {"id": "c", "type": "function", "function": {"name": name, "arguments": args}}


def test_a_request_with_tools_or_a_json_format_is_a_structured_task_whatever_its_text() -> None:
    tools = structured_task({"tools": [WEATHER]})
    json_task = structured_task({"response_format": {"type": "json_object"}})
    assert tools is not None and tools.kind == "tool_call" and tools.structured
    assert json_task is not None and json_task.kind == "json" and json_task.structured
    assert structured_task({"tools": [WEATHER], "tool_choice": "none"}) is None
    assert structured_task({"response_format": {"type": "text"}}) is None
    assert structured_task({"presence_penalty": 1.0}) is None


def test_equal_json_and_equal_tool_calls_share_one_vote_key_whatever_their_spelling() -> None:
    task = structured_task({"response_format": {"type": "json_object"}})
    assert task is not None
    a = task.answer_of('{"b": 1, "a": [1, 2]}')
    b = task.answer_of('{ "a": [1,2],\n "b": 1 }')
    assert a is not None and a == b
    assert task.answer_of("not json") is None
    tools = structured_task({"tools": [WEATHER]})
    assert tools is not None
    one = tools.response_of("", [call("get_weather", '{"city": "Rome"}')])
    two = tools.response_of("", [call("get_weather", '{ "city":"Rome" }')])
    other = tools.response_of("", [call("get_weather", '{"city": "Oslo"}')])
    keys = [tools.answer_of(r) for r in (one, two, other)]
    assert keys[0] == keys[1] != keys[2]
    ranking = vote(keys, tools)
    assert ranking[0][1] == 2


def test_the_validity_verifiers_check_the_schema_and_the_offered_tools() -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    json_check = JsonSchemaVerifier(schema)
    assert json_check.score("q", '{"age": 3}') == 1.0
    assert json_check.score("q", '{"age": "three"}') == 0.0
    assert json_check.score("q", "```json\n{}\n```") == 0.0
    assert not json_check.exact  # valid is not correct: it never ends a search alone
    tools = structured_task({"tools": [WEATHER], "tool_choice": "required"})
    assert tools is not None and isinstance(tools.verifier, ToolCallVerifier)
    good = tools.response_of("", [call("get_weather", '{"city": "Rome"}')])
    unknown = tools.response_of("", [call("get_time", '{"city": "Rome"}')])
    missing = tools.response_of("", [call("get_weather", "{}")])
    prose = tools.response_of("It is sunny.", None)
    scores = [tools.verifier.score("q", r) for r in (good, unknown, missing, prose)]
    assert scores == [1.0, 0.0, 0.0, 0.0]
    optional = structured_task({"tools": [WEATHER]})
    assert optional is not None and optional.verifier is not None
    assert optional.verifier.score("q", prose) == 1.0  # tool_choice auto: prose is valid


async def test_best_of_n_prefers_a_sample_whose_json_is_valid() -> None:
    schema = {"type": "object", "required": ["name"]}
    task = structured_task(
        {"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
    )
    assert task is not None
    texts = ['{"x": 1}', "oops", '{"name": "Ada"}', '{"y": 2}']
    backend = FakeBackend(lambda prompt, i, req: texts[i % len(texts)])
    problem = Problem(
        text="A person as JSON.",
        messages=[ChatMessage(role="user", content="A person as JSON.")],
        task=task,
        params={"response_format": {"type": "json_object"}},
    )
    result = await BestOfN().run(problem, backend, Budget(samples=4, batch_size=4), 1e12)
    assert result.text == '{"name": "Ada"}' and result.score == 1.0
    # Every sample carried the client's format to the model.
    assert backend.calls and all(r.params == problem.params for r in backend.calls)


def test_tool_calls_finish_reasons_and_the_clients_logprobs_are_read_from_a_response() -> None:
    data = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {"content": None, "tool_calls": [call("get_weather", "{}")]},
                "logprobs": {
                    "content": [
                        {
                            "token": "a",
                            "logprob": -0.1,
                            "top_logprobs": [
                                {"token": "a", "logprob": -0.1},
                                {"token": "b", "logprob": -2.0},
                                {"token": "c", "logprob": -3.0},
                            ],
                        }
                    ]
                },
            }
        ],
        "usage": {"completion_tokens": 5},
    }
    (comp,) = completions_from(
        data, chat=True, want_logprobs=True, count_text=lambda _: None, client_top=1
    )
    assert comp.finish_reason == "tool_calls" and comp.text == ""
    assert comp.tool_calls == [call("get_weather", "{}")]
    assert comp.logprobs is not None
    assert [t["token"] for t in comp.logprobs["content"][0]["top_logprobs"]] == ["a"]
    assert client_logprobs({"top_logprobs": [{"x": -1.0, "y": -0.5}]}, 1) == {
        "top_logprobs": [{"y": -0.5}]
    }


def test_streamed_tool_call_pieces_are_passed_on_and_joined_into_the_final_call() -> None:
    acc = StreamAccumulator(chat=True, want_logprobs=False)
    events = [
        {"choices": [{"delta": {"role": "assistant"}}]},
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "c1", "function": {"name": "get_weather"}}
                        ]
                    }
                }
            ]
        },
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}}]},
        {
            "choices": [
                {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'ty":1}'}}]}}
            ]
        },
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
    ]
    pieces = [acc.feed(e) for e in events]
    assert pieces[0] is None and all(p is not None and p.tool_calls for p in pieces[1:4])
    comp, _ = acc.finish(lambda _: None)
    assert comp.finish_reason == "tool_calls"
    assert comp.tool_calls == [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":1}'},
        }
    ]


def scripted(status: int, body: dict[str, Any]) -> OpenAIHTTPBackend:
    async def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        return httpx.Response(status, json=body)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    declared = {"native_n": True, "logprobs": False, "completions": False}
    declared |= {"free_logprobs": True, "parallel_slots": 1}
    return OpenAIHTTPBackend("http://up:1/v1", "m", client=client, declared=declared)


@pytest.mark.parametrize(
    ("status", "body", "retryable", "client_status", "breaker_failure"),
    [
        (400, {"error": {"message": "bad"}}, False, 400, False),
        (
            500,
            {"error": {"message": "3 validation errors: Input should be a string"}},
            False,
            400,
            False,
        ),
        (500, {"error": {"message": "can only concatenate str"}}, False, 500, False),
        (503, {"error": {"message": "loading model"}}, True, 503, True),
        (429, {"error": {"message": "slow down"}}, True, 429, False),
    ],
)
async def test_upstream_errors_are_classified_by_whose_fault_they_are(
    status: int, body: dict[str, Any], retryable: bool, client_status: int, breaker_failure: bool
) -> None:
    be = scripted(status, body)
    req = GenerationRequest(messages=[ChatMessage(role="user", content="Hi")], max_tokens=4)
    with pytest.raises(BackendError) as caught:
        await be.generate(req)
    assert caught.value.retryable is retryable
    assert caught.value.status == client_status
    assert (be.breaker.failures == 1) is breaker_failure
    assert "up:1" not in str(caught.value)


async def test_the_clients_fields_are_sent_as_given_under_the_routers_own() -> None:
    seen: list[dict[str, Any]] = []

    async def handler(req: httpx.Request) -> httpx.Response:
        if req.method == "GET":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        seen.append(json.loads(req.content))
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    be = OpenAIHTTPBackend(
        "http://up:1/v1",
        "m",
        client=client,
        declared={
            "native_n": True,
            "logprobs": True,
            "completions": False,
            "free_logprobs": True,
            "parallel_slots": 4,
        },
    )
    msg = ChatMessage(role="assistant", content=None, tool_calls=[call("f", "{}")])
    req = GenerationRequest(
        messages=[ChatMessage(role="user", content="Hi"), msg],
        max_tokens=4,
        params={"tools": [WEATHER], "top_k": 3, "model": "other", "logprobs": True},
    )
    await be.generate(req)
    body = seen[-1]
    assert body["tools"] == [WEATHER] and body["top_k"] == 3
    assert body["model"] == "m"  # the router's own fields win
    assert body["logprobs"] is True and "top_logprobs" not in body  # as the client sent it
    assert body["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [call("f", "{}")],
    }


def test_a_candidate_of_a_tool_call_task_carries_its_calls() -> None:
    from backends.base import Completion
    from policies.common import candidate_of

    task = structured_task({"tools": [WEATHER]})
    assert task is not None
    comp = Completion(
        text="",
        tokens=3,
        finish_reason="tool_calls",
        tool_calls=[call("get_weather", '{"city": "Rome"}')],
    )
    cand: Candidate = candidate_of(comp, task)
    assert cand.tool_calls == comp.tool_calls and cand.answer is not None
