"""Game of 24: an exact solver, Tree-of-Thoughts step traces, and a checker.

A trace is one step per line, ``a op b=c (left: ...)``, then ``Answer: <expr> = 24``.
Numbers are exact fractions; a non-integer is written in brackets, ``(8/3)``, so that ``/``
stays unambiguous. ``+`` and ``*`` are written small operand first and ``-`` never goes
negative, which keeps the number of distinct traces per puzzle finite and the format
predictable for a small model.
"""

from __future__ import annotations

import csv
import itertools
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

TARGET = Fraction(24)
LEFT = "(left: "
ANSWER = "Answer: "


def fmt(x: Fraction) -> str:
    """``4`` for integers, ``(8/3)`` for other fractions."""
    if x.denominator == 1:
        return str(x.numerator)
    return f"({x.numerator}/{x.denominator})"


def parse_number(token: str) -> Fraction:
    """Inverse of ``fmt``; raises ``ValueError`` on anything else."""
    t = token.strip()
    if t.startswith("(") and t.endswith(")"):
        t = t[1:-1]
    if not re.fullmatch(r"-?\d+(/\d+)?", t):
        raise ValueError(f"not a number: {token!r}")
    return Fraction(t)


def fmt_left(values: list[Fraction]) -> str:
    """The ``(left: ...)`` list: remaining numbers in ascending order."""
    return LEFT + " ".join(fmt(v) for v in sorted(values)) + ")"


@dataclass(frozen=True)
class Node:
    """A value and the expression that produced it (``atomic`` for an input number)."""

    value: Fraction
    expr: str
    atomic: bool


def _wrap(n: Node) -> str:
    return n.expr if n.atomic else f"({n.expr})"


def _combine(a: Node, b: Node) -> list[tuple[str, Node]]:
    """Every allowed step on ``a`` and ``b``: (step text without result, new node)."""
    out: list[tuple[str, Node]] = []
    lo, hi = (a, b) if a.value <= b.value else (b, a)
    out.append(
        (
            f"{fmt(lo.value)}+{fmt(hi.value)}",
            Node(lo.value + hi.value, f"{_wrap(lo)}+{_wrap(hi)}", False),
        )
    )
    out.append(
        (
            f"{fmt(lo.value)}*{fmt(hi.value)}",
            Node(lo.value * hi.value, f"{_wrap(lo)}*{_wrap(hi)}", False),
        )
    )
    out.append(
        (
            f"{fmt(hi.value)}-{fmt(lo.value)}",
            Node(hi.value - lo.value, f"{_wrap(hi)}-{_wrap(lo)}", False),
        )
    )
    for x, y in ((a, b), (b, a)):
        if y.value != 0:
            out.append(
                (
                    f"{fmt(x.value)}/{fmt(y.value)}",
                    Node(x.value / y.value, f"{_wrap(x)}/{_wrap(y)}", False),
                )
            )
    return out


def _search(nodes: tuple[Node, ...], steps: tuple[str, ...], out: set[str], limit: int) -> None:
    if len(out) >= limit:
        return
    if len(nodes) == 1:
        if nodes[0].value == TARGET:
            out.add("\n".join(steps) + f"\n{ANSWER}{nodes[0].expr} = 24")
        return
    for i, j in itertools.combinations(range(len(nodes)), 2):
        rest = [n for k, n in enumerate(nodes) if k not in (i, j)]
        for text, node in _combine(nodes[i], nodes[j]):
            left = [n.value for n in rest] + [node.value]
            step = f"{text}={fmt(node.value)} {fmt_left(left)}"
            _search(tuple(rest) + (node,), steps + (step,), out, limit)


@lru_cache(maxsize=4096)
def solve(numbers: tuple[int, ...], limit: int = 10_000) -> tuple[str, ...]:
    """All distinct step traces (each ending in an ``Answer:`` line) that reach 24, sorted."""
    nodes = tuple(Node(Fraction(n), str(n), True) for n in numbers)
    out: set[str] = set()
    _search(nodes, (), out, limit)
    return tuple(sorted(out))


@lru_cache(maxsize=200_000)
def _reaches(values: tuple[Fraction, ...]) -> bool:
    if len(values) == 1:
        return values[0] == TARGET
    for i, j in itertools.combinations(range(len(values)), 2):
        rest = [v for k, v in enumerate(values) if k not in (i, j)]
        a, b = values[i], values[j]
        outs = [a + b, a * b, abs(a - b)] + [x / y for x, y in ((a, b), (b, a)) if y != 0]
        for out in outs:
            if _reaches(tuple(sorted(rest + [out]))):
                return True
    return False


def can_reach_24(values: list[Fraction]) -> bool:
    """Whether the numbers left after some steps can still make 24 (memoised)."""
    return _reaches(tuple(sorted(values)))


def is_solvable(numbers: tuple[int, ...]) -> bool:
    """Whether any sequence of steps reaches 24 (memoised over multisets)."""
    return _reaches(tuple(sorted(Fraction(n) for n in numbers)))


