"""Differential conformance: each request shape sent to a real llama.cpp server directly and
through the router (its default path, temperature 0) gets the same answer.

"The same" is: every choice's content, tool calls (name and parsed arguments) and finish
reason, and the tokens of its log-probabilities when asked; a streamed answer is assembled
from its chunks first. Where the server refuses a request (llama-cpp-python answers some
valid tool conversations with a 500), the router refuses it too with a 4xx carrying the
server's message, and never retries it. The documented differences
(``docs/request-fields.md``): ``best_of`` is refused by the router (it draws and chooses
samples itself), a server that ignores ``n`` gets ``n`` answers through the router
(which fans the samples out) where it answers one directly, and a request a server fails on
with a 500 (llama-cpp-python cannot read text parts) is answered 502 with its message.

Both servers run SmolLM2-135M-Instruct: llama.cpp's own C++ ``llama-server`` (4 parallel
slots, Jinja templates) and llama-cpp-python's server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.llama_server import (
    LlamaServer,
    cpp_unavailable_reason,
    start_cpp_server,
    start_llama_server,
    unavailable_reason,
)
from tests.router_http import router_in_front_of

pytestmark = pytest.mark.full

MODEL = "smollm2"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


TOOL_TURNS = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "22 C and sunny"},
]


@dataclass(frozen=True)
class Shape:
    """One request: ``endpoint`` chat or completions, its body, whether it streams, and
    ``refused`` (the field the router refuses it for, by design) when it does."""

    id: str
    body: dict[str, Any]
    endpoint: str = "chat"
    stream: bool = False
    refused: str | None = None


CHAT = [
    Shape("plain", {"messages": user("What is the capital of France?")}),
    Shape(
        "system",
        {"messages": [{"role": "system", "content": "Answer in one word."}, *user("Sky colour?")]},
    ),
    Shape(
        "developer",
        {"messages": [{"role": "developer", "content": "Be brief."}, *user("Name a fruit.")]},
    ),
    Shape(
        "multi-turn",
        {
            "messages": [
                *user("My name is Ada."),
                {"role": "assistant", "content": "Nice to meet you, Ada."},
                *user("What is my name?"),
            ]
        },
    ),
    Shape(
        "text-parts",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Translate 'thank you' "},
                        {"type": "text", "text": "to German."},
                    ],
                }
            ]
        },
    ),
    Shape("max-tokens-cut", {"messages": user("Tell me a story."), "max_tokens": 5}),
    Shape(
        "max-completion-tokens",
        {"messages": user("List three colours."), "max_completion_tokens": 12},
    ),
    Shape("stop-string", {"messages": user("Count from 1 to 10."), "stop": ["5"]}),
    Shape("stop-list", {"messages": user("Count from 1 to 10."), "stop": ["4", "\n\n"]}),
    Shape("seed", {"messages": user("Name an animal."), "seed": 1234}),
    Shape("presence-penalty", {"messages": user("List fruits."), "presence_penalty": 1.5}),
    Shape("frequency-penalty", {"messages": user("List fruits."), "frequency_penalty": 1.2}),
    Shape("logit-bias", {"messages": user("Say yes or no."), "logit_bias": {"42": -100}}),
    Shape("top-p", {"messages": user("Name a city."), "top_p": 0.5}),
    Shape("logprobs", {"messages": user("Say hello."), "logprobs": True}),
    Shape("top-logprobs", {"messages": user("Say hello."), "logprobs": True, "top_logprobs": 3}),
    Shape("n-2", {"messages": user("Name a colour."), "n": 2}),
    Shape(
        "json-object",
        {
            "messages": user("Give a JSON object with a key 'city'."),
            "response_format": {"type": "json_object"},
        },
    ),
    Shape(
        "json-schema",
        {
            "messages": user("Describe a person as JSON."),
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": PERSON, "strict": True},
            },
        },
    ),
    Shape("tools-auto", {"messages": user("What is the weather in Rome?"), "tools": [WEATHER]}),
    Shape(
        "tools-required",
        {
            "messages": user("What is the weather in Rome?"),
            "tools": [WEATHER],
            "tool_choice": "required",
        },
    ),
    Shape(
        "tools-named",
        {
            "messages": user("What is the weather in Rome?"),
            "tools": [WEATHER, TIME],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
    ),
    Shape(
        "tools-none",
        {"messages": user("Hello!"), "tools": [WEATHER], "tool_choice": "none"},
    ),
    Shape(
        "parallel-tool-calls-off",
        {
            "messages": user("Weather and time in Oslo?"),
            "tools": [WEATHER, TIME],
            "parallel_tool_calls": False,
        },
    ),
    Shape("tool-results", {"messages": TOOL_TURNS, "tools": [WEATHER]}),
    Shape("user-field", {"messages": user("Hi there."), "user": "user-42"}),
    Shape("vendor-top-k", {"messages": user("Name a planet."), "top_k": 20}),
    Shape("vendor-min-p", {"messages": user("Name a planet."), "min_p": 0.1}),
    Shape("vendor-repeat-penalty", {"messages": user("Repeat: la la la"), "repeat_penalty": 1.3}),
    Shape("reasoning-effort-low", {"messages": user("What is 2+2?"), "reasoning_effort": "low"}),
    Shape("non-ascii", {"messages": user("Qu'est-ce que la tour Eiffel ? Réponds en français.")}),
    Shape("long-prompt", {"messages": user("Summarise: " + "The cat sat on the mat. " * 60)}),
    Shape("stream", {"messages": user("What is the capital of Italy?")}, stream=True),
    Shape(
        "stream-usage",
        {"messages": user("Name a river."), "stream_options": {"include_usage": True}},
        stream=True,
    ),
    Shape("stream-stop", {"messages": user("Count from 1 to 10."), "stop": ["6"]}, stream=True),
    Shape(
        "stream-logprobs",
        {"messages": user("Say hello."), "logprobs": True, "top_logprobs": 2},
        stream=True,
    ),
    Shape(
        "stream-tools",
        {
            "messages": user("What is the weather in Rome?"),
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
        stream=True,
    ),
    Shape(
        "stream-json",
        {
            "messages": user("A JSON object with key 'a'."),
            "response_format": {"type": "json_object"},
        },
        stream=True,
    ),
]
COMPLETIONS = [
    Shape("completion", {"prompt": "The capital of France is"}, endpoint="completions"),
    Shape("completion-stop", {"prompt": "1, 2, 3,", "stop": [", 6"]}, endpoint="completions"),
    Shape("completion-logprobs", {"prompt": "Hello", "logprobs": 2}, endpoint="completions"),
    Shape("completion-echo", {"prompt": "Once upon a time", "echo": True}, endpoint="completions"),
    Shape(
        "completion-penalties",
        {"prompt": "Fruits: apple,", "presence_penalty": 1.0, "seed": 7},
        endpoint="completions",
    ),
    Shape("completion-stream", {"prompt": "The sky is"}, endpoint="completions", stream=True),
    Shape(
        "completion-best-of",
        {"prompt": "Hi", "best_of": 2},
        endpoint="completions",
        refused="best_of",
    ),
]
SHAPES = CHAT + COMPLETIONS


@dataclass
class Pair:
    """A server and the router in front of it, each behind the official client."""

    kind: str
    server: LlamaServer
    direct: OpenAI
    routed: OpenAI
    results: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module", params=["llama-server", "llama-cpp-python"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    kind = request.param
    reason = cpp_unavailable_reason() if kind == "llama-server" else unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    server = start_cpp_server() if kind == "llama-server" else start_llama_server()
    try:
        with router_in_front_of(server.base_url) as url:
            routed = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
            direct = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
            yield Pair(kind, server, direct, routed)
    finally:
        server.stop()


def send(client: OpenAI, shape: Shape) -> dict[str, Any]:
    """The answer to ``shape`` in comparable form: per choice its content, tool calls, finish
    reason and logprob tokens; or the error's status."""
    body: dict[str, Any] = {"model": MODEL, "temperature": 0, "max_tokens": 48, **shape.body}
    if "max_completion_tokens" in body:
        body.pop("max_tokens")
    known = {"model", "messages", "prompt", "temperature", "max_tokens", "stream"}
    extra = {k: body.pop(k) for k in list(body) if k not in known and k in VENDOR}
    api = client.chat.completions if shape.endpoint == "chat" else client.completions
    try:
        raw = api.with_raw_response.create(stream=shape.stream, extra_body=extra or None, **body)  # type: ignore[call-overload]
    except openai.APIStatusError as err:
        return {"status": err.status_code, "message": str(err)}
    got = raw.parse()
    # the router's strategy (None from the server itself)
    strategy = raw.headers.get("x-acr-strategy")
    if shape.stream:
        return {**assembled(list(got), chat=shape.endpoint == "chat"), "strategy": strategy}
    chat = shape.endpoint == "chat"
    return {"choices": [choice_of(c.model_dump(), chat) for c in got.choices], "strategy": strategy}


