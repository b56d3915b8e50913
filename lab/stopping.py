"""Choosing self-consistency's stopping rule on recorded fixed votes (a lab study).

``collect`` runs the fixed vote (``self_consistency`` with adaptive stopping off, N samples
in batches) on every item through ``RouterService``, the serving code, and records each
sample's voting key and whether it is correct, in draw order. A batch's samples depend only
on the item's seed and the batch index, so an adaptive run draws exactly the first batches
of the fixed run, and replaying a stopping rule on the recorded prefixes approximates the
live strategy (ties are broken by log-probability live, by first seen here). The study
only picks the rule, on calibration items; the numbers that count are measured live on the
held-out pools (``docs/benchmarks.md``).

    python -m lab.stopping collect --data runs/bundled-calibration.jsonl --out runs/sc16.json
    python -m lab.stopping evaluate runs/sc16.json
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from policies.self_consistency import DISPERSED_SHARE
from policies.stopping import beta_settled, vote_settled
from router.commands.bench import ItemRun, bench_config, user_spec
from router.commands.calibrate import item_seed, local_backend
from router.commands.calibration_data import load_items
from router.config import AppConfig, load_config
from router.core.assembly import make_service
from tasks.grading import is_correct

app = typer.Typer(add_completion=False, no_args_is_help=True)

Rule = Callable[[list[str | None], int], bool]


async def _collect(
    config: AppConfig, data: Path, samples: int, batch: int, limit: int | None, concurrency: int
) -> list[dict[str, Any]]:
    items, _ = load_items(data, limit=limit, eval_percent=0)
    cfg = bench_config(config, {"self_consistency": {"adaptive": False}})
    backend = local_backend(cfg, "cpu", 1)
    service = make_service(cfg, backend)
    await service.start()
    sem = asyncio.Semaphore(concurrency)

    async def one(item: Any) -> dict[str, Any] | None:
        spec = service.validate.check(
            user_spec(
                item.text,
                item_seed(item.id),
                strategy="self_consistency",
                budget={"samples": samples, "batch_size": batch},
                deadline_ms=120_000,
            )
        )
        problem = spec.problem
        if problem.task.answers.name == "none" or item.reference is None:
            return None
        async with sem:
            served = await service.answer(spec)
        res = served.results[0]
        task = problem.task
        return {
            "id": item.id,
            "task": task.kind,
            "keys": [task.vote_key(c.answer) for c in res.candidates],
            "correct": [
                is_correct(task, item.text, c.text, item.reference) for c in res.candidates
            ],
            "fixed_correct": is_correct(task, item.text, res.text, item.reference),
            "tokens": ItemRun.served(served, "sc").tokens,
        }

    out = await asyncio.gather(*(one(i) for i in items))
    await backend.close()
    return [r for r in out if r is not None]


@app.command()
def collect(
    data: Annotated[Path, typer.Option(help="JSONL of question/answer (calibration data).")],
    out: Annotated[Path, typer.Option(help="Where to write the recorded votes.")],
    config: Annotated[Path | None, typer.Option(help="Service config (the backend).")] = None,
    samples: int = 16,
    batch: int = 4,
    limit: int | None = None,
    concurrency: int = 8,
) -> None:
    """Record the fixed vote of ``samples`` on every item with an extractable answer."""
    records = asyncio.run(_collect(load_config(config), data, samples, batch, limit, concurrency))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"samples": samples, "batch": batch, "items": records}))
    typer.echo(f"recorded {len(records)} items to {out}")


def replay(record: dict[str, Any], batch: int, rule: Rule | None) -> tuple[bool, int]:
    """(correct, samples) of the vote that stops by ``rule`` (None: never) on the recorded
    samples, checked after each batch as the strategy does."""
    keys, correct = record["keys"], record["correct"]
    key_correct = {k: c for k, c in zip(keys, correct, strict=True) if k is not None}
    drawn = 0
    while drawn < len(keys):
        drawn = min(len(keys), drawn + batch)
        if rule is not None and drawn < len(keys) and rule(keys[:drawn], len(keys)):
            break
    votes = Counter(k for k in keys[:drawn] if k is not None).most_common()
    return (bool(key_correct.get(votes[0][0])) if votes else False), drawn


def rules() -> dict[str, Rule]:
    """The rules compared: Adaptive-Consistency's Beta stop, the settled-vote stop."""

    def counts(keys: list[str | None]) -> tuple[list[int], int]:
        c = Counter(k for k in keys if k is not None)
        return sorted(c.values(), reverse=True), sum(1 for k in keys if k is None)

    def beta(t: float) -> Rule:
        # as the strategy's rule="beta": the Beta stop, or the futility stop when the leader
        # holds at most DISPERSED_SHARE of the samples drawn
        def rule(keys: list[str | None], n: int) -> bool:
            c = counts(keys)[0]
            return beta_settled(c, t) or (c[0] if c else 0) <= DISPERSED_SHARE * len(keys)

        return rule

    def settled(t: float) -> Rule:
        return lambda keys, n: vote_settled(*counts(keys), len(keys), n, t)

    return {
        "beta 0.95": beta(0.95),
        **{f"settled {t}": settled(t) for t in (0.8, 0.9, 0.95, 0.99)},
    }


@app.command()
def evaluate(votes: Path) -> None:
    """Accuracy and samples of each rule against the fixed vote, per task."""
    data = json.loads(votes.read_text())
    batch = data["batch"]
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in data["items"]:
        by_task.setdefault(r["task"], []).append(r)
    for task, recs in sorted(by_task.items()):
        fixed = statistics.fmean(replay(r, batch, None)[0] for r in recs)
        typer.echo(f"{task}: {len(recs)} items, fixed vote of {data['samples']}: {fixed:.3f}")
        for name, rule in rules().items():
            runs = [replay(r, batch, rule) for r in recs]
            acc = statistics.fmean(c for c, _ in runs)
            mean_s = statistics.fmean(s for _, s in runs)
            typer.echo(
                f"  {name:<14} acc {acc:.3f} ({acc - fixed:+.3f})  samples {mean_s:5.2f} "
                f"({data['samples'] / mean_s:.2f}x fewer)"
            )


if __name__ == "__main__":
    app()
