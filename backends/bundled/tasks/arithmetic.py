"""Multi-step arithmetic with a scratchpad the small model can execute.

Questions: 2 to 8 operands of 1-2 digits, ``+`` and ``-``, and ``*`` by a single digit,
standard precedence (``What is 52+69-70*3?``). The scratchpad does the products first, then
folds the terms one operation per line (left to right, or in a random valid order: the
shipped expert is trained on random orders), then negates a negative total, then answers in
ordinary notation (``Answer: -89``).

Numbers inside the scratchpad are 4-digit ten's complement (mod 10^4), written
least-significant digit first: ``210`` is ``0120`` and ``-89`` is ``1199``. Fixed width puts
every digit at a constant offset from the digits it depends on, least-significant first
means a carry or borrow depends only on digits already written, and ten's complement makes
subtraction the same digit-wise rule as addition with no sign to decide up front. A
2-million-parameter model learns this in about 2,500 small steps; the earlier variable-width
signed format had not reached 70% on two operands by then.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass

WIDTH = 4


def fixed(n: int) -> str:
    """``n`` as 4-digit ten's complement, least-significant digit first.

    ``fixed(210) == "0120"``, ``fixed(-89) == "1199"``; exact for -5000 <= n < 5000, which
    covers every question (at most 4 products of 99*9 = 891).
    """
    return str(n % 10**WIDTH).zfill(WIDTH)[::-1]


def unfixed(s: str) -> int:
    """Inverse of ``fixed``: ``unfixed("1199") == -89``."""
    v = int(s[::-1])
    return v - 10**WIDTH if v >= 10**WIDTH // 2 else v


@dataclass(frozen=True)
class Term:
    """A number, or a number times a single digit."""

    value: int
    multiplier: int | None = None

    def text(self) -> str:
        """``70*3`` or ``52``."""
        return f"{self.value}*{self.multiplier}" if self.multiplier else str(self.value)

    def result(self) -> int:
        """The term's value."""
        return self.value * (self.multiplier or 1)

    @property
    def operands(self) -> int:
        """How many numbers the term uses."""
        return 2 if self.multiplier else 1


@dataclass(frozen=True)
class Question:
    """A signed sum of terms: ``terms[0] ops[0] terms[1] ...``."""

    terms: tuple[Term, ...]
    ops: tuple[str, ...]

    def expression(self) -> str:
        """``52+69-70*3``."""
        out = self.terms[0].text()
        for op, t in zip(self.ops, self.terms[1:], strict=True):
            out += op + t.text()
        return out

    @property
    def operands(self) -> int:
        """Numbers in the question (a product counts its two factors)."""
        return sum(t.operands for t in self.terms)

    def answer(self) -> int:
        """Exact value with standard precedence."""
        acc = self.terms[0].result()
        for op, t in zip(self.ops, self.terms[1:], strict=True):
            acc = acc + t.result() if op == "+" else acc - t.result()
        return acc

    def text(self) -> str:
        """``What is 52+69-70*3?``: how users ask it."""
        return f"What is {self.expression()}?"

    def scratchpad(
        self,
        order: random.Random | None = None,
        split_products: float = 0.0,
        inline_split: bool = False,
    ) -> str:
        """The model's response: one step per line, then ``Answer: n``.

        ``52+69-70*3`` gives ``0700*3=0120``, ``2500+9600=1210``, ``1210-0120=1199``,
        ``0000-1199=9800`` (the negation), ``Answer: -89``. With ``order``, the products
        come in a shuffled order and the fold starts from a random positive term and takes
        the rest in a random order: a different valid path to the same answer, so that
        samples of a model trained on such paths do not all repeat one slip.
        ``split_products`` (with ``order``) is the chance that a two-digit product is written
        as tens and units (``73*7``: ``0700*7=0940``, ``3000*7=1200``,
        ``0940+1200=1150``): each part is one times-table fact, and the carries move to an
        addition. ``inline_split`` writes such a product on one line instead,
        ``3700*7=1200+0940=1150`` (units part, tens part, their sum).
        """
        signed = [("+", self.terms[0]), *zip(self.ops, self.terms[1:], strict=True)]
        products = [t for _, t in signed if t.multiplier]
        if order is not None:
            order.shuffle(products)
            first = order.choice([i for i, (op, _) in enumerate(signed) if op == "+"])
            rest = [x for i, x in enumerate(signed) if i != first]
            order.shuffle(rest)
            signed = [signed[first], *rest]
        lines: list[str] = []
        for t in products:
            m = t.multiplier or 1
            tens, units = t.value - t.value % 10, t.value % 10
            # No draw when splitting is off, so the shipped recipe's stream is unchanged.
            split = (
                bool(split_products and tens and units)
                and order is not None
                and order.random() < split_products
            )
            if split and inline_split:
                parts = f"{fixed(units * m)}+{fixed(tens * m)}"
                lines.append(f"{fixed(t.value)}*{m}={parts}={fixed(t.result())}")
            elif split:
                lines += [
                    f"{fixed(tens)}*{m}={fixed(tens * m)}",
                    f"{fixed(units)}*{m}={fixed(units * m)}",
                    f"{fixed(tens * m)}+{fixed(units * m)}={fixed(t.result())}",
                ]
            else:
                lines.append(f"{fixed(t.value)}*{m}={fixed(t.result())}")
        acc = signed[0][1].result()
        for op, t in signed[1:]:
            nxt = acc + t.result() if op == "+" else acc - t.result()
            lines.append(f"{fixed(acc)}{op}{fixed(t.result())}={fixed(nxt)}")
            acc = nxt
        if acc < 0:
            lines.append(f"{fixed(0)}-{fixed(acc)}={fixed(-acc)}")
        lines.append(f"Answer: {acc}")
        return "\n".join(lines)


