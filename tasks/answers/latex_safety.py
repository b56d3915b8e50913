"""Screens that keep math-verify's work bounded: input size/nesting and expression magnitude."""

from __future__ import annotations

import math
import re
from typing import Any, Final

# math-verify (LaTeX) guards. Its ANTLR parser is exponential in bracket nesting (20 nested
# braces took over two minutes) and its grader evaluates powers eagerly (2^{2^{2^{2^{10}}}} vs 3
# never finishes), so inputs are screened before parsing and parsed expressions before grading.
LATEX_MAX_CHARS: Final = 400
LATEX_MAX_DEPTH: Final = 8
LATEX_MAX_DIGIT_RUN: Final = 60
_SYMPY_MAX_NODES: Final = 400
# ~4,900 decimal digits: exact arithmetic on numbers this size stays in the microseconds.
_SYMPY_MAX_BITS: Final = 1 << 14
# Largest exponent bound of a power whose base is not a number or symbol: (x+1)^n is expanded
# by the grader's simplification, which grows quickly with n.
_SYMPY_MAX_COMPOUND_POWER: Final = 256

_LATEX_DIGIT_RUN = re.compile(rf"[0-9]{{{LATEX_MAX_DIGIT_RUN + 1},}}")


def _max_bracket_depth(text: str) -> int:
    """The deepest nesting of ``{([`` brackets in ``text``."""
    depth = deepest = 0
    for ch in text:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]" and depth:
            depth -= 1
    return deepest


def _parseable(latex: str) -> bool:
    """True when ``latex`` is small enough for math-verify's parser to finish quickly."""
    return (
        0 < len(latex) <= LATEX_MAX_CHARS
        and _max_bracket_depth(latex) <= LATEX_MAX_DEPTH
        and _LATEX_DIGIT_RUN.search(latex) is None
    )


class _Untame(Exception):
    """A parsed expression whose evaluation could take unbounded time or memory."""


# Functions whose value grows like n! in their argument: sympy evaluates them exactly.
_FACTORIAL_LIKE: Final = frozenset(
    {
        "factorial",
        "factorial2",
        "subfactorial",
        "binomial",
        "gamma",
        "RisingFactorial",
        "FallingFactorial",
        "fibonacci",
        "lucas",
        "catalan",
        "bell",
        "primorial",
        "prime",
        "harmonic",
    }
)
# Unevaluated calculus the grader would try to evaluate; final answers do not contain it.
_UNBOUNDED_OPERATORS: Final = frozenset(
    {"Sum", "Product", "Integral", "Limit", "Derivative", "Subs", "RootSum", "Piecewise"}
)


class _MagnitudeBound:
    """Upper bounds on log2|value| of a sympy expression's subterms, for ``_tame``.

    Symbols count as small numbers: the bound is about evaluation cost, not a symbol's value.
    Raises ``_Untame`` as soon as a bound, the node count or an exponent is too large.
    """

    def __init__(self) -> None:
        self.nodes = 0

    def bits(self, expr: Any) -> float:
        """An upper bound on log2 of the magnitude of ``expr`` (raises ``_Untame``)."""
        self.nodes += 1
        if self.nodes > _SYMPY_MAX_NODES:
            raise _Untame("too many nodes")
        bound = self._bits(expr)
        if bound > _SYMPY_MAX_BITS:
            raise _Untame("too large")
        return bound

    def _bits(self, expr: Any) -> float:
        import sympy

        if isinstance(expr, sympy.MatrixBase):
            return max((self.bits(x) for x in expr), default=1.0) + math.log2(max(expr.rows, 1))
        if not isinstance(expr, sympy.Basic):
            return 1.0
        name = type(expr).__name__
        if isinstance(expr, sympy.Rational):  # Integer included
            return float(max(abs(expr.p).bit_length(), expr.q.bit_length(), 1))
        if isinstance(expr, sympy.Float):
            _sign, mantissa, exponent, bitcount = expr._mpf_
            return float(abs(exponent + bitcount) + 1) if mantissa else 1.0
        if expr.is_Atom:
            return 2.0
        if name in _UNBOUNDED_OPERATORS:
            raise _Untame(name)
        if isinstance(expr, sympy.Pow) or name in ("MatPow", "exp"):
            return self._power_bits(expr)
        if name in _FACTORIAL_LIKE:
            return self._factorial_bits(expr)
        children = [self.bits(arg) for arg in expr.args]
        if not children:
            return 2.0
        if isinstance(expr, sympy.Mul):
            return sum(children)
        return max(children) + math.log2(len(children))

    def _power_bits(self, expr: Any) -> float:
        """``base ** exponent`` (``exp(x)`` as ``e ** x``): exponent bound times base bits."""
        import sympy

        base, exponent = (sympy.E, expr.args[0]) if len(expr.args) == 1 else expr.args[:2]
        exponent_bits = self.bits(exponent)
        if exponent_bits > 20:  # |exponent| may exceed a million
            raise _Untame("exponent too large")
        exponent_max = (
            abs(int(exponent)) if isinstance(exponent, sympy.Integer) else 2.0**exponent_bits
        )
        compound = not (base.is_Atom or isinstance(base, sympy.MatrixBase))
        if compound and exponent_max > _SYMPY_MAX_COMPOUND_POWER:
            raise _Untame("power of a compound base too large")
        return max(self.bits(base), 1.0) * max(exponent_max, 1.0)

    def _factorial_bits(self, expr: Any) -> float:
        """``n!``-like growth: arguments must stay below 2**12; about n*log2(n) bits."""
        argument_bits = max((self.bits(arg) for arg in expr.args), default=1.0)
        if argument_bits > 12:
            raise _Untame("factorial argument too large")
        n = 2.0**argument_bits
        return n * math.log2(n + 1)


def _tame(expr: Any) -> bool:
    """True when grading or printing ``expr`` takes bounded time and memory (see bounds)."""
    try:
        _MagnitudeBound().bits(expr)
    except (_Untame, RecursionError, TypeError, ValueError, AttributeError, OverflowError):
        return False
    return True
