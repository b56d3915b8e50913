"""The bundled model's card: data, held-out sets, recipe, measured metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_model_card(
    model_dir: Path, training: dict[str, Any], benchmark: dict[str, Any] | None
) -> Path:
    """Write ``MODEL_CARD.md`` in ``model_dir``; returns its path."""
    r = training["recipe"]
    lines = [
        "# acr-bundled: a tiny reasoning model trained by this project",
        "",
        "A GPT-2 causal LM trained from scratch by `acr train-model` on two tasks with exactly",
        "checkable answers. It exists so that the router can be built, tested and benchmarked",
        "offline: its accuracy falls with difficulty, more samples and search raise it, and its",
        "confidence predicts its failures.",
        "",
        "## Data",
        "",
        "- Game of 24, Tree-of-Thoughts step format (`a op b=c (left: ...)`, then",
        "  `Answer: <expr> = 24`), all solutions of each puzzle from the project's exact solver",
        "  (fractions in brackets, `+`/`*` small operand first, no negative intermediates);",
        "  each example is one puzzle with one of its solutions drawn uniformly.",
        "- Arithmetic, 2-8 operands of 1-2 digits, `+ - *` (times a single digit), products",
        "  first then left to right, one operation per line with numbers written",
        "  least-significant digit first; the answer line in ordinary notation.",
        "",
        "## Held out (never trained on)",
        "",
        "- Every puzzle in rows 0-99 and 900-999 of `game24.csv` (ToT's test slice is 900-999)",
        "  and a fixed seeded 10% of the other solvable puzzles "
        f"({training['heldout_puzzles']} puzzles held out, {training['train_puzzles']} trained).",
        "- Arithmetic evaluation questions come from their own seed and are filtered out of",
        "  the training stream.",
        "",
        "## Recipe",
        "",
        f"- GPT-2, {r['n_layer']} layers, width {r['n_embd']}, {r['n_head']} heads, context "
        f"{r['n_positions']}; {training['parameters']:,} parameters; character tokens plus",
        "  `<24>`, `<calc>`, `(left: `, `Answer: `.",
        f"- AdamW lr {r['lr']} (warm-up {r['warmup_steps']}, cosine to {r['min_lr_fraction']}),"
        f" betas (0.9, 0.98), weight decay {r['weight_decay']}, batch {r['batch_size']}, "
        f"{r['steps']} steps, gradient clip 1.0, loss on responses only.",
        f"- Seed {training['seed']}: {training['train_seconds']} s on "
        f"{training['torch_threads']} CPU threads; final training loss "
        f"{training['final_loss']} per token.",
        "",
    ]
    if benchmark:
        lines += ["## Measured", "", "```json", json.dumps(benchmark, indent=2), "```", ""]
    path = model_dir / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path
