"""The ``acr`` command line: serve, train the bundled model and the router, benchmark.

Every command imports its heavy dependencies lazily so that ``acr --help`` is instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

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
    """Start a local Ray instance, Redis (embedded unless configured) and the service."""
    from router.serve_local import serve_forever

    raise typer.Exit(serve_forever(config, host=host, port=port))


@app.command("show-config")
def show_config(
    config: Annotated[Path | None, typer.Option("--config", "-c", exists=True)] = None,
) -> None:
    """Print the effective configuration (file + ACR_* environment) as YAML."""
    from router.config import ConfigError, config_to_yaml, load_config

    try:
        typer.echo(config_to_yaml(load_config(config)))
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc


@app.command("train-model")
def train_model(
    output_dir: Annotated[Path, typer.Option(help="Where to write the checkpoint.")] = Path(
        "runs/bundled-model"
    ),
    data_csv: Annotated[
        Path, typer.Option(help="game24.csv (rows 0-99 and 900-999 are held out).")
    ] = DEFAULT_GAME24_CSV,
    seed: Annotated[int, typer.Option(help="Seed that fixes data, init and sampling.")] = 0,
    tiny: Annotated[bool, typer.Option(help="A few steps on a tiny config (smoke test).")] = False,
    device: Annotated[str, typer.Option(help="cpu (as shipped) or cuda.")] = "cpu",
) -> None:
    """Train the bundled model (both experts) from scratch and write it with its card."""
    from backends.bundled.train import train_bundle

    metrics = train_bundle(output_dir, data_csv, seed=seed, tiny=tiny, progress=True,
                           device=device)
    typer.echo(f"wrote {output_dir} in {metrics['wall_seconds']} s")


@app.command("bench-model")
def bench_model(
    model_dir: Annotated[Path | None, typer.Option(help="Checkpoint; default bundled.")] = None,
    data_csv: Annotated[Path, typer.Option(help="game24.csv")] = DEFAULT_GAME24_CSV,
    out_json: Annotated[Path, typer.Option(help="Where to write results.")] = Path(
        "bench-out/model.json"
    ),
    samples: Annotated[int, typer.Option(help="Samples per item.")] = 32,
    arithmetic_per_count: Annotated[
        int, typer.Option(min=1, help="Held-out arithmetic questions per operand count (2-8).")
    ] = 100,
    temperature: Annotated[
        float, typer.Option(min=0.05, max=2.0, help="Sampling temperature (greedy is separate).")
    ] = 0.8,
    update_card: Annotated[
        bool, typer.Option(help="Rewrite the checkpoint's MODEL_CARD.md with these numbers.")
    ] = False,
) -> None:
    """Measure the bundled model: accuracy vs samples, confidence AUROC, sampling speed."""
    from backends.bundled.benchmark import run_model_benchmark
    from backends.bundled.paths import bundled_model_path

    directory = model_dir or bundled_model_path()
    result = run_model_benchmark(
        directory,
        data_csv,
        out_json,
        samples=samples,
        temperature=temperature,
        arithmetic_per_count=arithmetic_per_count,
    )
    typer.echo(f"wrote {out_json}: {result.get('summary', '')}")
    if update_card:
        import json
        import shlex
        import sys

        from backends.bundled.model_card import card_measurements, write_model_card

        training = json.loads((directory / "training.json").read_text())
        command = shlex.join(["acr", *sys.argv[1:]])
        card = write_model_card(directory, training, card_measurements(result, command))
        typer.echo(f"updated {card}")


@app.command("trial-recipe")
def trial_recipe(
    expert: Annotated[str, typer.Option(help="Expert to train: game24 | arithmetic.")] = (
        "arithmetic"
    ),
    out_dir: Annotated[Path, typer.Option(help="Where the trial checkpoint goes.")] = Path(
        "runs/trial"
    ),
    data_csv: Annotated[Path, typer.Option(help="game24.csv")] = DEFAULT_GAME24_CSV,
    steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Examples per step.")] = None,
    lr: Annotated[float | None, typer.Option(min=0, help="Peak learning rate.")] = None,
    n_layer: Annotated[int | None, typer.Option(min=1, help="Transformer layers.")] = None,
    n_embd: Annotated[int | None, typer.Option(min=8, help="Width (a multiple of 6).")] = None,
    n_positions: Annotated[
        int | None, typer.Option(min=16, help="Context length in tokens (prompt + response).")
    ] = None,
    uniform_from: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=1,
            help="Progress by which the operand-count mix is uniform; 0 keeps favouring "
            "few operands to the end.",
        ),
    ] = None,
    random_order: Annotated[
        bool, typer.Option(help="Arithmetic scratchpads fold the terms in a random order.")
    ] = False,
    split_products: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="With --random-order: the chance that a two-digit product is written as "
            "tens and units (shipped: 1; 0 writes each product in one go).",
        ),
    ] = None,
    inline_split: Annotated[
        bool | None,
        typer.Option(
            "--inline-split/--split-lines",
            help="A split product's parts and sum on its own line (shipped), or on lines "
            "of their own.",
        ),
    ] = None,
    per_count: Annotated[
        int, typer.Option(min=1, help="Arithmetic questions per operand count.")
    ] = 50,
    seed: Annotated[int, typer.Option(help="Seed for data and init.")] = 0,
) -> None:
    """Train one expert with changed settings on one thread and score it (recipe search)."""
    from backends.bundled.trial import run_trial

    overrides: dict[str, object] = {
        k: v
        for k, v in {
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "n_layer": n_layer,
            "n_embd": n_embd,
            "n_positions": n_positions,
        }.items()
        if v is not None
    }
    if uniform_from is not None:
        overrides["arithmetic_uniform_from"] = uniform_from or None
    if random_order:
        overrides["arithmetic_random_order"] = True
    if split_products is not None:
        overrides["arithmetic_split_products"] = split_products
    if inline_split is not None:
        overrides["arithmetic_inline_split"] = inline_split
    try:
        result = run_trial(expert, out_dir, data_csv, overrides, seed=seed, per_count=per_count)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    typer.echo(json.dumps(result, indent=2))


@app.command()
def bench(
    dataset: Annotated[str, typer.Option(help="game24 | arithmetic | jsonl")] = "game24",
    data: Annotated[
        Path | None, typer.Option(help="game24.csv or a JSONL file of question/answer.")
    ] = None,
    rows: Annotated[str, typer.Option(help="game24 rows, e.g. 900-999 or 0-99,900-999.")] = (
        "900-999"
    ),
    per_count: Annotated[int, typer.Option(help="arithmetic items per operand count.")] = 10,
    limit: Annotated[int | None, typer.Option(help="Random subset of this many items.")] = None,
    arm: Annotated[
        list[str] | None,
        typer.Option("--arm", help="strategy[:field=value,...]; repeatable. Default: a sweep."),
    ] = None,
    model_dir: Annotated[Path | None, typer.Option(help="Checkpoint; default bundled.")] = None,
    out_json: Annotated[Path, typer.Option(help="Results JSON (PNG beside it).")] = Path(
        "bench-out/bench.json"
    ),
    concurrency: Annotated[int, typer.Option(help="Items in flight per row.")] = 16,
    timeout_s: Annotated[
        float, typer.Option(help="Per-item deadline; strategies return their best so far.")
    ] = 120.0,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto.")] = "cpu",
    threads: Annotated[
        int, typer.Option(help="torch intra-op threads (1 is fastest on a shared CPU).")
    ] = 1,
    auto: Annotated[bool, typer.Option(help="Add the router's auto row.")] = True,
    oracle: Annotated[bool, typer.Option(help="Add the oracle row.")] = True,
    groups: Annotated[bool, typer.Option(help="Also print accuracy per item group.")] = False,
) -> None:
    """Run strategies over a dataset slice: JSON per item and an accuracy/tokens plot.

    Each --arm is a strategy with budget overrides, e.g. ``best_of_n:samples=16`` or
    ``beam_search:beam_width=3,expansions=8``; the PNG beside the JSON plots accuracy against
    mean generated tokens with the Pareto frontier.
    """
    from router.bench import DEFAULT_ARMS, load_items, run_bench

    if dataset == "game24" and data is None:
        data = DEFAULT_GAME24_CSV
    try:
        items = load_items(dataset, rows=rows, path=data, per_count=per_count, limit=limit)
        result = run_bench(
            items,
            arm or DEFAULT_ARMS,
            out_json,
            model_dir=model_dir,
            concurrency=concurrency,
            timeout_s=timeout_s,
            device=device,
            torch_threads=threads,
            auto=auto,
            oracle=oracle,
            title=f"{dataset} {rows if dataset == 'game24' else ''}".strip(),
        )
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
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
    typer.echo(f"wrote {out_json} and {out_json.with_suffix('.png')}")


@app.command("bench-serving")
def bench_serving(
    url: Annotated[
        str | None, typer.Option(help="A running service; default: start one locally.")
    ] = None,
    out_json: Annotated[Path, typer.Option(help="Where to write results.")] = Path(
        "bench-out/serving.json"
    ),
    requests: Annotated[int, typer.Option(help="Requests for the latency percentiles.")] = 200,
) -> None:
    """Sampling throughput (n=16 in one request vs 16 requests) and ingress overhead."""
    import json as _json

    from router.bench_serving import run_serving_benchmark

    result = run_serving_benchmark(url, out_json, requests=requests)
    typer.echo(_json.dumps(result, indent=2))


@app.command("train-router")
def train_router(
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="Item labels (.jsonl from `python -m difficulty.labels`), outcome-log exports "
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
    import asyncio
    import json as _json
    import tempfile

    from difficulty.train import load_stream
    from difficulty.train import train_router as _train

    paths = list(sources)
    if redis_url:
        records = asyncio.run(load_stream(redis_url, stream))
        tmp = Path(tempfile.mkdtemp(prefix="acr-stream-")) / "stream.jsonl"
        tmp.write_text("\n".join(_json.dumps(r) for r in records))
        typer.echo(f"read {len(records)} outcomes from {stream}")
        paths.append(tmp)
    metrics = _train(paths, out, version=version, probe_tokens=probe_tokens)
    typer.echo(_json.dumps(metrics, indent=2))


def main() -> None:
    """Entry point of the ``acr`` console script."""
    app()


if __name__ == "__main__":
    main()
