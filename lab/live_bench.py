"""Measure a running router through its HTTP API, as clients see it (a lab tool).

Every item goes to ``/v1/chat/completions`` with the official ``openai`` client, from
``--clients`` concurrent clients; each row is one way of asking: ``auto`` (the router
chooses), ``effort:high`` (``reasoning_effort``), or ``strategy:<arm>`` (``acr.strategy``
with a budget, e.g. ``strategy:self_consistency:samples=16,adaptive=0``; strategy options
such as ``adaptive`` must be set in the served config). Answers are graded with the task
profiles (``tasks.grading``); open prompts are not graded. Tokens are the response's
``usage.completion_tokens`` (visible, hidden and probe). The ``router`` object gives the
samples planned and drawn, ``downgraded`` and the predicted latency, compared here with the
latency the client measured. ``--stream`` measures the time to the first streamed byte.

    python -m lab.live_bench --url http://127.0.0.1:8000/v1 --game24-rows 0-99,900-999 \\
        --arithmetic-per-count 20 --row auto --row effort:high --clients 4 --out runs/live.json
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Annotated, Any

import openai
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from router.commands.bench import Item, grade, item_seed, load_items
from router.commands.calibration_report import wilson

app = typer.Typer(add_completion=False)


def request_args(row: str) -> dict[str, Any]:
    """The chat-completion arguments of a row (``auto``, ``effort:X``, ``strategy:arm``)."""
    kind, _, spec = row.partition(":")
    if kind == "auto":
        return {}
    if kind == "effort":
        return {"reasoning_effort": spec}
    if kind == "strategy":
        name, _, params = spec.partition(":")
        budget = {}
        for kv in filter(None, params.split(",")):
            key, _, value = kv.partition("=")
            if key != "adaptive":  # a strategy option, set in the served config
                budget[key] = float(value) if key == "temperature" else int(value)
        acr: dict[str, Any] = {"strategy": name}
        if budget:
            acr["budget"] = budget
        return {"extra_body": {"acr": acr}}
    raise typer.BadParameter(f"row {row!r}: use auto, effort:low|medium|high or strategy:arm")


async def ask(
    client: openai.AsyncOpenAI, item: Item, row: str, stream: bool, timeout_s: float
) -> dict[str, Any]:
    """One item through the API: graded answer, tokens, router object, latencies."""
    args = request_args(row)
    messages: Any = [{"role": "user", "content": item.text}]
    create: Any = client.chat.completions.create  # typed overloads do not know acr fields
    t0 = time.perf_counter()
    first_byte: float | None = None
    try:
        if stream:
            text, router, usage = "", None, None
            events = await create(
                model="auto", messages=messages, seed=item_seed(item), stream=True,
                stream_options={"include_usage": True}, timeout=timeout_s, **args,
            )  # fmt: skip
            async for chunk in events:
                if first_byte is None:
                    first_byte = time.perf_counter() - t0
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                extra = chunk.model_extra or {}
                router = extra.get("router", router)
                usage = chunk.usage or usage
            tokens = usage.completion_tokens if usage else 0
        else:
            resp = await create(
                model="auto", messages=messages, seed=item_seed(item), timeout=timeout_s, **args
            )
            text = resp.choices[0].message.content or ""
            router = (resp.model_extra or {}).get("router")
            tokens = resp.usage.completion_tokens if resp.usage else 0
    except openai.APIStatusError as exc:
        return {"row": row, "item": item.id, "group": item.group, "status": exc.status_code}
    latency = time.perf_counter() - t0
    router = router or {}
    return {
        "row": row,
        "item": item.id,
        "group": item.group,
        "status": 200,
        "correct": None if item.kind == "open" else grade(item, text),
        "tokens": tokens,
        "latency_ms": round(latency * 1000, 1),
        "first_byte_ms": round(first_byte * 1000, 1) if first_byte is not None else None,
        "strategy": router.get("strategy"),
        "arm": router.get("arm"),
        "samples": router.get("samples"),
        "samples_planned": router.get("samples_planned"),
        "downgraded": router.get("downgraded"),
        # the prediction covers the run after the probe: the probe's own time is added
        "predicted_latency_ms": (router.get("predicted_latency_ms") or 0.0)
        + (router.get("probe_ms") or 0.0),
        "probe_tokens": router.get("probe_tokens"),
        "task": router.get("task"),
    }


async def run_row(
    client: openai.AsyncOpenAI,
    items: list[Item],
    row: str,
    clients: int,
    stream: bool,
    timeout_s: float,
    bar: Progress,
) -> list[dict[str, Any]]:
    """Every item of one row, from ``clients`` concurrent clients."""
    queue: asyncio.Queue[Item] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    out: list[dict[str, Any]] = []
    task = bar.add_task(f"{row} ({clients} clients)", total=len(items))

    async def worker() -> None:
        while not queue.empty():
            item = queue.get_nowait()
            out.append(await ask(client, item, row, stream, timeout_s))
            bar.advance(task)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return out


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (Wilson 95%), tokens, samples, downgrades and latency of one row."""
    ok = [r for r in records if r["status"] == 200]
    graded = [r for r in ok if r["correct"] is not None]
    right = sum(1 for r in graded if r["correct"])
    lo, hi = wilson(right, len(graded))
    ratios = [
        r["predicted_latency_ms"] / r["latency_ms"]
        for r in ok
        if r.get("predicted_latency_ms") and r["latency_ms"] > 0
    ]
    return {
        "items": len(records),
        "errors": len(records) - len(ok),
        "accuracy": right / len(graded) if graded else None,
        "ci95": [round(lo, 4), round(hi, 4)],
        "mean_tokens": statistics.fmean(r["tokens"] for r in ok) if ok else 0.0,
        "mean_samples": statistics.fmean(r["samples"] or 0 for r in ok) if ok else 0.0,
        "short_of_plan": sum(1 for r in ok if (r["samples"] or 0) < (r["samples_planned"] or 0)),
        "downgraded": sum(1 for r in ok if r["downgraded"]),
        "p50_latency_ms": statistics.median(r["latency_ms"] for r in ok) if ok else 0.0,
        "p50_first_byte_ms": (
            statistics.median(r["first_byte_ms"] for r in ok if r["first_byte_ms"] is not None)
            if any(r["first_byte_ms"] is not None for r in ok)
            else None
        ),
        "predicted_over_observed_p50": statistics.median(ratios) if ratios else None,
        "arms": dict(sorted(_count(r["arm"] for r in ok).items())),
    }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


