"""The math-verify bridge: lazy import, screened and deadline-bound parse / verify, sympy keys."""

from __future__ import annotations

import logging
import re
import threading
from functools import lru_cache
from typing import Any, Final

from tasks.answers.deadline import DeadlineExceeded, _with_deadline
from tasks.answers.latex_safety import _parseable, _tame
from tasks.answers.numbers import _DIGIT_GROUP_SEPARATOR
from tasks.answers.spans import MAX_ANSWER_CHARS

# Wall-clock limit of one math-verify parse or verify call. A cold parse of an ordinary answer
# takes well under a second; past the limit the call falls back to comparing normalised text.
LATEX_DEADLINE_S: Final = 5.0
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


class _DropTimeoutWarning(logging.Filter):
    """Drops math-verify's "Timeout is disabled" warning: ``_with_deadline`` is the deadline."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


_import_lock = threading.Lock()
_math_verify_module: Any = None


def _math_verify() -> Any:
    """The ``math_verify`` module, imported on first use (it pulls in sympy: ~2 s)."""
    global _math_verify_module
    with _import_lock:
        if _math_verify_module is None:
            import math_verify

            for name in ("math_verify.parser", "math_verify.grader"):
                logging.getLogger(name).addFilter(_DropTimeoutWarning())
            _math_verify_module = math_verify
    return _math_verify_module


def math_verify_available() -> bool:
    """True when math-verify can be imported (``latex`` then grades mathematically)."""
    try:
        _math_verify()
    except ImportError:
        return False
    return True


@lru_cache(maxsize=4096)
def _parse_cached(latex: str) -> tuple[Any, ...]:
    """math-verify's parse of one answer (sympy objects and the matched string), tame only.

    Cached: voting parses the same few answers many times. A deadline raises, so it is never
    cached.
    """
    mv = _math_verify()
    parsed = _with_deadline(lambda: mv.parse(f"${latex}$", parsing_timeout=None), LATEX_DEADLINE_S)
    return tuple(item for item in parsed if isinstance(item, str) or _tame(item))


def _prepare_latex(answer: str) -> str:
    """An answer ready for math-verify: no unescaped ``$``, digit groups joined (math-verify
    reads ``12\\,345`` as 12 + 345), surrounding whitespace and a final period dropped.
    """
    text = _UNESCAPED_DOLLAR.sub("", answer)
    text = _DIGIT_GROUP_SEPARATOR.sub(lambda m: "," if m.group(0) == "{,}" else "", text)
    return text.strip().rstrip(".").strip()


def parse_latex(answer: str) -> tuple[Any, ...] | None:
    """math-verify's parse of a LaTeX answer (sympy objects and strings), or None when the
    answer is empty, too large/deep to parse quickly, unparseable, or past the deadline.
    """
    latex = _prepare_latex(answer)
    if not _parseable(latex):
        return None
    try:
        parsed = _parse_cached(latex)
    except (DeadlineExceeded, ImportError):
        return None
    return parsed if any(not isinstance(item, str) for item in parsed) else None


@lru_cache(maxsize=8192)
def _verify_cached(answer: str, reference: str) -> bool:
    """math-verify's verdict on two parseable answers (the reference is its gold side)."""
    gold, target = parse_latex(reference), parse_latex(answer)
    if gold is None or target is None:
        return False
    mv = _math_verify()
    return bool(
        _with_deadline(
            lambda: mv.verify(list(gold), list(target), timeout_seconds=None), LATEX_DEADLINE_S
        )
    )


def _sympy_key(expr: Any) -> str | None:
    """A canonical string of a tame sympy expression: numeric parts evaluated (``2+3`` → 5),
    floats as exact rationals (0.5 and 1/2 agree). None when that fails or is not tame.
    """
    import sympy

    def canonical() -> str:
        value = expr.doit() if isinstance(expr, sympy.Basic) else expr
        if isinstance(value, sympy.Basic):
            value = value.xreplace({f: sympy.Rational(str(f)) for f in value.atoms(sympy.Float)})
        return str(value)

    if not _tame(expr):
        return None
    try:
        key = _with_deadline(canonical, LATEX_DEADLINE_S)
    except DeadlineExceeded:
        return None
    return key if len(key) <= MAX_ANSWER_CHARS else None
