"""The lab's command line: train and study the bundled model (``python -m lab --help``).

Nothing here is part of the product: the service never imports ``lab``, and ``pip install .``
does not install it. Other studies run as modules, e.g. ``python -m lab.stopping``.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from backends.bundled.paths import bundled_model_path
from lab.bench_serving import run_serving_benchmark
from lab.bundled.benchmark import run_model_benchmark
from lab.bundled.calibration import write_calibration_data
from lab.bundled.model_card import card_measurements, write_model_card
from lab.bundled.train import train_bundle
from lab.bundled.trial import run_trial

app = typer.Typer(
    name="lab",
    help="Train and study the bundled model and the router (not part of the product).",
    no_args_is_help=True,
    add_completion=False,
)

DEFAULT_GAME24_CSV = Path("../shared/data/game24.csv")


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
    metrics = train_bundle(output_dir, data_csv, seed=seed, tiny=tiny, progress=True, device=device)
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
        training = json.loads((directory / "training.json").read_text())
        command = shlex.join(["python", "-m", "lab", *sys.argv[1:]])
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
    result = run_serving_benchmark(url, out_json, requests=requests)
    typer.echo(json.dumps(result, indent=2))


@app.command("calibration-data")
def calibration_data(
    out: Annotated[Path, typer.Option(help="JSONL to write.")] = Path(
        "runs/bundled-calibration.jsonl"
    ),
    data_csv: Annotated[Path, typer.Option(help="game24.csv")] = Path("../shared/data/game24.csv"),
) -> None:
    """Write the bundled router's calibration data (disjoint from every evaluation pool)."""

    n = write_calibration_data(data_csv, out)
    typer.echo(f"wrote {n} items to {out}; calibrate with: acr calibrate --data {out}")


def main() -> None:
    """Entry point of ``python -m lab``."""
    app()


if __name__ == "__main__":
    main()
