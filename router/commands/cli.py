"""The ``acr`` command line: serve, show the config, benchmark, train the router.

Commands that need Ray or torch import them when they run, so that ``acr --help`` is instant.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from difficulty.train import load_stream
from difficulty.train import train_router as fit_router
from policies.registry import BENCH_ARMS, default_arms
from router.commands import cli_options as option
from router.commands.calibration_data import CalibrationDataError
from router.config import ConfigError, config_to_yaml, load_config

app = typer.Typer(
    name="acr",
    help="Adaptive compute router: an OpenAI-compatible service that decides how much "
    "inference-time compute each request gets.",
    no_args_is_help=True,
    add_completion=False,
)

DEFAULT_GAME24_CSV = Path("../shared/data/game24.csv")


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML config file.", exists=True)
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (overrides config).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (overrides config).")] = None,
) -> None:
    """Start a local Ray instance, Redis (embedded unless configured) and the service.

    SIGHUP rereads --config: its policy, strategies and limits apply in place, a change to
    any other section rebuilds the application (rolling). SIGTERM or Ctrl-C drains: new
    requests get a 503, those running finish, then it exits."""
    from router.serving.local import serve_forever

    raise typer.Exit(serve_forever(config, host=host, port=port))


@app.command("show-config")
def show_config(
    config: Annotated[Path | None, typer.Option("--config", "-c", exists=True)] = None,
) -> None:
    """Print the effective configuration (file + ACR_* environment) as YAML."""

    try:
        typer.echo(config_to_yaml(load_config(config)))
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc


@app.command()
def bench(
    dataset: option.BenchDataset = "game24",
    data: option.BenchData = None,
    rows: option.BenchRows = "900-999",
    per_count: option.BenchPerCount = 10,
    limit: option.BenchLimit = None,
    arm: option.BenchArms = None,
    model_dir: option.BenchModelDir = None,
    out_json: option.BenchOutJson = Path("bench-out/bench.json"),
    concurrency: option.BenchConcurrency = 16,
    timeout_s: option.BenchTimeout = 120.0,
    device: option.BenchDevice = "cpu",
    threads: option.BenchThreads = 1,
    auto: option.BenchAuto = True,
    oracle: option.BenchOracle = True,
    groups: option.BenchGroups = False,
    pool: option.BenchPool = None,
) -> None:
    """Run strategies over a dataset slice: JSON per item and an accuracy/tokens plot.

    Each --arm is a strategy with budget overrides, e.g. ``best_of_n:samples=16`` or
    ``beam_search:beam_width=3,expansions=8``; the PNG beside the JSON plots accuracy against
    mean generated tokens with the Pareto frontier.
    """
    from router.commands.bench import load_items, run_bench

    if dataset == "game24" and data is None:
        data = DEFAULT_GAME24_CSV
    try:
        items = load_items(dataset, rows=rows, path=data, per_count=per_count, limit=limit)
        pool_config = load_config(pool) if pool is not None else None
        if pool_config is not None and not pool_config.backends:
            raise ValueError(f"--pool {pool} has no backends: it is not a pool")
        result = run_bench(
            items,
            arm or list(BENCH_ARMS),
            out_json,
            model_dir=model_dir,
            concurrency=concurrency,
            timeout_s=timeout_s,
            device=device,
            torch_threads=threads,
            auto=auto,
            oracle=oracle,
            pool=pool_config,
            title=f"{dataset} {rows if dataset == 'game24' else ''}".strip(),
        )
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    _echo_bench(result, groups)
    typer.echo(f"wrote {out_json} and {out_json.with_suffix('.png')}")


def _echo_bench(result: dict[str, Any], groups: bool) -> None:
    """Print a bench's summary, one line per row (with ``groups`` also per item group)."""
    for s in result["summary"]:
        typer.echo(
            f"{s['row']:<45} acc {s['accuracy']:.3f}  tokens {s['mean_tokens']:8.1f}  "
            f"samples {s['mean_samples']:5.1f}"
        )
    if groups:
        for s in result["by_group"]:
            typer.echo(
                f"{s['row']:<45} {s['group']:<14} acc {s['accuracy']:.3f}  "
                f"tokens {s['mean_tokens']:8.1f}  samples {s['mean_samples']:5.1f}"
            )


