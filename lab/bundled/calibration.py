"""The data the bundled router is calibrated on, disjoint from every evaluation pool.

Game of 24: the puzzles the bundled model never trained on (``game24_splits(...).heldout``)
minus the evaluation rows 0-99 and 900-999, so the router is fit where the model meets
unseen puzzles, as it will when served. Arithmetic: fresh questions from a seed of their own,
none in the fixed held-out pool (``arithmetic.heldout_questions``); the model's training
stream draws questions at random, so a few of these may have been seen in training.

``python -m lab calibration-data`` writes it as JSONL for ``acr calibrate`` (Game of 24 lines
have no reference: the exact checker grades them).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from backends.bundled.tasks import arithmetic, game24
from lab.bundled.data import HELDOUT_ROWS, game24_splits

CALIBRATION_SEED = 31_337
ARITHMETIC_PER_COUNT = 30


def calibration_lines(
    game24_csv: Path, per_count: int = ARITHMETIC_PER_COUNT
) -> list[dict[str, str | None]]:
    """The calibration items (question, answer): Game of 24 first, then arithmetic."""
    splits = game24_splits(game24_csv)
    eval_rows = {splits.csv_rows[i] for r in HELDOUT_ROWS for i in r if i < len(splits.csv_rows)}
    lines: list[dict[str, str | None]] = [
        {"question": game24.puzzle_text(p), "answer": None}
        for p in splits.heldout
        if p not in eval_rows
    ]
    pool = {q.expression() for q in arithmetic.heldout_questions(arithmetic.HELDOUT_POOL_SIZE)}
    rng = random.Random(CALIBRATION_SEED)
    seen: set[str] = set()
    for k in arithmetic.OPERAND_COUNTS:
        made = 0
        while made < per_count:
            q = arithmetic.random_question(rng, k)
            if q.expression() in pool or q.expression() in seen:
                continue
            seen.add(q.expression())
            lines.append({"question": q.text(), "answer": str(q.answer())})
            made += 1
    return lines


def write_calibration_data(
    game24_csv: Path, out: Path, per_count: int = ARITHMETIC_PER_COUNT
) -> int:
    """Write the calibration JSONL to ``out``; the number of items."""
    lines = calibration_lines(game24_csv, per_count)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return len(lines)
