"""Training and held-out data of the bundled model.

Held out, never trained on: every puzzle in rows 0-99 and 900-999 of ``game24.csv`` plus a
fixed seeded 10% of the other solvable puzzles; arithmetic evaluation items come from
``arithmetic.heldout_questions`` (their own seed) and are filtered out of training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from backends.bundled.tasks import arithmetic, game24
from tasks.bundled import model_prompt

HELDOUT_ROWS = (range(0, 100), range(900, 1000))
HELDOUT_FRACTION = 0.10
SPLIT_SEED = 24


@dataclass(frozen=True)
class Splits:
    """Puzzles by role; ``csv_rows`` keeps the file order for row-range benchmarks."""

    train: list[tuple[int, ...]]
    heldout: list[tuple[int, ...]]
    csv_rows: list[tuple[int, ...]]


def game24_splits(csv_path: Path) -> Splits:
    """Train/held-out puzzles, deterministic for a given CSV."""
    rows = game24.read_csv_puzzles(csv_path)
    held = {rows[i] for r in HELDOUT_ROWS for i in r if i < len(rows)}
    rest = sorted(set(game24.all_puzzles()) - held)
    rng = random.Random(SPLIT_SEED)
    extra = set(rng.sample(rest, round(HELDOUT_FRACTION * len(rest))))
    train = [p for p in rest if p not in extra]
    return Splits(train=train, heldout=sorted(held | extra), csv_rows=rows)


def game24_example(numbers: tuple[int, ...], rng: random.Random) -> tuple[str, str]:
    """(prompt, response) with one of the puzzle's solutions drawn uniformly."""
    trace = rng.choice(game24.solve(numbers))
    return model_prompt(game24.puzzle_text(numbers)), trace


def arithmetic_example(
    rng: random.Random,
    operands: int,
    banned: set[str],
    order: random.Random | None = None,
    split_products: float = 0.0,
    inline_split: bool = False,
) -> tuple[str, str]:
    """(prompt, response) for a fresh question not among the held-out expressions.

    ``order`` draws a random fold order for the scratchpad, and with ``split_products`` (a
    probability) a path for each product (see ``Question.scratchpad``).
    """
    while True:
        q = arithmetic.random_question(rng, operands)
        if q.expression() not in banned:
            return model_prompt(q.text()), q.scratchpad(order, split_products, inline_split)


class Mixture:
    """Samples training pairs: Game of 24 with probability ``p_game24``, else arithmetic.

    Arithmetic operand counts follow a curriculum: short questions dominate early (weight
    ``9 - k`` for ``k`` operands) and the mix flattens to uniform over 2..8 by ``progress``
    ``uniform_from``; ``uniform_from=None`` keeps the early weights throughout.
    ``random_fold_order`` writes each arithmetic scratchpad along a random valid path;
    ``split_products`` is the chance that a two-digit product is written as tens and units
    (on one line with ``inline_split``).
    """

    def __init__(
        self,
        train_puzzles: list[tuple[int, ...]],
        seed: int,
        p_game24: float = 0.5,
        uniform_from: float | None = 0.5,
        random_fold_order: bool = False,
        split_products: float = 0.0,
        inline_split: bool = False,
    ):
        if uniform_from is not None and not 0 < uniform_from <= 1:
            raise ValueError(f"uniform_from must be in (0, 1] or None, got {uniform_from}")
        if not 0 <= split_products <= 1:
            raise ValueError(f"split_products is a probability in [0, 1], got {split_products}")
        if split_products and not random_fold_order:
            raise ValueError(
                "split_products draws from the fold-order stream: set random_fold_order too"
            )
        self.puzzles = train_puzzles
        self.rng = random.Random(seed)
        self.p_game24 = p_game24
        self.uniform_from = uniform_from
        # A stream of its own, so that turning random orders on leaves the questions as
        # they were.
        self.order = random.Random(12_345 + seed) if random_fold_order else None
        self.split_products = split_products
        self.inline_split = inline_split
        self.banned = {q.expression() for q in arithmetic.heldout_questions(200)}

    def batch(self, progress: float, size: int) -> list[tuple[str, str]]:
        """``size`` (prompt, response) pairs of one kind at training ``progress`` in [0, 1].

        A batch holds one task and one operand count, so sequences have similar lengths and
        little compute goes to padding.
        """
        if self.rng.random() < self.p_game24:
            return [game24_example(self.rng.choice(self.puzzles), self.rng) for _ in range(size)]
        t = 0.0 if self.uniform_from is None else min(1.0, progress / self.uniform_from)
        weights = [(1 - t) * (9 - k) + t * 1.0 for k in range(2, 9)]
        k = self.rng.choices(range(2, 9), weights=weights)[0]
        return [
            arithmetic_example(
                self.rng, k, self.banned, self.order, self.split_products, self.inline_split
            )
            for _ in range(size)
        ]