#: fields the official client does not take as keywords (sent as extra body)
VENDOR = {"top_k", "min_p", "repeat_penalty", "best_of"}


def choice_of(c: dict[str, Any], chat: bool) -> dict[str, Any]:
    message = c.get("message") or {}
    text = message.get("content") if chat else c.get("text")
    return {
        "content": text or "",
        "tool_calls": calls_of(message.get("tool_calls")),
        "finish_reason": c.get("finish_reason"),
        "logprob_tokens": logprob_tokens(c.get("logprobs")),
    }


def calls_of(calls: Any) -> list[tuple[str, Any]]:
    out = []
    for call in calls or []:
        fn = call.get("function") or {}
        try:
            args = json.loads(fn.get("arguments") or "null")
        except ValueError:
            args = fn.get("arguments")
        out.append((fn.get("name"), args))
    return out


def logprob_tokens(lp: Any) -> list[str] | None:
    if not isinstance(lp, dict):
        return None
    if isinstance(lp.get("content"), list):
        return [t.get("token") for t in lp["content"]]
    tokens = lp.get("tokens")
    return list(tokens) if isinstance(tokens, list) else None


def assembled(chunks: list[Any], *, chat: bool) -> dict[str, Any]:
    """A streamed answer joined: its text, tool calls (by index), finish reason, tokens."""
    text, finish, tokens = "", None, []
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for c in chunk.model_dump().get("choices") or []:
            delta = c.get("delta") or {} if chat else {"content": c.get("text")}
            text += delta.get("content") or ""
            for piece in delta.get("tool_calls") or []:
                call = calls.setdefault(piece.get("index") or 0, {"name": "", "arguments": ""})
                fn = piece.get("function") or {}
                call["name"] += fn.get("name") or ""
                call["arguments"] += fn.get("arguments") or ""
            finish = c.get("finish_reason") or finish
            tokens += logprob_tokens(c.get("logprobs")) or []
    tool_calls = [{"function": calls[i]} for i in sorted(calls)]
    return {
        "choices": [
            {
                "content": text,
                "tool_calls": calls_of(tool_calls),
                "finish_reason": finish,
                "logprob_tokens": tokens or None,
            }
        ]
    }


