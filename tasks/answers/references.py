"""Reference answers of the shared benchmark data sets (GSM8K, MATH-500), read in place."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

GSM8K_FILE: Final = "gsm8k_test.jsonl"
MATH500_FILE: Final = "math500_test.jsonl"


@dataclass(frozen=True)
class ReferenceItem:
    """One benchmark question with its reference answer and the format to grade it with.

    ``solution`` is the worked solution (GSM8K: the whole ``answer`` field, ending in its
    ``#### n`` line; MATH-500: ``solution`` with its ``\\boxed{}``); ``reference`` the final
    answer alone.
    """

    dataset: str
    id: str
    question: str
    solution: str
    reference: str
    answer_format: str


def shared_data_dir() -> Path:
    """``shared/data`` beside this checkout (the data is read in place, never copied in)."""
    # tasks/answers/references.py -> parents[3] is the directory holding the checkout
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def gsm8k_final_answer(answer_text: str) -> str | None:
    """The reference answer of a GSM8K ``answer`` field: the text after its last ``####``."""
    if "####" not in answer_text:
        return None
    return answer_text.rsplit("####", 1)[1].strip() or None


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one per non-empty line."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def read_gsm8k(path: Path | None = None) -> list[ReferenceItem]:
    """GSM8K test questions with their ``####`` reference answers (format ``number``).

    ``path`` defaults to ``shared_data_dir() / GSM8K_FILE``; raises ``OSError`` when absent.
    Rows without a ``####`` answer are skipped.
    """
    items = []
    for index, row in enumerate(_jsonl(path or shared_data_dir() / GSM8K_FILE)):
        reference = gsm8k_final_answer(str(row.get("answer", "")))
        if reference is not None:
            items.append(
                ReferenceItem(
                    dataset="gsm8k",
                    id=f"gsm8k/test/{index}",
                    question=str(row.get("question", "")),
                    solution=str(row["answer"]),
                    reference=reference,
                    answer_format="number",
                )
            )
    return items


def read_math500(path: Path | None = None) -> list[ReferenceItem]:
    """MATH-500 problems with their ``answer`` references (format ``latex``).

    ``path`` defaults to ``shared_data_dir() / MATH500_FILE``; raises ``OSError`` when absent.
    Fields used: ``problem``, ``solution``, ``answer``, ``unique_id``.
    """
    items = []
    for index, row in enumerate(_jsonl(path or shared_data_dir() / MATH500_FILE)):
        items.append(
            ReferenceItem(
                dataset="math500",
                id=str(row.get("unique_id", f"math500/{index}")),
                question=str(row.get("problem", "")),
                solution=str(row.get("solution", "")),
                reference=str(row.get("answer", "")),
                answer_format="latex",
            )
        )
    return items
