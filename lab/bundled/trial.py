"""Recipe trials: train one expert with changed settings and measure it
(``python -m lab trial-recipe``).

The shipped recipe in ``train.EXPERTS`` was chosen from trials like these. A trial trains a
single expert on one thread, exactly as ``python -m lab train-model`` trains each expert side
by side on a 2-core machine, so its ``train_seconds`` is the figure the 15-minute budget is about.
It then scores the expert on its own task: arithmetic by operand count (greedy, majority of
16, one sample) or Game of 24 rows 900-999 (greedy, per sample, best-of-N).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from backends.bundled.tasks import game24
from lab.bundled import benchmark
from lab.bundled.train import EXPERTS, TINY, train_model

#: Fields of ``train.Recipe`` a trial may change.
TRIAL_FIELDS = (
    "steps",
    "batch_size",
    "lr",
    "n_layer",
    "n_embd",
    "n_positions",
    "arithmetic_uniform_from",
    "arithmetic_random_order",
    "arithmetic_split_products",
    "arithmetic_inline_split",
)


def run_trial(
    expert: str,
    out_dir: Path,
    data_csv: Path,
    overrides: dict[str, Any],
    seed: int = 0,
    per_count: int = 50,
    samples: int = 32,
    temperature: float = 0.8,
    tiny: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``expert`` with ``overrides`` on one thread into ``out_dir`` and benchmark it.

    Returns (and writes to ``out_dir/trial.json``) the recipe, training seconds and final
    loss, and the task's scores. ``tiny`` starts from the smoke-test recipe instead of the
    shipped one (for tests).
    """
    if expert not in EXPERTS:
        raise ValueError(f"unknown expert {expert!r}; valid: {', '.join(EXPERTS)}")
    unknown = set(overrides) - set(TRIAL_FIELDS)
    if unknown:
        raise ValueError(f"cannot override {sorted(unknown)}; valid: {', '.join(TRIAL_FIELDS)}")
    shipped = EXPERTS[expert][1]
    base = replace(TINY, p_game24=shipped.p_game24) if tiny else shipped
    recipe = replace(base, **overrides)
    training = train_model(
        out_dir,
        data_csv,
        seed=seed,
        recipe=recipe,
        threads=1,
        label=f"trial {expert}",
        progress=progress,
    )
    # torch and transformers are heavy: imported only when a trial runs.
    from backends.transformers_backend import TransformersBackend

    t0 = time.time()
    # Static batching: no decode thread to shut down, and the same path as the benchmark.
    backend = TransformersBackend.from_pretrained(out_dir, device="cpu", batching="static")
    if expert == "arithmetic":
        scores = benchmark.arithmetic_report(backend, per_count, 16, temperature)
    else:
        rows = game24.read_csv_puzzles(data_csv)[900:1000]
        scores = benchmark.game24_report(backend, rows, samples, temperature)
    scores.pop("pass_rates", None)
    result = {
        "expert": expert,
        "overrides": overrides,
        "recipe": asdict(recipe),
        "train_seconds": training["train_seconds"],
        "final_loss": training["final_loss"],
        "temperature": temperature,
        "eval_seconds": round(time.time() - t0, 1),
        "scores": scores,
    }
    (out_dir / "trial.json").write_text(json.dumps(result, indent=2))
    return result