@app.command()
def calibrate(
    data: option.CalibrateData,
    profile: option.CalibrateProfile = None,
    config: option.CalibrateConfig = None,
    out: option.CalibrateOut = Path("calibration"),
    question_field: option.CalibrateQuestionField = "question",
    answer_field: option.CalibrateAnswerField = "answer",
    answer_marker: option.CalibrateAnswerMarker = "####",
    eval_percent: option.CalibrateEvalPercent = 30,
    limit: option.CalibrateLimit = None,
    arm: option.CalibrateArms = None,
    concurrency: option.CalibrateConcurrency = 4,
    timeout_s: option.CalibrateTimeout = 120.0,
    device: option.CalibrateDevice = "cpu",
    threads: option.CalibrateThreads = 1,
    restart: option.CalibrateRestart = False,
    version: option.CalibrateVersion = "router-calibrated",
    backend: option.CalibrateBackend = None,
) -> None:
    """Fit the router to the configured backend (each backend of a pool) on your data, and
    report how it does.

    Runs every arm on every question through the serving code, grades the answers with the
    profile's checker, fits the router on the fit part, chooses the cost weight there, runs
    auto live on the held-out part and writes router.skops, report.md, report.json and
    pareto.png to --out. Interrupted runs resume.
    """
    from router.commands.calibrate import CalibrationPlan, arms_from_specs, pool_members
    from router.commands.calibrate import calibrate as run_calibration

    try:
        cfg = load_config(config)
        members = pool_members(cfg, backend)
        for name, member in members:
            where = out / name if len(members) > 1 else out
            plan = CalibrationPlan(
                data=data,
                out_dir=where,
                profile=profile,
                question_field=question_field,
                answer_field=answer_field or None,
                answer_marker=answer_marker or None,
                eval_percent=eval_percent,
                limit=limit,
                concurrency=concurrency,
                timeout_s=timeout_s,
                version=version,
                pool_backend=name if cfg.backends else None,
            )
            if arm:
                plan.arms = arms_from_specs(arm, member)
            report = asyncio.run(
                run_calibration(plan, member, device=device, torch_threads=threads, restart=restart)
            )
            _echo_calibration(report, where)
    except (ConfigError, CalibrationDataError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _echo_calibration(report: dict[str, Any], out: Path) -> None:
    """Print a calibration's summary and verdict, and how to use the model it wrote."""
    for s in report["summary"]:
        lo, hi = s["ci95"]
        typer.echo(
            f"{s['row']:<28} acc {s['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]  "
            f"tokens {s['mean_tokens']:8.1f}"
        )
    for line in report["verdict"]:
        typer.echo(line)
    typer.echo(f"\nwrote {out}/report.md, report.json, pareto.png and router.skops. Use it:\n")
    typer.echo("\n".join(report["use"]))


@app.command("train-router")
def train_router(
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="Item labels (.jsonl from `python -m lab.labels`), outcome-log exports "
            "(.jsonl) and `acr bench` results (.json).",
            exists=True,
        ),
    ],
    out: Annotated[Path, typer.Option(help="Where to write the router model (.skops).")] = Path(
        "runs/router.skops"
    ),
    version: Annotated[str, typer.Option(help="Model version (part of every Redis key).")] = (
        "router-v1"
    ),
    probe_tokens: Annotated[int, typer.Option(help="Probe length the labels were made with.")] = 64,
    redis_url: Annotated[
        str | None, typer.Option(help="Also read the outcome stream from this Redis.")
    ] = None,
    stream: Annotated[str, typer.Option(help="Outcome stream key.")] = "acr:outcomes",
) -> None:
    """Fit the difficulty/router model from logged outcomes; prints AUROC and Brier score."""

    paths = list(sources)
    if redis_url:
        records = asyncio.run(load_stream(redis_url, stream))
        tmp = Path(tempfile.mkdtemp(prefix="acr-stream-")) / "stream.jsonl"
        tmp.write_text("\n".join(json.dumps(r) for r in records))
        typer.echo(f"read {len(records)} outcomes from {stream}")
        paths.append(tmp)
    metrics = fit_router(
        paths, out, arms=default_arms(), version=version, probe_tokens=probe_tokens
    )
    typer.echo(json.dumps(metrics, indent=2))


def main() -> None:
    """Entry point of the ``acr`` console script."""
    app()


if __name__ == "__main__":
    main()
