"""A bench's rows: runners that send items through the service, and the per-item records.

A row is a ``Runner`` (an async callable ``Item -> ItemRun | StrategyResult``): one fixed arm
(``strategy_runner``), the router's ``auto`` (``auto_runner``) or any later policy's callable.
``run_row`` runs one row over the items and records, per item, its grade, an honest account
of its tokens (``ItemRun``) and its latency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.base import Backend, ChatMessage
from policies.base import Problem, StrategyResult
from policies.budget import Budget
from policies.request import RequestSpec
from router.commands.bench_items import Item, grade, item_seed
from router.config import AppConfig
from router.core.assembly import make_service
from router.core.served import ServedResult


@dataclass(frozen=True)
class ItemRun:
    """What one row did on one item: its answer and an honest account of its tokens."""

    strategy: str
    text: str
    visible_tokens: int
    hidden_tokens: int
    verifier_tokens: int
    prompt_tokens: int
    samples: int
    stop_reason: str

    @property
    def completion_tokens(self) -> int:
        """Every generated token, visible and hidden (the probe included)."""
        return self.visible_tokens + self.hidden_tokens

    @property
    def tokens(self) -> int:
        """Generated (visible + hidden, the probe included) plus verifier tokens."""
        return self.visible_tokens + self.hidden_tokens + self.verifier_tokens

    @classmethod
    def of(cls, res: StrategyResult) -> ItemRun:
        """The account of one strategy result (an extra row's)."""
        return cls(
            res.strategy,
            res.text,
            res.visible_tokens,
            res.hidden_tokens,
            res.verifier_tokens,
            res.prompt_tokens,
            res.samples,
            res.stop_reason,
        )

    @classmethod
    def served(cls, served: ServedResult, label: str) -> ItemRun:
        """The account of a served request (one choice), named ``label``."""
        res = served.results[0]
        return cls(
            label,
            res.text,
            served.completion_tokens - served.reasoning_tokens,
            served.reasoning_tokens,
            sum(r.verifier_tokens for r in served.results),
            served.prompt_tokens,
            sum(r.samples for r in served.results),
            res.stop_reason,
        )


Runner = Callable[[Item], Awaitable[ItemRun | StrategyResult]]


def bench_config(
    base: AppConfig | None = None, options: dict[str, dict[str, Any]] | None = None
) -> AppConfig:
    """The service config a bench row runs with: no exploration (rows must be repeatable)
    and the row's strategy ``options`` (strategy -> its settings)."""
    config = (base or AppConfig()).model_copy(deep=True)
    config.policy.exploration_rate = 0.0
    config.strategies.options = {**config.strategies.options, **(options or {})}
    return config


def service_runner(
    backend: Backend,
    timeout_s: float,
    *,
    strategy: str | None = None,
    budget: Budget | None = None,
    config: AppConfig | None = None,
) -> Runner:
    """A runner that sends each item through a ``RouterService`` of its own, as a chat
    request with the item's seed: with ``strategy`` (and ``budget``) named, or ``auto``."""
    cfg = config or bench_config()
    cfg.server.max_request_timeout_ms = max(
        cfg.server.max_request_timeout_ms, int(timeout_s * 1000)
    )
    service = make_service(cfg, backend)
    fields = budget.model_dump() if budget is not None else None

    async def run(item: Item) -> ItemRun:
        spec = user_spec(
            item.text,
            item_seed(item),
            strategy=strategy,
            budget=fields,
            deadline_ms=int(timeout_s * 1000),
        )
        served = await service.answer(service.validate.check(spec))
        label = served.results[0].strategy if strategy else f"auto:{served.decision.arm}"
        return ItemRun.served(served, label)

    return run


def user_spec(text: str, seed: int, **fields: Any) -> RequestSpec:
    """One user message with ``seed`` as a chat request's spec (``fields``: the spec's
    other fields, e.g. ``strategy``, ``budget``, ``deadline_ms``)."""
    problem = Problem(text=text, messages=[ChatMessage(role="user", content=text)], seed=seed)
    return RequestSpec(problem, **fields)


def strategy_runner(
    backend: Backend,
    strategy: str,
    budget: Budget,
    timeout_s: float,
    options: dict[str, Any] | None = None,
) -> Runner:
    """The row of one fixed arm: ``strategy`` (built with ``options``) with ``budget``."""
    config = bench_config(options={strategy: options} if options else None)
    return service_runner(backend, timeout_s, strategy=strategy, budget=budget, config=config)


def auto_runner(backend: Backend, router_model: Path | None, timeout_s: float) -> Runner:
    """The router's ``auto`` row: decide (probe included), run or reuse, learn online, as
    the service does; state in memory, starting from the router model's priors."""
    config = bench_config()
    config.policy.classifier_path = str(router_model) if router_model else None
    return service_runner(backend, timeout_s, config=config)


async def run_row(
    name: str, runner: Runner, items: list[Item], concurrency: int, on_done: Callable[[], None]
) -> list[dict[str, Any]]:
    """Every item through ``runner``, ``concurrency`` at a time; per-item records."""
    sem = asyncio.Semaphore(concurrency)

    async def one(item: Item) -> dict[str, Any]:
        async with sem:
            t0 = time.perf_counter()
            got = await runner(item)
            res = got if isinstance(got, ItemRun) else ItemRun.of(got)
            on_done()
            return {
                "row": name,
                "item": item.id,
                "kind": item.kind,
                "meta": item.meta,
                "group": item.group,
                "strategy": res.strategy,
                "correct": grade(item, res.text),
                # generated (visible + hidden) plus the model tokens verifiers spent
                "tokens": res.tokens,
                "visible_tokens": res.visible_tokens,
                "hidden_tokens": res.hidden_tokens,
                "verifier_tokens": res.verifier_tokens,
                "prompt_tokens": res.prompt_tokens,
                "samples": res.samples,
                "stop_reason": res.stop_reason,
                "latency_ms": round((time.perf_counter() - t0) * 1000, 1),
            }

    return list(await asyncio.gather(*(one(i) for i in items)))
