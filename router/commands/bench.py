"""``acr bench``: strategies and ``auto`` over a dataset slice, through the service.

Rows are (strategy, budget) arms, e.g. ``best_of_n:samples=16``, plus the router's ``auto``;
each item of the slice goes through the same ``RouterService`` path as a served request
(decide, run, record), against one in-process model, and is graded exactly and recorded
with its tokens (visible + hidden + verifier, the probe included) and latency. The plot
shows accuracy against mean generated tokens per item with the Pareto frontier. Extra rows
(a later policy's) can be added with ``extra_rows``; the ``oracle`` row is the cheapest
fixed arm that solved each item, known after the fact.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import statistics
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from backends.base import Backend, ChatMessage
from backends.batching import MicroBatcher
from backends.bundled.paths import bundled_model_path
from backends.bundled.tasks.arithmetic import heldout_questions
from backends.bundled.tasks.game24 import puzzle_text, read_csv_puzzles
from policies.base import Problem, StrategyResult
from policies.budget import Budget
from policies.registry import STRATEGIES, strategy_class
from policies.request import RequestSpec
from policies.settings import strategy_options
from router.config import AppConfig
from router.core.assembly import make_service
from router.core.served import ServedResult
from tasks.grading import is_correct, reference_answer
from tasks.profiles import BUNDLED_MODEL, TaskProfiles

# Benchmarks grade with the built-in profiles: the bundled tasks and ``math``.
_PROFILES = TaskProfiles()


@dataclass(frozen=True)
class Item:
    """One benchmark question, with what grades it."""

    id: str
    text: str
    #: the task profile that grades it: game24 | arithmetic | math (the jsonl dataset)
    kind: str
    reference: str | None = None
    numbers: tuple[int, ...] = ()
    meta: str = ""
    #: difficulty bucket the summary breaks accuracy down by (a row range, an operand count)
    group: str = ""


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


def parse_arm(spec: str, config: AppConfig | None = None) -> tuple[str, str, Budget]:
    """``"best_of_n:samples=16"`` -> (row name, strategy, budget).

    Fields are ``Budget``'s; a strategy's own constructor options (``threshold`` and
    ``adaptive`` of self-consistency) are accepted too and read by ``arm_options``.
    """
    name, _, params = spec.partition(":")
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    data = (config or AppConfig()).strategies.budget(name).model_dump()
    options = _strategy_options(name)
    for kv in filter(None, params.split(",")):
        key, _, value = kv.partition("=")
        if key in options:
            continue
        if key not in data:
            valid = ", ".join([*data, *options])
            raise ValueError(f"unknown budget field {key!r}; valid: {valid}")
        data[key] = float(value) if key == "temperature" else int(value)
    return spec, name, Budget(**data)


def _strategy_options(strategy: str) -> dict[str, inspect.Parameter]:
    """The keyword options of ``strategy``'s constructor (none for most strategies)."""
    params = inspect.signature(strategy_class(strategy).__init__).parameters
    return {k: params[k] for k in strategy_options(strategy_class(strategy))}


def arm_options(spec: str) -> dict[str, Any]:
    """Constructor options named in an arm spec, e.g. ``self_consistency:threshold=0.9``."""
    name, _, params = spec.partition(":")
    options = _strategy_options(name)
    out: dict[str, Any] = {}
    for kv in filter(None, params.split(",")):
        key, _, value = kv.partition("=")
        if key in options:
            default = options[key].default
            out[key] = bool(int(value)) if isinstance(default, bool) else type(default)(value)
    return out


