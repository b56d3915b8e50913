"""Response bodies in OpenAI's shapes, with the router's ``router`` object and the decision's
``x-acr-*`` headers."""

from __future__ import annotations

from typing import Any

from policies.base import StrategyResult
from policies.decision import Decision
from router.core.served import ServedResult
from router.http.schemas import usage_dict


def decision_object(decision: Decision) -> dict[str, Any]:
    """The JSON ``router`` object of responses and of ``/v1/route``."""
    return {
        "model": decision.model,
        "model_reason": decision.model_reason,
        "strategy": decision.strategy,
        "arm": decision.arm,
        "budget": decision.budget.model_dump(),
        "reason": decision.reason,
        "source": decision.source,
        "predicted_success": _round(decision.predicted_success),
        # predicted for the run after the probe; the probe's own time is probe_ms
        "predicted_latency_ms": _round(decision.predicted_latency_ms, 1),
        "probe_ms": _round(decision.probe.wall_ms, 1) if decision.probe is not None else None,
        "predicted_cost_tokens": _round(decision.predicted_cost_tokens, 1),
        "policy_version": decision.policy_version,
        "config_revision": decision.config_revision,
        "difficulty_bin": decision.difficulty_bin,
        "difficulty": _round(decision.difficulty),
        "explored": decision.explored,
        "downgraded": decision.downgraded,
        "probe_tokens": decision.probe_tokens,
        "reuse_probe": decision.reuse_probe,
        "continue_probe": decision.continue_probe,
        "candidates": [c.model_dump() for c in decision.candidates],
    }


def decision_headers(decision: Decision) -> dict[str, str]:
    """``x-acr-*`` response headers (ASCII only, short)."""
    h = {
        "x-acr-model": decision.model.encode("ascii", "replace").decode()[:200],
        "x-acr-strategy": decision.strategy,
        "x-acr-arm": decision.arm,
        "x-acr-budget-tokens": str(decision.budget.max_tokens),
        "x-acr-budget-samples": str(decision.budget.samples),
        "x-acr-reason": decision.reason.encode("ascii", "replace").decode()[:200],
        "x-acr-source": decision.source,
        "x-acr-policy-version": decision.policy_version,
        "x-acr-config-revision": decision.config_revision,
        "x-acr-explored": "1" if decision.explored else "0",
        "x-acr-probe-tokens": str(decision.probe_tokens),
    }
    if decision.difficulty_bin is not None:
        h["x-acr-difficulty-bin"] = str(decision.difficulty_bin)
    if decision.predicted_success is not None:
        h["x-acr-predicted-success"] = f"{decision.predicted_success:.3f}"
    if decision.predicted_latency_ms is not None:
        h["x-acr-predicted-latency-ms"] = f"{decision.predicted_latency_ms:.0f}"
    if decision.predicted_cost_tokens is not None:
        h["x-acr-predicted-cost-tokens"] = f"{decision.predicted_cost_tokens:.0f}"
    return h


def _round(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(float(v), nd)


def finish_reason(reason: str) -> str:
    """OpenAI's finish reason of a result (``stop``, ``length`` or ``tool_calls``)."""
    return reason if reason in ("stop", "length", "tool_calls") else "stop"


def assistant_message(r: StrategyResult, *, reasoning_content: bool) -> dict[str, Any]:
    """The chat ``message`` of one result: its text (null when it only calls tools), its
    tool calls, and a reasoning model's thinking when ``reasoning_content`` is on."""
    message: dict[str, Any] = {"role": "assistant", "content": r.text}
    if r.tool_calls:
        message["tool_calls"] = r.tool_calls
        if not r.text:
            message["content"] = None
    if reasoning_content and r.reasoning is not None:
        message["reasoning_content"] = r.reasoning
    return message


def router_object(served: ServedResult) -> dict[str, Any]:
    """The ``router`` object: the decision, explained, and what running it took.

    ``samples`` is what the strategy drew; ``samples_planned`` what it asked the backend
    for. When the backend gave fewer (a server that ignores ``n``, calls that failed or ran
    out of time) ``samples_shortfall`` says so and why.
    """
    obj = decision_object(served.decision)
    if served.fell_back_to is not None:
        obj["reason"] += f"; fell back to {served.fell_back_to} after backend errors"
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
    choices = [
        {
            "index": i,
            "message": assistant_message(r, reasoning_content=reasoning_content),
            "finish_reason": finish_reason(r.finish_reason),
            "logprobs": r.logprobs,
        }
        for i, r in enumerate(served.results)
    ]
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


def completions_body(
    served_list: list[ServedResult], prompts: list[str] | None = None
) -> dict[str, Any]:
    """A ``text_completion`` over one or more prompts (their choices in order); with
    ``prompts`` (``echo``) each choice's text starts with its prompt."""
    choices: list[dict[str, Any]] = []
    for k, served in enumerate(served_list):
        echo = prompts[k] if prompts is not None else ""
        for r in served.results:
            choices.append(
                {
                    "index": len(choices),
                    "text": echo + r.text,
                    "logprobs": r.logprobs,
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
