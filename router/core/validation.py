"""Request validation against the configured limits and the backend: a ``RequestSpec`` as
the edge built it becomes the spec the policy decides on (its task matched once, here, and
its deadline resolved), or an ``InvalidOption`` naming the bad field.

Fields the router does not act on are forwarded to the model (``Problem.params``); a
backend that cannot take them (the bundled model, a local checkpoint) refuses each by name,
never drops it. A request that offers tools or asks for JSON is a structured task
(``tasks.structured``), whatever its text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from backends.base import Backend, ThinkTags
from policies.request import RequestSpec
from router.config import AppConfig
from router.errors import InvalidOption, UnknownModel
from tasks.profiles import TaskProfiles
from tasks.structured import structured_task

#: forwarded fields any backend takes (kept in the outcome log where none is sent on)
ALWAYS_TAKEN = frozenset({"user"})


class RequestValidator:
    """Checks requests against ``config.limits`` and what ``backend`` can honour."""

    def __init__(self, config: AppConfig, backend: Backend, profiles: TaskProfiles) -> None:
        self.config = config
        self.backend = backend
        self.model_name = backend.name
        self.profiles = profiles
        r = config.model.reasoning
        self.think = (
            ThinkTags(r.think_open, r.think_close, r.answer_max_tokens) if r.think_open else None
        )

    def model(self, name: str | None) -> None:
        """Refuse a model name this server does not serve ('auto' and empty mean it)."""
        if name not in (None, "", self.model_name, "auto"):
            raise UnknownModel(
                f"model {name!r} does not exist; available: {self.model_name}", "model"
            )

    def check(self, spec: RequestSpec) -> RequestSpec:
        """``spec`` within the limits, with its task matched, the model's think tags and its
        deadline resolved; raises ``InvalidOption`` naming the first field past a bound."""
        self._choices(spec.n)
        self._stops(spec.problem.stop)
        self.model(spec.model)
        problem = spec.problem
        if problem.messages is not None:
            self._messages(spec)
        elif (
            problem.prompt is not None and len(problem.prompt) > self.config.limits.max_prompt_chars
        ):
            raise InvalidOption(
                f"prompt has {len(problem.prompt)} characters; the limit is "
                f"{self.config.limits.max_prompt_chars}",
                "prompt",
            )
        self._max_tokens(spec.max_tokens)
        self._budget_override(spec.budget)
        self._forwarded(spec)
        task = structured_task(problem.params)
        if task is None:
            task = (
                self.profiles.task_named(spec.profile)
                if spec.profile is not None
                else self.profiles.match(problem.text)
            )
        problem = dataclasses.replace(problem, task=task, think=self.think)
        return dataclasses.replace(spec, problem=problem, deadline_ms=self._deadline_ms(spec))

    def check_batch(self, specs: Sequence[RequestSpec]) -> list[RequestSpec]:
        """The prompts of one text completion request, each checked; their choices together
        (prompts times ``n``) share the bound of ``n``."""
        if specs:
            self.model(specs[0].model)
        self.batch_bounds(specs)
        return [self.check(s) for s in specs]

    def batch_bounds(self, specs: Sequence[RequestSpec]) -> None:
        """Refuse a text completion request whose prompts, ``n`` or stops are out of
        bounds, whichever model serves each prompt."""
        lim = self.config.limits
        if specs:
            self._choices(specs[0].n)
            self._stops(specs[0].problem.stop)
        if not specs or len(specs) > lim.max_n:
            raise InvalidOption(
                f"prompt must be a string or a list of 1 to {lim.max_n} strings", "prompt"
            )
        n = specs[0].n
        if len(specs) * n > lim.max_n:
            raise InvalidOption(
                f"{len(specs)} prompts times n={n} is {len(specs) * n} choices; "
                f"the limit is {lim.max_n}",
                "n",
            )

    def _choices(self, n: int) -> None:
        lim = self.config.limits
        if n > lim.max_n:
            raise InvalidOption(f"n must be between 1 and {lim.max_n}, got {n}", "n")

    def _stops(self, stops: list[str]) -> None:
        lim = self.config.limits
        if len(stops) > lim.max_stop:
            raise InvalidOption(
                f"stop takes at most {lim.max_stop} strings, got {len(stops)}", "stop"
            )
        for s in stops:
            if not s or len(s) > lim.max_stop_chars:
                raise InvalidOption(
                    f"each stop string must have 1 to {lim.max_stop_chars} characters", "stop"
                )

    def _max_tokens(self, value: int | None) -> None:
        lim = self.config.limits.max_tokens
        if value is not None and value > lim:
            raise InvalidOption(
                f"max_tokens must be between 1 and {lim}, got {value}", "max_tokens"
            )

    def _messages(self, spec: RequestSpec) -> None:
        """The chat messages within the size limits, at least one from the user."""
        lim = self.config.limits
        messages = spec.problem.messages or []
        if len(messages) > lim.max_messages:
            raise InvalidOption(
                f"at most {lim.max_messages} messages are accepted, got {len(messages)}",
                "messages",
            )
        total = 0
        for i, m in enumerate(messages):
            if len(m.text) > lim.max_message_chars:
                raise InvalidOption(
                    f"messages[{i}] has {len(m.text)} characters; the limit is "
                    f"{lim.max_message_chars}",
                    f"messages.{i}.content",
                )
            total += len(m.text)
        if total > lim.max_prompt_chars:
            raise InvalidOption(
                f"messages hold {total} characters; the limit is {lim.max_prompt_chars}",
                "messages",
            )
        if not any(m.role == "user" for m in messages):
            raise InvalidOption("messages must contain at least one user message", "messages")

    def _forwarded(self, spec: RequestSpec) -> None:
        """Refuse what the backend cannot honour: forwarded fields (and tool turns, and the
        client's logprobs) on a backend that takes none, and ``best_of`` anywhere."""
        problem = spec.problem
        if "best_of" in problem.params:
            raise InvalidOption(
                "best_of is not taken: the router draws and chooses among samples itself "
                "(acr.strategy best_of_n with acr.budget.samples)",
                "best_of",
            )
        if self.backend.capabilities.forwards_fields:
            return
        backend = f"this model backend ({self.model_name}) takes only the fields the router acts on"
        for name, value in problem.params.items():
            if name == "logprobs" and not value:
                continue  # logprobs: false asks for nothing
            if name not in ALWAYS_TAKEN:
                raise InvalidOption(
                    f"{name} is not supported: {backend}; serve the model with an "
                    "OpenAI-compatible server (model.kind: openai) to use it",
                    name,
                )
        if problem.top_logprobs is not None:
            raise InvalidOption(f"logprobs are not supported: {backend}", "logprobs")
        for i, m in enumerate(problem.messages or []):
            extra = sorted(m.model_extra or {})
            if extra or m.role == "tool":
                what = extra[0] if extra else "role"
                raise InvalidOption(
                    f"messages[{i}].{what} is not supported: {backend} (no tool turns)",
                    f"messages.{i}.{what}",
                )

    def _budget_override(self, budget: dict[str, Any] | None) -> None:
        """Refuse ``acr.budget`` fields past the server's bounds."""
        if not budget:
            return
        limits = self.config.limits
        bounds = {"max_tokens": limits.max_tokens, "samples": limits.max_samples}
        for field, bound in bounds.items():
            value = budget.get(field)
            if value is not None and value > bound:
                raise InvalidOption(
                    f"acr.budget.{field} must be at most {bound} on this server, got {value}",
                    f"acr.budget.{field}",
                )
        width = (budget.get("beam_width") or 1) * (budget.get("expansions") or 1)
        if width > limits.max_search_width:
            raise InvalidOption(
                f"acr.budget.beam_width x expansions must be at most {limits.max_search_width} "
                f"on this server, got {width}",
                "acr.budget.beam_width",
            )

    def _deadline_ms(self, spec: RequestSpec) -> float:
        """The request's time budget: its own ``acr.timeout_ms`` (bounded) or the default."""
        srv = self.config.server
        asked = spec.deadline_ms
        if asked is not None and asked > srv.max_request_timeout_ms:
            raise InvalidOption(
                f"acr.timeout_ms must be at most {srv.max_request_timeout_ms}, got {asked:.0f}",
                "acr.timeout_ms",
            )
        return float(asked or srv.request_timeout_ms)
