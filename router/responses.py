"""Response bodies in OpenAI's shapes, with the router's ``router`` object."""

from __future__ import annotations

from typing import Any

from router.schemas import usage_dict
from router.served import ServedResult


def finish_reason(reason: str) -> str:
    """OpenAI's finish reason of a result (``stop`` or ``length``)."""
    return reason if reason in ("stop", "length") else "stop"


def router_object(served: ServedResult) -> dict[str, Any]:
    """The ``router`` object: the decision, explained, and what running it took.

    ``samples`` is what the strategy drew; ``samples_planned`` what it asked the backend
    for. When the backend gave fewer (a server that ignores ``n``, calls that failed or ran
    out of time) ``samples_shortfall`` says so and why.
    """
    obj = served.decision.public()
    results = served.results
    drawn = sum(r.samples for r in results)
    planned = sum(max(r.samples_planned, r.samples) for r in results)
    obj.update(
        task=served.task_kind,
        latency_ms=round(served.latency_ms, 2),
        stop_reasons=[r.stop_reason for r in results],
        samples=drawn,
        samples_planned=planned,
        verifier_tokens=sum(r.verifier_tokens for r in results),
        verifier_score=max((r.score for r in results if r.score is not None), default=None),
        answers=[r.answer for r in results],
    )
    if drawn < planned:
        why = (
            "the deadline passed"
            if any(r.stop_reason == "deadline" for r in results)
            else "the backend returned fewer samples than asked"
        )
        obj["samples_shortfall"] = f"drew {drawn} of {planned} planned samples: {why}"
    return obj


def chat_body(served: ServedResult, *, reasoning_content: bool) -> dict[str, Any]:
    """A ``chat.completion`` (``reasoning_content`` beside a reasoning model's answer when
    ``reasoning_content`` is on, as vLLM and DeepSeek return it)."""
    choices = []
    for i, r in enumerate(served.results):
        message: dict[str, Any] = {"role": "assistant", "content": r.text}
        if reasoning_content and r.reasoning is not None:
            message["reasoning_content"] = r.reasoning
        choices.append(
            {
                "index": i,
                "message": message,
                "finish_reason": finish_reason(r.finish_reason),
                "logprobs": None,
            }
        )
    return {
        "id": served.id,
        "object": "chat.completion",
        "created": served.created,
        "model": served.model,
        "choices": choices,
        "usage": usage_dict(
            served.prompt_tokens, served.completion_tokens, served.reasoning_tokens
        ),
        "router": router_object(served),
    }


def completions_body(served_list: list[ServedResult]) -> dict[str, Any]:
    """A ``text_completion`` over one or more prompts (their choices in order)."""
    choices: list[dict[str, Any]] = []
    for served in served_list:
        for r in served.results:
            choices.append(
                {
                    "index": len(choices),
                    "text": r.text,
                    "logprobs": None,
                    "finish_reason": finish_reason(r.finish_reason),
                }
            )
    first = served_list[0]
    return {
        "id": first.id.replace("chatcmpl", "cmpl"),
        "object": "text_completion",
        "created": first.created,
        "model": first.model,
        "choices": choices,
        "usage": usage_dict(
            sum(s.prompt_tokens for s in served_list),
            sum(s.completion_tokens for s in served_list),
            sum(s.reasoning_tokens for s in served_list),
        ),
        "router": router_object(first),
    }