def all_puzzles() -> list[tuple[int, ...]]:
    """Every solvable multiset of four numbers from 1 to 13, sorted (1,362 of them)."""
    return [p for p in itertools.combinations_with_replacement(range(1, 14), 4) if is_solvable(p)]


def read_csv_puzzles(path: Path) -> list[tuple[int, ...]]:
    """Puzzles of ``game24.csv`` in file order (row i is the i-th data row)."""
    with open(path, newline="") as f:
        return [tuple(sorted(int(x) for x in row["Puzzles"].split())) for row in csv.DictReader(f)]


def puzzle_text(numbers: tuple[int, ...]) -> str:
    """``"4 9 10 13"``."""
    return " ".join(str(n) for n in sorted(numbers))


# -- checking ----------------------------------------------------------------------------------

_STEP = re.compile(
    r"^\s*(?P<a>\(?-?\d+(?:/\d+)?\)?)\s*(?P<op>[-+*/])\s*(?P<b>\(?-?\d+(?:/\d+)?\)?)\s*=\s*"
    r"(?P<c>\(?-?\d+(?:/\d+)?\)?)\s*\(left:\s*(?P<left>[^)]*(?:\)[^)]*)*?)\)\s*$"
)


def _apply(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None


def _parse_left(text: str) -> list[Fraction]:
    return [parse_number(t) for t in re.findall(r"\(-?\d+/\d+\)|-?\d+", text)]


def check_step(available: list[Fraction], line: str) -> list[Fraction] | None:
    """The numbers left after ``line`` if it is a valid step from ``available``, else None.

    Valid: both operands are available (as a multiset), the arithmetic is exact, and the
    ``(left: ...)`` list is exactly what remains.
    """
    m = _STEP.match(line)
    if not m:
        return None
    try:
        a, b, c = parse_number(m["a"]), parse_number(m["b"]), parse_number(m["c"])
        left = _parse_left(m["left"])
    except (ValueError, ZeroDivisionError):
        return None
    pool = list(available)
    for x in (a, b):
        if x not in pool:
            return None
        pool.remove(x)
    if _apply(a, m["op"], b) != c:
        return None
    expected = sorted(pool + [c])
    return expected if sorted(left) == expected else None


_EXPR_OK = re.compile(r"^[\d+\-*/() ]+$")


def _eval_expr(expr: str) -> tuple[Fraction, list[int]] | None:  # noqa: C901
    """Exact value and the integer literals of ``expr`` (a safe recursive-descent parser)."""
    if not _EXPR_OK.match(expr):
        return None
    tokens = re.findall(r"\d+|[-+*/()]", expr)
    pos = 0
    nums: list[int] = []

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def atom() -> Fraction:
        t = peek()
        if t == "(":
            take()
            v = add()
            if peek() != ")":
                raise ValueError("unbalanced")
            take()
            return v
        if t is not None and t.isdigit():
            nums.append(int(take()))
            return Fraction(nums[-1])
        raise ValueError(f"unexpected {t!r}")

    def mul() -> Fraction:
        v = atom()
        while peek() in ("*", "/"):
            op = take()
            r = atom()
            if op == "/" and r == 0:
                raise ZeroDivisionError
            v = v * r if op == "*" else v / r
        return v

    def add() -> Fraction:
        v = mul()
        while peek() in ("+", "-"):
            op = take()
            r = mul()
            v = v + r if op == "+" else v - r
        return v

    try:
        value = add()
    except (ValueError, ZeroDivisionError, RecursionError):
        return None
    if pos != len(tokens):
        return None
    return value, nums


def answer_line(text: str) -> str | None:
    """The last ``Answer:`` line's content, or None."""
    found = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("Answer:"):
            found = s[len("Answer:") :].strip()
    return found


def check_answer(numbers: tuple[int, ...], text: str) -> bool:
    """True when the response's ``Answer:`` expression uses exactly ``numbers`` and is 24."""
    ans = answer_line(text)
    if ans is None:
        return False
    expr = ans.split("=")[0].strip()
    parsed = _eval_expr(expr)
    if parsed is None:
        return False
    value, used = parsed
    return value == TARGET and sorted(used) == sorted(numbers)


def check_steps(
    numbers: tuple[int, ...], steps: list[str], require_reachable: bool = False
) -> list[bool]:
    """Per-step validity; every step after the first invalid one is invalid too.

    An ``Answer:`` line is valid when it is a correct final answer. With
    ``require_reachable`` a step is also invalid when the numbers it leaves can no longer
    make 24: Tree of Thoughts' "impossible" value judgement, made exactly.
    """
    available = [Fraction(n) for n in numbers]
    out: list[bool] = []
    ok = True
    for line in steps:
        if ok:
            if line.strip().startswith("Answer:"):
                ok = check_answer(numbers, line)
            else:
                nxt = check_step(available, line)
                ok = nxt is not None and (not require_reachable or can_reach_24(nxt))
                if nxt is not None:
                    available = nxt
        out.append(ok)
    return out