def random_question(rng: random.Random, operands: int) -> Question:
    """A question with exactly ``operands`` numbers (2 to 8)."""
    if not 2 <= operands <= 8:
        raise ValueError(f"operands must be 2 to 8, got {operands}")
    terms: list[Term] = []
    left = operands
    while left > 0:
        digits = rng.choice((1, 2))
        value = rng.randint(1, 9) if digits == 1 else rng.randint(10, 99)
        if left >= 2 and rng.random() < 0.3:
            terms.append(Term(value, rng.randint(2, 9)))
            left -= 2
        else:
            terms.append(Term(value))
            left -= 1
    ops = tuple(rng.choice("+-") for _ in terms[1:])
    return Question(tuple(terms), ops)


_EXPR = re.compile(r"^\d{1,2}(\*\d)?([+-]\d{1,2}(\*\d)?)*$")


def parse_expression(expr: str) -> Question | None:
    """The ``Question`` for ``52+69-70*3`` (spaces ignored), or None if not of this form."""
    e = expr.replace(" ", "")
    if not _EXPR.match(e):
        return None
    parts = re.split(r"([+-])", e)
    terms: list[Term] = []
    for p in parts[0::2]:
        if "*" in p:
            a, b = p.split("*")
            terms.append(Term(int(a), int(b)))
        else:
            terms.append(Term(int(p)))
    return Question(tuple(terms), tuple(parts[1::2]))


#: questions per operand count in the fixed held-out pool (training never saw any of them)
HELDOUT_POOL_SIZE = 200
#: the pool's own seed, used by nothing else
HELDOUT_SEED = 10_007
OPERAND_COUNTS = range(2, 9)


@functools.cache
def _heldout_pool() -> dict[int, tuple[Question, ...]]:
    # Drawn in the order the bundled model's training excluded them (count-major, one
    # stream): the pool is exactly the set training was filtered against.
    rng = random.Random(HELDOUT_SEED)
    return {
        k: tuple(random_question(rng, k) for _ in range(HELDOUT_POOL_SIZE)) for k in OPERAND_COUNTS
    }


def heldout_questions(per_operand_count: int) -> list[Question]:
    """The first ``per_operand_count`` questions of each operand count 2..8 from one fixed
    held-out pool: sets of different sizes are nested (10 per count are the first 10 of
    the 50), and every one is excluded from the bundled model's training.

    Raises ``ValueError`` beyond the pool's ``HELDOUT_POOL_SIZE`` per count.
    """
    if not 0 <= per_operand_count <= HELDOUT_POOL_SIZE:
        raise ValueError(
            f"the held-out pool has {HELDOUT_POOL_SIZE} questions per operand count; "
            f"asked for {per_operand_count}"
        )
    pool = _heldout_pool()
    return [q for k in OPERAND_COUNTS for q in pool[k][:per_operand_count]]
