"""The items a bench runs on: datasets read into ``Item``s, their seeds and their grading.

``load_items`` reads a dataset slice (Game of 24 CSV rows, the bundled arithmetic task's
held-out questions, or a GSM8K-style JSONL file); ``grade`` checks an answer under the item's
task profile; ``item_seed`` gives every item the same sampling seed in every process.
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

from backends.bundled.tasks.arithmetic import heldout_questions
from backends.bundled.tasks.game24 import puzzle_text, read_csv_puzzles
from tasks.grading import is_correct, reference_answer
from tasks.profiles import TaskProfiles

# Benchmarks grade with the built-in profiles: the bundled tasks and ``math``.
_PROFILES = TaskProfiles()


@dataclass(frozen=True)
class Item:
    """One benchmark question, with what grades it."""

    id: str
    text: str
    #: the task profile that grades it: game24 | arithmetic | math (the jsonl dataset)
    kind: str
    reference: str | None = None
    numbers: tuple[int, ...] = ()
    meta: str = ""
    #: difficulty bucket the summary breaks accuracy down by (a row range, an operand count)
    group: str = ""


def load_items(
    dataset: str,
    *,
    rows: str = "900-999",
    path: Path | None = None,
    per_count: int = 10,
    limit: int | None = None,
    seed: int = 0,
) -> list[Item]:
    """Items of ``dataset``: ``game24`` (CSV ``rows`` a-b), ``arithmetic`` (held-out
    questions, ``per_count`` per operand count 2-8) or ``jsonl`` (``question``/``answer``
    lines, GSM8K style, answers after ``####``)."""
    if dataset == "game24":
        if path is None:
            raise ValueError("game24 needs --data PATH (game24.csv)")
        items = _game24_items(path, rows)
    elif dataset == "arithmetic":
        items = _arithmetic_items(per_count)
    elif dataset == "jsonl":
        if path is None:
            raise ValueError("jsonl needs --data PATH")
        items = _jsonl_items(path)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; valid: game24, arithmetic, jsonl")
    if limit is not None and limit < len(items):
        items = random.Random(seed).sample(items, limit)
    return items


def _game24_items(path: Path, rows: str) -> list[Item]:
    """The puzzles of ``path``'s CSV rows named by ``rows`` (``a-b`` ranges, comma-separated;
    rows past the file's end are skipped), grouped by the range they came from."""
    puzzles = read_csv_puzzles(path)
    items: list[Item] = []
    for part in rows.split(","):
        lo, _, hi = part.strip().partition("-")
        for i in range(int(lo), int(hi or lo) + 1):
            if i < len(puzzles):
                items.append(
                    Item(
                        f"g24-{i}",
                        puzzle_text(puzzles[i]),
                        "game24",
                        numbers=puzzles[i],
                        meta=f"row {i}",
                        group=f"rows {part.strip()}",
                    )
                )
    return items


def _arithmetic_items(per_count: int) -> list[Item]:
    """The bundled arithmetic task's held-out questions, ``per_count`` per operand count."""
    return [
        Item(
            f"ar-{j}",
            q.text(),
            "arithmetic",
            str(q.answer()),
            meta=f"{q.operands} operands",
            group=f"{q.operands} operands",
        )
        for j, q in enumerate(heldout_questions(per_count))
    ]


def _jsonl_items(path: Path) -> list[Item]:
    """The ``question``/``answer`` lines of a JSONL file, graded by the ``math`` profile."""
    items: list[Item] = []
    with open(path) as f:
        for j, line in enumerate(f):
            row = json.loads(line)
            ref = reference_answer(row.get("answer"))
            items.append(Item(f"q-{j}", row["question"], "math", ref, group="jsonl"))
    return items


def grade(item: Item, text: str) -> bool:
    """Grading by the item's task profile: its exact checker (Game of 24), else its answer
    format against the reference (the bundled ``Answer:`` line, GSM8K/MATH answers)."""
    return is_correct(_PROFILES.task_named(item.kind), item.text, text, item.reference)


def item_seed(item: Item) -> int:
    """A per-item sampling seed that is the same in every process (``hash`` is salted)."""
    return zlib.crc32(item.id.encode()) % 100_000