def reference_of(shape: Shape) -> Shape:
    """What is sent directly to get the answer ``shape`` must get through the router: the
    same request, but ``max_completion_tokens`` as ``max_tokens`` (the router caps the
    answer with it, as OpenAI does; llama-cpp-python ignores the newer name)."""
    body = dict(shape.body)
    if "max_completion_tokens" in body:
        body["max_tokens"] = body.pop("max_completion_tokens")
    return Shape(shape.id, body, shape.endpoint, shape.stream, shape.refused)


@pytest.mark.parametrize("shape", SHAPES, ids=[s.id for s in SHAPES])
def test_each_request_shape_gets_what_the_server_gives_directly_or_the_documented_refusal(
    pair: Pair, shape: Shape
) -> None:
    if shape.refused is not None:
        routed = send(pair.routed, shape)
        assert routed.get("status") == 400, routed
        assert shape.refused in routed["message"], routed
        return
    # A server's first answer to a prompt can differ from its later ones (llama-cpp-python
    # reuses the previous prompt's cache): the reference is its second answer, and the
    # router's is the third request of the same prompt.
    send(pair.direct, reference_of(shape))
    direct = send(pair.direct, reference_of(shape))
    routed = send(pair.routed, shape)
    if "status" in direct:
        # The server refused the request (or failed on it): so does the router, with the
        # server's own reason: a 4xx for a refusal, 502 for the server's own failure on this
        # request (never 503 "unavailable", never a retry).
        status = routed.get("status", 200)
        assert 400 <= status < 500 or status == 502, (direct, routed)
        return
    assert "choices" in routed, routed
    wanted = shape.body.get("n", 1)
    # A server that ignores n answers once directly; the router fans the n samples out.
    assert len(routed["choices"]) == max(wanted, len(direct["choices"])), routed
    if routed["strategy"] != "single_pass":
        # The router learned on this suite's own traffic that another strategy pays (for a
        # tool request: SmolLM2 gives no tool call when one is required, the tool-call
        # verifier scores that 0, and self-consistency is chosen for the task after it): its
        # answer is then its own, not the server's one greedy completion. Each choice
        # says something, and ends as a completion does.
        for r in routed["choices"]:
            assert r["content"] or r["tool_calls"], routed
            assert r["finish_reason"] in ("stop", "length", "tool_calls"), routed
        return
    for d, r in zip(direct["choices"], routed["choices"], strict=False):
        prompt = shape.body.get("prompt", "")
        if shape.body.get("echo") and not d["content"].startswith(prompt):
            # The router acts on echo itself (the prompt first), also for a server that
            # ignores it.
            d = {**d, "content": prompt + d["content"]}
        assert r == d, (pair.kind, shape.id)
