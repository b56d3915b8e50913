"""``acr calibrate``'s inputs and its resumable record: items read from a JSONL file, split
into fit and evaluation parts, and the labels file every finished item is appended to.

The split is by a hash of the question's text (whitespace and case folded), so it is the
same on every run and machine, and one question never sits on both sides. The labels file
is append-only and fsynced line by line: a killed run loses at most the items in flight,
and the next run with the same settings skips everything already labelled.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tasks.grading import reference_answer

Split = Literal["fit", "eval"]


class CalibrationDataError(ValueError):
    """The data file cannot be read as calibration items (the message says where and why)."""


@dataclass(frozen=True)
class CalibrationItem:
    """One question with its reference answer and the part of the data it belongs to."""

    id: str
    text: str
    reference: str | None
    split: Split


def text_key(text: str) -> str:
    """The identity of a question for splitting and de-duplication."""
    return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()


def split_of(text: str, eval_percent: int) -> Split:
    """``eval`` for about ``eval_percent``% of questions (by text hash), else ``fit``."""
    return "eval" if int(text_key(text)[:8], 16) % 100 < eval_percent else "fit"


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise CalibrationDataError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise CalibrationDataError(f"{path}:{number} is not a JSON object") from None
            if not isinstance(row, dict):
                raise CalibrationDataError(f"{path}:{number} is not a JSON object")
            yield number, row


def load_items(
    path: Path,
    *,
    question_field: str = "question",
    answer_field: str | None = "answer",
    answer_marker: str | None = "####",
    eval_percent: int = 30,
    limit: int | None = None,
) -> tuple[list[CalibrationItem], str]:
    """The first ``limit`` distinct questions of a JSONL file (all when None), and a hash of
    exactly what was read (questions and references) that the artifact records.

    Each line is an object with the question in ``question_field`` and the reference in
    ``answer_field`` (the text after its last ``answer_marker`` when it has one; None reads no
    reference: an exact checker grades alone). An ``id`` field names the item.
    """
    if not 0 <= eval_percent <= 90:
        raise CalibrationDataError(f"eval_percent must be 0-90, got {eval_percent}")
    items: list[CalibrationItem] = []
    seen: set[str] = set()
    digest = hashlib.sha256()
    for number, row in _lines(path):
        question = row.get(question_field)
        if not isinstance(question, str) or not question.strip():
            keys = ", ".join(sorted(row)) or "none"
            raise CalibrationDataError(
                f"{path}:{number} has no text field {question_field!r} (its fields: {keys}); "
                "name the question field with --question-field"
            )
        key = text_key(question)
        if key in seen:
            continue
        seen.add(key)
        reference = None
        if answer_field is not None:
            if answer_field not in row:
                raise CalibrationDataError(
                    f"{path}:{number} has no answer field {answer_field!r}; name it with "
                    "--answer-field (or --no-answer-field when a checker grades alone)"
                )
            reference = reference_answer(row[answer_field], answer_marker)
        item_id = str(row.get("id") or f"line-{number}")
        items.append(
            CalibrationItem(item_id, question, reference, split_of(question, eval_percent))
        )
        digest.update(f"{question}\x00{reference}\x00".encode())
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise CalibrationDataError(f"{path} holds no questions")
    return items, digest.hexdigest()[:16]


class LabelFile:
    """The labels of finished items, one JSON object per line, appended and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, dict[str, Any]]:
        """Finished items by id (a line cut short by a kill is ignored)."""
        done: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return done
        self._drop_torn_tail()
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and "id" in record:
                    done[str(record["id"])] = record
        return done

    def _drop_torn_tail(self) -> None:
        # A kill mid-write leaves a line without its newline; the next append would glue a
        # whole record onto it and both would be lost. Cut it (that item is labelled again).
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)

    def append(self, record: dict[str, Any]) -> None:
        """Add one finished item, durably (it survives a kill right after this returns)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


class RunManifest:
    """The settings a calibration directory was started with; a resumed run must match."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def check_or_write(self, settings: dict[str, Any]) -> bool:
        """Write ``settings`` for a new run; for an existing one, True when they match,
        else raise naming the settings that differ. Returns whether this is a resume."""
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(settings, indent=2, sort_keys=True))
            return False
        old = json.loads(self.path.read_text())
        differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if differ:
            raise CalibrationDataError(
                f"{self.path.parent} holds a calibration run with other settings "
                f"({', '.join(differ)}); use another --out directory or --restart"
            )
        return True