def load_items(
    dataset: str,
    *,
    rows: str = "900-999",
    path: Path | None = None,
    per_count: int = 10,
    limit: int | None = None,
    seed: int = 0,
) -> list[Item]:
    """Items of ``dataset``: ``game24`` (CSV ``rows`` a-b), ``arithmetic`` (held-out
    questions, ``per_count`` per operand count 2-8) or ``jsonl`` (``question``/``answer``
    lines, GSM8K style, answers after ``####``)."""
    items: list[Item] = []
    if dataset == "game24":
        if path is None:
            raise ValueError("game24 needs --data PATH (game24.csv)")
        puzzles = read_csv_puzzles(path)
        for part in rows.split(","):
            lo, _, hi = part.strip().partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                if i < len(puzzles):
                    items.append(
                        Item(
                            f"g24-{i}",
                            puzzle_text(puzzles[i]),
                            "game24",
                            numbers=puzzles[i],
                            meta=f"row {i}",
                            group=f"rows {part.strip()}",
                        )
                    )
    elif dataset == "arithmetic":
        for j, q in enumerate(heldout_questions(per_count)):
            items.append(
                Item(
                    f"ar-{j}",
                    q.text(),
                    "arithmetic",
                    str(q.answer()),
                    meta=f"{q.operands} operands",
                    group=f"{q.operands} operands",
                )
            )
    elif dataset == "jsonl":
        if path is None:
            raise ValueError("jsonl needs --data PATH")
        with open(path) as f:
            for j, line in enumerate(f):
                row = json.loads(line)
                ref = reference_answer(row.get("answer"))
                items.append(Item(f"q-{j}", row["question"], "math", ref, group="jsonl"))
    else:
        raise ValueError(f"unknown dataset {dataset!r}; valid: game24, arithmetic, jsonl")
    if limit is not None and limit < len(items):
        items = random.Random(seed).sample(items, limit)
    return items


def grade(item: Item, text: str) -> bool:
    """Grading by the item's task profile: its exact checker (Game of 24), else its answer
    format against the reference (the bundled ``Answer:`` line, GSM8K/MATH answers)."""
    return is_correct(_PROFILES.task_named(item.kind), item.text, text, item.reference)


def item_seed(item: Item) -> int:
    """A per-item sampling seed that is the same in every process (``hash`` is salted)."""
    return zlib.crc32(item.id.encode()) % 100_000


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


def oracle_records(records: list[dict[str, Any]], rows: list[str]) -> list[dict[str, Any]]:
    """The ``oracle`` row, known after the fact: per item the cheapest of ``rows`` that solved
    it (unsolved items cost the cheapest row's tokens)."""
    by_item: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["row"] in rows:
            by_item.setdefault(r["item"], []).append(r)
    out = []
    for item, rs in by_item.items():
        solved = [r for r in rs if r["correct"]]
        best = min(solved or rs, key=lambda r: r["tokens"])
        out.append(
            {
                **best,
                "row": "oracle",
                "strategy": f"oracle:{best['row']}",
                "correct": bool(solved),
                "item": item,
            }
        )
    return out


def summarise(records: list[dict[str, Any]], *, by_group: bool = False) -> list[dict[str, Any]]:
    """Accuracy, mean tokens, samples and latency per row, in the order rows appear.

    With ``by_group`` one entry per (row, item group), each with a ``group`` field: how a
    strategy fares per difficulty bucket (row range, operand count).
    """
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        key = (r["row"], str(r.get("group", "")) if by_group else "")
        rows.setdefault(key, []).append(r)
    out = []
    for (name, group), rs in rows.items():
        out.append(
            {
                "row": name,
                **({"group": group} if by_group else {}),
                "items": len(rs),
                "accuracy": statistics.fmean(float(r["correct"]) for r in rs),
                "mean_tokens": statistics.fmean(r["tokens"] for r in rs),
                "mean_hidden_tokens": statistics.fmean(r.get("hidden_tokens", 0) for r in rs),
                "mean_samples": statistics.fmean(r["samples"] for r in rs),
                "p50_latency_ms": statistics.median(r["latency_ms"] for r in rs),
            }
        )
    return out


#: rows known only after the fact: drawn for reference, never on the frontier
REFERENCE_ROWS = ("oracle",)


