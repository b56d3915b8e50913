"""Numbers in answers: reading them exactly (as ``Fraction``) and the ``number`` format."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

from tasks.answers.base import AnswerFormat
from tasks.answers.spans import _clip, _tail, answer_spans

# Digits (integer + fraction + denominator) a number may have. Python's int() refuses strings of
# more than 4,300 digits by default, and no real answer has more than a handful.
MAX_NUMBER_DIGITS: Final = 100
# Largest |exponent| of scientific notation: 1e999999 would be a million-digit Fraction.
MAX_EXPONENT: Final = 100

# ASCII digits only: Python's \d also matches other scripts' digits ('٣'), whose meaning in a
# model's answer is unclear; they are simply not numbers here.
_NUMBER = re.compile(
    r"(?:(?<![0-9A-Za-z)\]}])(?P<neg>-))?"  # a minus where it cannot be a subtraction
    r"(?:\$[ \t]?)?(?:(?<![0-9A-Za-z)\]}])(?P<neg2>-))?"  # "$-5" as well as "-$5"
    r"(?:(?P<int>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.(?P<frac>[0-9]+))?"
    r"|\.(?P<frac_only>[0-9]+))"
    r"(?:[eE](?P<exp>[-+]?[0-9]+))?"
    r"(?:/(?P<den>[0-9]+)(?![0-9.]))?"
)
_LATEX_FRAC = re.compile(
    r"\\[dt]?frac\s*\{\s*(-?[0-9][0-9.,]{0,40})\s*\}\s*\{\s*([0-9][0-9.,]{0,40})\s*\}"
)
_LATEX_FRAC_DIGITS = re.compile(r"\\[dt]?frac([0-9])([0-9])(?![0-9])")
_DIGIT_GROUP_SEPARATOR = re.compile(r"(?<=[0-9])(?:\{,\}|\\,|\\!|\\ |~)(?=[0-9])")
_MINUS_SIGNS = str.maketrans({"−": "-", "﹣": "-", "－": "-"})


def _prepare_numeric_text(text: str) -> str:
    """``text`` with LaTeX number spellings made plain: ``\\frac{3}{4}`` → ``3/4``,
    ``1{,}234``/``1\\,234`` → ``1,234``/``1234``, ``\\$``/``\\%`` → ``$``/``%``, and
    Unicode minus signs → ``-``.
    """
    text = text.translate(_MINUS_SIGNS)
    text = _DIGIT_GROUP_SEPARATOR.sub(lambda m: "," if m.group(0) == "{,}" else "", text)
    text = _LATEX_FRAC.sub(r"\1/\2", text)
    text = _LATEX_FRAC_DIGITS.sub(r"\1/\2", text)
    return text.replace("\\$", "$").replace("\\%", "%")


def _number_value(match: re.Match[str]) -> Fraction | None:
    """The exact value of one ``_NUMBER`` match, or None when it is too long/large or x/0."""
    int_part = (match.group("int") or "").replace(",", "")
    frac_part = match.group("frac") or match.group("frac_only") or ""
    den_part = match.group("den") or ""
    exp_part = match.group("exp") or "0"
    if len(int_part) + len(frac_part) + len(den_part) > MAX_NUMBER_DIGITS:
        return None
    if len(exp_part.lstrip("+-")) > 4 or abs(int(exp_part)) > MAX_EXPONENT:
        return None
    value = Fraction(int((int_part or "0") + frac_part), 10 ** len(frac_part))
    value *= Fraction(10) ** int(exp_part)
    if den_part:
        if int(den_part) == 0:
            return None
        value /= int(den_part)
    if match.group("neg") or match.group("neg2"):
        value = -value
    return value


def _first_value(text: str) -> Fraction | None:
    """The value of the first number written in (prepared) ``text``; None when there is none
    or it cannot be read (a 5,000-digit run is no answer, not a reason to take another number).
    """
    match = _NUMBER.search(text)
    return None if match is None else _number_value(match)


def first_number(span: str) -> Fraction | None:
    """The number a short answer span states, or None.

    The first number after the span's last ``=`` when it has one ("2^{10} = 1024" → 1024),
    else the span's first number ("1,234.50 dollars" → 1234.5).
    """
    prepared = _prepare_numeric_text(_clip(span))
    if "=" in prepared:
        after = _first_value(prepared.rsplit("=", 1)[1])
        if after is not None:
            return after
    return _first_value(prepared)


def last_number(text: str) -> Fraction | None:
    """The value of the last number written in (the scanned tail of) ``text``, or None when
    there is none or it cannot be read.
    """
    last = None
    for last in _NUMBER.finditer(_prepare_numeric_text(_tail(text))):  # noqa: B007 - keeps the last
        pass
    return None if last is None else _number_value(last)


def canonical_number(value: Fraction) -> str:
    """A canonical string for ``value``: ``"1234"``, ``"1234.5"``, ``"-0.75"``, or ``"1/3"``
    when the decimal expansion does not terminate. Equal values give equal strings.
    """
    num, den = value.numerator, value.denominator
    if den == 1:
        return str(num)
    rest, twos, fives = den, 0, 0
    while rest % 2 == 0:
        rest, twos = rest // 2, twos + 1
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    if rest != 1:
        return f"{num}/{den}"
    places = max(twos, fives)  # den divides 10**places, so the decimal below is exact
    digits = str(abs(num) * 10**places // den).rjust(places + 1, "0")
    text = f"{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")
    return f"-{text}" if num < 0 else text


@dataclass(frozen=True)
class NumberFormat(AnswerFormat):
    """Numeric answers (GSM8K style), compared exactly as rationals.

    Reads integers, decimals, ``a/b`` and ``\\frac{a}{b}`` fractions, thousands separators
    (``1,234``), currency (``$``), percent (``25%`` is 25: references of percent questions give
    the number) and negatives. ``extract`` returns the canonical number (``canonical_number``):
    "Answer: 1,234.50 dollars" → ``"1234.5"``.
    """

    name: str = "number"
    description: str = "a number; compared numerically (exact rationals)"

    def _extract(self, text: str) -> str | None:
        for span in answer_spans(text):
            value = first_number(span)
            if value is not None:
                return canonical_number(value)
        value = last_number(text)
        return None if value is None else canonical_number(value)

    def _normalize(self, answer: str) -> str | None:
        value = first_number(answer)
        return None if value is None else canonical_number(value)
