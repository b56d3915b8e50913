"""The bundled model's card: data, held-out sets, recipe, measured metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _threads(m: dict[str, Any]) -> str:
    """How many threads trained an expert, with the step of any change."""
    schedule = m.get("thread_schedule") or [(0, m["torch_threads"])]
    parts = [f"{n} thread(s)" + (f" from step {step}" if step else "") for step, n in schedule]
    return ", then ".join(parts)


def _split_products_text(recipe: dict[str, Any]) -> str:
    """How the recipe writes two-digit products, for the card ("" for one line each)."""
    share = float(recipe.get("arithmetic_split_products") or 0.0)
    if not share:
        return ""
    which = "each two-digit product" if share >= 1 else f"{share:.0%} of two-digit products"
    if recipe.get("arithmetic_inline_split"):
        return f", {which} with its units and tens parts and their sum (`3700*7=1200+0940=1150`)"
    return f", {which} as tens and units on lines of their own"


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {str(k): _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def card_measurements(report: dict[str, Any], command: str) -> dict[str, Any]:
    """The card's "Measured" block from a ``python -m lab bench-model`` report (floats to 3
    places).

    Per-item pass rates are left out (they are plotted beside the report's JSON).
    """
    measured: dict[str, Any] = {
        "command": command,
        "temperature": report["temperature"],
        "samples_per_item": report["samples"],
    }
    for key in ("game24_900_999", "game24_0_99", "arithmetic"):
        measured[key] = _rounded({k: v for k, v in report[key].items() if k != "pass_rates"})
    for key in ("game24_heldout_greedy", "arithmetic_2_operands", "speed"):
        if key in report:  # reports from before a measurement was added lack it
            measured[key] = _rounded(report[key])
    measured["pass_rate_histograms"] = "bench-out/model.png (per-item pass rates, both tasks)"
    return measured


def write_model_card(
    model_dir: Path, training: dict[str, Any], benchmark: dict[str, Any] | None
) -> Path:
    """Write ``MODEL_CARD.md`` in ``model_dir``; returns its path."""
    experts = training["experts"]
    g, a = experts["game24"], experts["arithmetic"]
    lines = [
        "# acr-bundled: a tiny reasoning model trained by this project",
        "",
        "Two GPT-2 causal LMs trained from scratch by `python -m lab train-model` on tasks with exactly",  # noqa: E501 - the card's own line
        "checkable answers, one per task, sharing one tokenizer and chat template. It exists so",
        "that the router can be built, tested and benchmarked offline: its accuracy falls with",
        "difficulty, more samples and search raise it, and its confidence predicts its failures.",
        "`bundle.json` maps each prompt's task token to its expert (`<24>` -> `game24/`,",
        "`<calc>` -> `arithmetic/`); `TransformersBackend` routes by it, and each expert is an",
        "ordinary checkpoint that loads through `AutoModelForCausalLM` on its own.",
        "",
        "## Data",
        "",
        "- Game of 24, Tree-of-Thoughts step format (`a op b=c (left: ...)`, then",
        "  `Answer: <expr> = 24`), all solutions of each puzzle from the project's exact solver",
        "  (fractions in brackets, `+`/`*` small operand first, no negative intermediates);",
        "  each example is one puzzle with one of its solutions drawn uniformly.",
        "- Arithmetic, 2-8 operands of 1-2 digits, `+ - *` (times a single digit), products",
        "  first then "
        + (
            "the terms in a random valid order per example"
            if a["recipe"].get("arithmetic_random_order")
            else "left to right"
        )
        + _split_products_text(a["recipe"])
        + ", one step per line, numbers as 4-digit ten's",
        "  complement written least-significant digit first (`0700*3=0120`,",
        "  `1210-0120=1199`), a negation line for a negative total, then the answer line in",
        "  ordinary notation (`Answer: -89`). A curriculum favours few operands early.",
        "",
        "## Held out (never trained on)",
        "",
        "- Every puzzle in rows 0-99 and 900-999 of `game24.csv` (ToT's test slice is 900-999)",
        "  and a fixed seeded 10% of the other solvable puzzles "
        f"({g['heldout_puzzles']} puzzles held out, {g['train_puzzles']} trained).",
        "- Arithmetic evaluation questions come from their own seed and are filtered out of",
        "  the training stream.",
        "",
        "## Recipe",
        "",
    ]
    for name, m in (("game24", g), ("arithmetic", a)):
        r = m["recipe"]
        lines += [
            f"- `{name}/`: GPT-2, {r['n_layer']} layers, width {r['n_embd']}, {r['n_head']} "
            f"heads, context {r['n_positions']}; {m['parameters']:,} parameters. AdamW lr "
            f"{r['lr']} (warm-up {r['warmup_steps']}, cosine to {r['min_lr_fraction']}), betas "
            f"(0.9, 0.98), weight decay {r['weight_decay']}, batch {r['batch_size']}, "
            f"{r['steps']} steps, bf16 autocast {r['bf16_autocast']}, "
            f"{r.get('attn_implementation', 'sdpa')} attention, "
            f"{r.get('activation_function', 'gelu_new')} activation, gradient clip 1.0, loss "
            f"on responses only; {m['train_seconds']} s on {_threads(m)}; "
            f"final training loss {m['final_loss']} per token.",
        ]
    lines += [
        "- Character tokens plus `<24>`, `<calc>`, `(left: `, `Answer: `.",
        f"- Seed {training['seed']}; both experts "
        f"{'side by side' if training['parallel'] else 'one after the other'} on "
        f"{training['cpu_cores']} CPU cores: {training['wall_seconds']} s wall-clock.",
        "",
    ]
    if benchmark:
        lines += ["## Measured", "", "```json", json.dumps(benchmark, indent=2), "```", ""]
    path = model_dir / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path