@app.command()
def main(
    url: Annotated[str, typer.Option(help="The router's /v1 base URL.")],
    out: Annotated[Path, typer.Option(help="Results JSON.")],
    row: Annotated[list[str], typer.Option(help="auto | effort:X | strategy:arm; repeatable.")],
    api_key: Annotated[str, typer.Option(help="Bearer key.")] = "none",
    clients: Annotated[int, typer.Option(help="Concurrent clients.")] = 4,
    game24_rows: Annotated[str | None, typer.Option(help="Game of 24 CSV rows.")] = None,
    game24_csv: Path = Path("../shared/data/game24.csv"),
    arithmetic_per_count: Annotated[int, typer.Option(help="Held-out arithmetic.")] = 0,
    jsonl: Annotated[Path | None, typer.Option(help="question/answer JSONL (math).")] = None,
    open_prompts: Annotated[Path | None, typer.Option(help="Ungraded prompts JSONL.")] = None,
    limit: Annotated[int | None, typer.Option(help="First N lines of --jsonl.")] = None,
    stream: Annotated[bool, typer.Option(help="Stream, and time the first byte.")] = False,
    timeout_s: float = 300.0,
) -> None:
    """Run every row over the items through the HTTP API; write per-item records."""
    items: list[Item] = []
    if game24_rows:
        items += load_items("game24", rows=game24_rows, path=game24_csv)
    if arithmetic_per_count:
        items += load_items("arithmetic", per_count=arithmetic_per_count)
    if jsonl:
        items += load_items("jsonl", path=jsonl)[:limit]
    if open_prompts:
        for line in open_prompts.read_text().splitlines():
            obj = json.loads(line)
            items.append(Item(obj["id"], obj["question"], "open", group=obj.get("category", "")))
    if not items:
        raise typer.BadParameter("no items: give --game24-rows, --arithmetic-per-count, ...")
    client = openai.AsyncOpenAI(base_url=url, api_key=api_key, max_retries=0)

    async def go() -> dict[str, list[dict[str, Any]]]:
        results: dict[str, list[dict[str, Any]]] = {}
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()) as bar:
            for r in row:
                results[r] = await run_row(client, items, r, clients, stream, timeout_s, bar)
        return results

    t0 = time.time()
    results = asyncio.run(go())
    report: dict[str, Any] = {
        "url": url,
        "clients": clients,
        "stream": stream,
        "seconds": round(time.time() - t0, 1),
        "summary": {r: summary(recs) for r, recs in results.items()},
        "records": [x for recs in results.values() for x in recs],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for r, s in report["summary"].items():
        acc = "  -  " if s["accuracy"] is None else f"{s['accuracy']:.3f}"
        typer.echo(
            f"{r:<50} acc {acc}  tokens {s['mean_tokens']:8.1f}  samples {s['mean_samples']:5.2f}"
            f"  downgraded {s['downgraded']}  p50 {s['p50_latency_ms']:.0f} ms  "
            f"pred/obs {s['predicted_over_observed_p50']}"
        )


if __name__ == "__main__":
    app()
