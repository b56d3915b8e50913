"""What a user's message asks: a Game of 24 puzzle, an arithmetic question, or anything else.

``parse_task`` mirrors the bundled model's chat template (``tokenizer.CHAT_TEMPLATE``); a
test checks that both give the same model prompt for the same text.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal

from backends.bundled.tasks.arithmetic import Question, parse_expression

TaskKind = Literal["game24", "arithmetic", "open"]


@dataclass(frozen=True)
class ParsedTask:
    """A parsed request: ``kind`` and, where it applies, its numbers or question."""

    kind: TaskKind
    numbers: tuple[int, ...] = ()
    question: Question | None = None


_SUFFIX = " to make 24"


def _puzzle_body(t: str) -> str:
    low = t.lower().rstrip(".")
    if low.startswith("use ") and low.endswith(_SUFFIX):
        return t[4 : len(low) - len(_SUFFIX)]
    return t


def _calc_body(t: str) -> str:
    body = t[8:] if t.lower().startswith("what is ") else t
    return body.rstrip("?").replace(" ", "")


def _arithmetic_like(body: str) -> bool:
    return body.replace("+", "").replace("-", "").replace("*", "").isdigit()


def _puzzle_number(p: str) -> int | None:
    """``p``'s value when it is a decimal number of at most two significant digits, else None.

    What the chat template's ``p.isdigit() and p | int`` accepts, without its failures:
    ``isdigit`` also passes superscripts and circled digits ("²", "①"), which ``int()``
    refuses, and ``int()`` refuses digit strings past 4,300 characters. Digits of other
    scripts ("١٣") read as ``int()`` reads them.
    """
    if not p.isdecimal():
        return None
    significant = "".join(str(unicodedata.decimal(c)) for c in p).lstrip("0")
    return int(significant or "0") if len(significant) <= 2 else None


def _game24_numbers(t: str) -> tuple[int, ...] | None:
    parts = _puzzle_body(t).split()
    if len(parts) != 4:
        return None
    values = [_puzzle_number(p) for p in parts]
    nums = tuple(sorted(v for v in values if v is not None))
    return nums if len(nums) == 4 and all(1 <= n <= 13 for n in nums) else None


def parse_task(text: str) -> ParsedTask:
    """Classify ``text``; never raises (anything unrecognised is ``open``)."""
    t = text.strip()
    nums = _game24_numbers(t)
    if nums is not None:
        return ParsedTask("game24", numbers=nums)
    q = parse_expression(_calc_body(t))
    if q is not None and 2 <= q.operands <= 8:
        return ParsedTask("arithmetic", question=q)
    return ParsedTask("open")


def model_prompt(text: str) -> str:
    """The raw prompt the bundled model sees for a user message (its chat template's logic).

    Puzzles become ``<24> a b c d`` (sorted), arithmetic-looking text ``<calc> expr``,
    anything else ``<calc> text``; each ends in a newline.
    """
    t = text.strip()
    nums = _game24_numbers(t)
    if nums is not None:
        return "<24> " + " ".join(str(n) for n in nums) + "\n"
    body = _calc_body(t)
    if _arithmetic_like(body):
        return "<calc> " + body + "\n"
    return "<calc> " + t + "\n"
