"""``acr bench``: strategies and ``auto`` over a dataset slice, through the service.

Rows are (strategy, budget) arms, e.g. ``best_of_n:samples=16``, plus the router's ``auto``;
each item of the slice goes through the same ``RouterService`` path as a served request
(decide, run, record), against one in-process model, and is graded exactly and recorded
with its tokens (visible + hidden + verifier, the probe included) and latency. The plot
shows accuracy against mean generated tokens per item with the Pareto frontier. Extra rows
(a later policy's) can be added with ``extra_rows``; the ``oracle`` row is the cheapest
fixed arm that solved each item, known after the fact.

This module loads the model and runs the rows in order; the parts are in modules of their
own: ``bench_items`` (datasets, grading), ``bench_arms`` (arm specs), ``bench_rows``
(runners and per-item records) and ``bench_summary`` (summaries, oracle, Pareto, plot).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from backends.base import Backend
from backends.batching import MicroBatcher
from backends.bundled.paths import bundled_model_path
from policies.budget import Budget
from router.commands.bench_arms import arm_options, parse_arm
from router.commands.bench_items import Item, grade, item_seed, load_items
from router.commands.bench_pool import pool_backends, pool_runner
from router.commands.bench_rows import (
    ItemRun,
    Runner,
    auto_runner,
    bench_config,
    run_row,
    strategy_runner,
    user_spec,
)
from router.commands.bench_summary import oracle_records, pareto, plot, summarise
from router.config import AppConfig
from tasks.profiles import BUNDLED_MODEL

#: the bench's names as tests, ``lab/`` and ``acr calibrate`` import them from here; each is
#: defined in the module of its concept (items, arms, rows, summary)
__all__ = [
    "Item",
    "ItemRun",
    "Runner",
    "arm_options",
    "auto_runner",
    "bench_config",
    "grade",
    "item_seed",
    "load_items",
    "load_model",
    "oracle_records",
    "pareto",
    "parse_arm",
    "plot",
    "run_bench",
    "run_row",
    "strategy_runner",
    "summarise",
    "user_spec",
]


def load_model(
    model_dir: Path | None, device: str, torch_threads: int, name: str | None = None
) -> Backend:
    """The model a bench runs against, micro-batched in process, called ``name`` (default:
    the bundled model's name, or the checkpoint's)."""
    # torch is imported only when a bench really loads the model.
    from backends.transformers_backend import TransformersBackend

    model = TransformersBackend.from_pretrained(
        model_dir or bundled_model_path(),
        device=device,
        torch_threads=torch_threads,
        name=name or (None if model_dir else BUNDLED_MODEL),
    )
    return MicroBatcher(model)


def _loader(device: str, torch_threads: int) -> Callable[[Path, str], Backend]:
    """``(path, name) -> Backend``: a pool member's own checkpoint, loaded as the bench's."""

    def load(path: Path, name: str) -> Backend:
        return load_model(path, device, torch_threads, name=name)

    return load


async def _run_rows(
    rows: list[tuple[str, Runner]], items: list[Item], concurrency: int, progress: bool
) -> list[dict[str, Any]]:
    """Every row over ``items``, one row after the other, with a progress bar."""
    records: list[dict[str, Any]] = []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        disable=not progress,
    ) as bar:
        for name, runner in rows:
            task = bar.add_task(name, total=len(items))

            def tick(t: Any = task) -> None:
                bar.advance(t)

            records.extend(await run_row(name, runner, items, concurrency, tick))
    return records


def run_bench(
    items: list[Item],
    arms: list[str],
    out_json: Path,
    *,
    model_dir: Path | None = None,
    concurrency: int = 16,
    timeout_s: float = 120.0,
    extra_rows: dict[str, Runner] | None = None,
    title: str = "",
    progress: bool = True,
    auto: bool = True,
    oracle: bool = True,
    router_model: Path | None = None,
    device: str = "cpu",
    torch_threads: int = 1,
    backend: Backend | None = None,
    pool: AppConfig | None = None,
) -> dict[str, Any]:
    """Run every arm (and ``extra_rows``) over ``items``; writes JSON and a PNG beside it.

    Returns (and writes) ``summary`` (per row: accuracy, mean tokens, samples, latency),
    ``by_group`` (the same per difficulty bucket), ``pareto`` (rows on the frontier) and
    ``records`` (one per item and row). Rows run one after the other, ``concurrency`` items
    at a time through one micro-batched model, so latencies are comparable between rows.

    ``extra_rows`` maps a row name to an async callable ``item -> StrategyResult`` (a later
    policy's row); ``auto`` adds the router's row (``router_model``, default the bundled
    one); ``oracle`` adds the cheapest fixed arm that solved each item, known after the fact.
    ``pool`` (a config with ``backends``) adds the ``pool`` row, each item served by the
    pool (``router.commands.bench_pool``). ``backend`` replaces the model (tests); otherwise
    ``model_dir`` (default: the bundled model) is loaded on ``device`` with
    ``torch_threads`` intra-op threads (0: torch's default). One thread is the default
    because on a CPU shared with other work torch's spinning thread pool made decoding
    10-100x slower (measured: 56 tokens in 3 s with two threads on a busy 2-core machine,
    0.2 s with one).
    """
    specs = [parse_arm(a) for a in arms]
    records: list[dict[str, Any]] = []

    async def main() -> None:
        be = backend or load_model(model_dir, device, torch_threads)
        rows = _rows(be, specs, timeout_s, extra_rows, auto=auto, router_model=router_model)
        members: dict[str, Backend] = {}
        if pool is not None:
            members = pool_backends(pool, be, _loader(device, torch_threads))
            rows.append(("pool", pool_runner(pool, members, timeout_s)))
        records.extend(await _run_rows(rows, items, concurrency, progress))
        for member in {id(m): m for m in [be, *members.values()]}.values():
            await member.close()

    t0 = time.time()
    asyncio.run(main())
    if oracle:
        records.extend(oracle_records(records, [name for name, _, _ in specs]))
    result = _result(title, items, specs, records, t0)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2, default=str))
    plot(result["summary"], out_json.with_suffix(".png"), title or out_json.stem)
    return result


def _rows(
    backend: Backend,
    specs: list[tuple[str, str, Budget]],
    timeout_s: float,
    extra_rows: dict[str, Runner] | None,
    *,
    auto: bool,
    router_model: Path | None,
) -> list[tuple[str, Runner]]:
    """The bench's rows in the order they run and are reported: the fixed arms of ``specs``,
    then ``extra_rows``, then (with ``auto``) the router's row with ``router_model``."""
    rows: list[tuple[str, Runner]] = [
        (name, strategy_runner(backend, strat, budget, timeout_s, arm_options(name)))
        for name, strat, budget in specs
    ] + list((extra_rows or {}).items())
    if auto:
        rows.append(("auto", auto_runner(backend, router_model, timeout_s)))
    return rows


def _result(
    title: str,
    items: list[Item],
    specs: list[tuple[str, str, Budget]],
    records: list[dict[str, Any]],
    t0: float,
) -> dict[str, Any]:
    """The bench's results as ``run_bench`` returns and writes them (see there); ``seconds``
    is the time since ``t0``."""
    summary = summarise(records)
    return {
        "title": title,
        "items": len(items),
        "arms": {name: {"strategy": s, "budget": b.model_dump()} for name, s, b in specs},
        "summary": summary,
        "by_group": summarise(records, by_group=True),
        "pareto": pareto(summary),
        "seconds": round(time.time() - t0, 1),
        "records": records,
    }