def pareto(summary: list[dict[str, Any]]) -> list[str]:
    """Rows not beaten on both accuracy and tokens by another row (reference rows such as the
    oracle, which no policy can run, are left out)."""
    summary = [s for s in summary if s["row"] not in REFERENCE_ROWS]
    front = []
    for a in summary:
        if not any(
            b["accuracy"] >= a["accuracy"]
            and b["mean_tokens"] < a["mean_tokens"]
            or b["accuracy"] > a["accuracy"]
            and b["mean_tokens"] <= a["mean_tokens"]
            for b in summary
        ):
            front.append(a["row"])
    return front


def plot(summary: list[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy against mean generated tokens, frontier joined."""
    # matplotlib is heavy and only the plot needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = set(pareto(summary))
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for s in summary:
        on = s["row"] in front
        ref = s["row"] in REFERENCE_ROWS
        ax.scatter(
            s["mean_tokens"],
            s["accuracy"],
            s=90 if ref else 60 if on else 30,
            marker="*" if ref else "o",
            color="#999999" if ref else "#cc3311" if on else "#4477aa",
            zorder=3,
        )
        ax.annotate(
            s["row"],
            (s["mean_tokens"], s["accuracy"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    pts = sorted((s["mean_tokens"], s["accuracy"]) for s in summary if s["row"] in front)
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="#cc3311", lw=1, zorder=2)
    ax.set_xscale("log")
    ax.margins(x=0.25)  # room for the labels of the rightmost rows
    ax.set_xlabel("mean generated tokens per item (log)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
) -> dict[str, Any]:
    """Run every arm (and ``extra_rows``) over ``items``; writes JSON and a PNG beside it.

    Returns (and writes) ``summary`` (per row: accuracy, mean tokens, samples, latency),
    ``by_group`` (the same per difficulty bucket), ``pareto`` (rows on the frontier) and
    ``records`` (one per item and row). Rows run one after the other, ``concurrency`` items
    at a time through one micro-batched model, so latencies are comparable between rows.

    ``extra_rows`` maps a row name to an async callable ``item -> StrategyResult`` (a later
    policy's row); ``auto`` adds the router's row (``router_model``, default the bundled
    one); ``oracle`` adds the cheapest fixed arm that solved each item, known after the fact.
    ``backend`` replaces the model (tests); otherwise ``model_dir`` (default: the bundled
    model) is loaded on ``device`` with ``torch_threads`` intra-op threads (0: torch's
    default). One thread is the default because on a CPU shared with other work torch's
    spinning thread pool made decoding 10-100x slower (measured: 56 tokens in 3 s with two
    threads on a busy 2-core machine, 0.2 s with one).
    """
    specs = [parse_arm(a) for a in arms]
    records: list[dict[str, Any]] = []

    async def main() -> None:
        be = backend or load_model(model_dir, device, torch_threads)
        rows: list[tuple[str, Runner]] = [
            (name, strategy_runner(be, strat, budget, timeout_s, arm_options(name)))
            for name, strat, budget in specs
        ] + list((extra_rows or {}).items())
        if auto:
            rows.append(("auto", auto_runner(be, router_model, timeout_s)))
        records.extend(await _run_rows(rows, items, concurrency, progress))
        await be.close()

    t0 = time.time()
    asyncio.run(main())
    if oracle:
        records.extend(oracle_records(records, [name for name, _, _ in specs]))
    summary = summarise(records)
    result = {
        "title": title,
        "items": len(items),
        "arms": {name: {"strategy": s, "budget": b.model_dump()} for name, s, b in specs},
        "summary": summary,
        "by_group": summarise(records, by_group=True),
        "pareto": pareto(summary),
        "seconds": round(time.time() - t0, 1),
        "records": records,
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2, default=str))
    plot(summary, out_json.with_suffix(".png"), title or out_json.stem)
    return result
