"""Request validation against the configured limits: an API request becomes the strategies'
``Problem`` (its task detected once, here) or a 4xx ``APIError`` naming the bad field."""

from __future__ import annotations

from backends.base import ChatMessage, ThinkTags
from difficulty.profiles import TaskProfiles
from policies.base import Problem
from router.config import AppConfig
from router.errors import APIError, bad_request
from router.schemas import ChatCompletionRequest, CompletionRequest, InMessage, RouterOptions


class RequestValidator:
    """Checks requests against ``config.limits`` and the served ``model_name``."""

    def __init__(self, config: AppConfig, model_name: str, profiles: TaskProfiles) -> None:
        self.config = config
        self.model_name = model_name
        self.profiles = profiles
        r = config.model.reasoning
        self.think = (
            ThinkTags(r.think_open, r.think_close, r.answer_max_tokens) if r.think_open else None
        )

    def check_common(self, req: ChatCompletionRequest | CompletionRequest) -> None:
        """``n``, stop strings and the model name; raises ``APIError``."""
        lim = self.config.limits
        if req.n > lim.max_n:
            raise bad_request(f"n must be between 1 and {lim.max_n}, got {req.n}", "n")
        stops = req.stop_list()
        if len(stops) > lim.max_stop:
            raise bad_request(
                f"stop takes at most {lim.max_stop} strings, got {len(stops)}", "stop"
            )
        for s in stops:
            if not s or len(s) > lim.max_stop_chars:
                raise bad_request(
                    f"each stop string must have 1 to {lim.max_stop_chars} characters", "stop"
                )
        if req.model not in (None, "", self.model_name, "auto"):
            raise APIError(
                404,
                f"model {req.model!r} does not exist; available: {self.model_name}",
                param="model",
                code="model_not_found",
            )

    def max_tokens(self, *values: int | None) -> int | None:
        """The first given token cap, checked against ``limits.max_tokens``."""
        lim = self.config.limits.max_tokens
        given = [v for v in values if v is not None]
        if not given:
            return None
        if given[0] > lim:
            raise bad_request(
                f"max_tokens must be between 1 and {lim}, got {given[0]}", "max_tokens"
            )
        return given[0]

    def messages(self, messages: list[InMessage]) -> list[ChatMessage]:
        """The chat messages as the backend takes them, within the size limits."""
        lim = self.config.limits
        if len(messages) > lim.max_messages:
            raise bad_request(
                f"at most {lim.max_messages} messages are accepted, got {len(messages)}", "messages"
            )
        out: list[ChatMessage] = []
        total = 0
        for i, m in enumerate(messages):
            text = m.text()
            if len(text) > lim.max_message_chars:
                raise bad_request(
                    f"messages[{i}] has {len(text)} characters; the limit is "
                    f"{lim.max_message_chars}",
                    f"messages.{i}.content",
                )
            total += len(text)
            out.append(ChatMessage(role=m.role, content=text))
        if total > lim.max_prompt_chars:
            raise bad_request(
                f"messages hold {total} characters; the limit is {lim.max_prompt_chars}", "messages"
            )
        if not any(m.role == "user" for m in out):
            raise bad_request("messages must contain at least one user message", "messages")
        return out

    def deadline_ms(self, options: RouterOptions | None) -> float:
        """The request's time budget: its own ``timeout_ms`` (bounded) or the default."""
        srv = self.config.server
        asked = options.timeout_ms if options and options.timeout_ms else None
        if asked is not None and asked > srv.max_request_timeout_ms:
            raise bad_request(
                f"acr.timeout_ms must be at most {srv.max_request_timeout_ms}, got {asked}",
                "acr.timeout_ms",
            )
        return float(asked or srv.request_timeout_ms)

    def chat_problem(self, req: ChatCompletionRequest) -> Problem:
        """Validate a chat request and return the strategies' view of it."""
        self.check_common(req)
        msgs = self.messages(req.messages)
        text = next(m.content for m in reversed(msgs) if m.role == "user")
        return Problem(
            text=text,
            messages=msgs,
            seed=req.seed,
            stop=req.stop_list(),
            task=self.profiles.match(text),
            think=self.think,
        )

    def completion_problems(self, req: CompletionRequest) -> list[Problem]:
        """Validate a text completion request; one problem per prompt."""
        self.check_common(req)
        lim = self.config.limits
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts or len(prompts) > lim.max_n:
            raise bad_request(
                f"prompt must be a string or a list of 1 to {lim.max_n} strings", "prompt"
            )
        if len(prompts) * req.n > lim.max_n:
            # n choices per prompt: the request's total choices share one bound with n.
            raise bad_request(
                f"{len(prompts)} prompts times n={req.n} is {len(prompts) * req.n} choices; "
                f"the limit is {lim.max_n}",
                "n",
            )
        for p in prompts:
            if len(p) > lim.max_prompt_chars:
                raise bad_request(
                    f"prompt has {len(p)} characters; the limit is {lim.max_prompt_chars}",
                    "prompt",
                )
        return [
            Problem(
                text=p,
                prompt=p,
                seed=req.seed,
                stop=req.stop_list(),
                task=self.profiles.match(p),
                think=self.think,
            )
            for p in prompts
        ]
