"""Structured requests: JSON output (``response_format``) and tool calls (``tools``).

A request that asks for JSON or offers tools is its own task, whatever its text: its answer
is the canonical JSON document, or the canonical tool calls (name and parsed arguments, keys
sorted), so that samples vote on what they mean rather than on whitespace, and a
*validity* verifier (JSON Schema, via ``jsonschema``) scores each sample: where a strategy
draws several, a valid one is preferred. Validity is not correctness, so the verifier is not
exact: it never ends a search by itself.

Strategies read a structured candidate as one string (``Task.response_of``): the message
content, or for tool calls a JSON object of the content and the calls.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from backends.verifiers.base import Verifier
from tasks.answers.base import AnswerFormat
from tasks.canonical import canonical
from tasks.task import Task

JSON_KIND = "json"
TOOL_CALL_KIND = "tool_call"
#: the request fields that make a request structured
STRUCTURED_FIELDS = ("tools", "response_format")


def _loads(text: str) -> Any:
    return json.loads(text.strip())


class JsonFormat(AnswerFormat):
    """The whole response is one JSON document; its key is the canonical form."""

    name = "json"
    description = "A JSON document (response_format); votes compare canonical JSON."

    def _extract(self, text: str) -> str | None:
        return canonical(_loads(text))

    def _normalize(self, answer: str) -> str | None:
        return canonical(_loads(answer))


class ToolCallFormat(AnswerFormat):
    """The answer is the tool calls made (canonical); a response without calls has none."""

    name = "tool_calls"
    description = "Tool calls (tools); votes compare the canonical calls."

    def _extract(self, text: str) -> str | None:
        calls = _loads(text).get("tool_calls")
        return canonical(calls) if calls else None

    def _normalize(self, answer: str) -> str | None:
        return canonical(_loads(answer))


class JsonSchemaVerifier(Verifier):
    """1.0 for a response that is JSON (valid under ``schema`` when there is one), else 0."""

    name = "json_schema"
    exact = False

    def __init__(self, schema: dict[str, Any] | None) -> None:
        self.schema = schema

    def score(self, problem: str, candidate: str, reference: str | None = None) -> float:
        """Validity of ``candidate`` as the requested JSON."""
        try:
            doc = _loads(candidate)
            if self.schema is not None:
                jsonschema.validate(doc, self.schema)
        except (ValueError, jsonschema.ValidationError, jsonschema.SchemaError):
            return 0.0
        return 1.0


class ToolCallVerifier(Verifier):
    """1.0 for a response whose calls name offered tools with arguments valid under their
    parameter schemas (or, when no call is required, a plain answer), else 0."""

    name = "tool_calls"
    exact = False

    def __init__(self, tools: list[dict[str, Any]], required: bool) -> None:
        self.required = required
        self.parameters: dict[str, Any] = {}
        for tool in tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                self.parameters[function["name"]] = function.get("parameters")

    def score(self, problem: str, candidate: str, reference: str | None = None) -> float:
        """Validity of ``candidate`` (``tool_response``) against the offered tools."""
        try:
            calls = _loads(candidate).get("tool_calls") or []
        except (ValueError, AttributeError):
            return 0.0
        if not calls:
            return 0.0 if self.required else 1.0
        for call in calls:
            name, args = call.get("name"), call.get("arguments")
            if name not in self.parameters or not isinstance(args, dict):
                return 0.0
            schema = self.parameters[name]
            try:
                if isinstance(schema, dict):
                    jsonschema.validate(args, schema)
            except (jsonschema.ValidationError, jsonschema.SchemaError):
                return 0.0
        return 1.0


def structured_task(params: dict[str, Any]) -> Task | None:
    """The task of a request with these forwarded fields: tool calls when it offers tools
    (and does not turn them off), JSON when it asks for JSON output, else None."""
    tools = params.get("tools")
    if isinstance(tools, list) and tools and params.get("tool_choice") != "none":
        choice = params.get("tool_choice")
        required = choice == "required" or isinstance(choice, dict)
        return Task(
            TOOL_CALL_KIND,
            ToolCallVerifier(tools, required),
            ToolCallFormat(),
            structured=True,
        )
    fmt = params.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        spec = fmt.get("json_schema") if fmt.get("type") == "json_schema" else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return Task(
            JSON_KIND,
            JsonSchemaVerifier(schema if isinstance(schema, dict) else None),
            JsonFormat(),
            structured=True,
        )
    return None
