"""Cheap prompt features: what the router knows about a request before spending any compute.

``prompt_features(text)`` returns a fixed-order vector (``PROMPT_FEATURES`` names it) of
length, structure and number statistics plus the task type. ``feature_vector`` appends the
entropy probe's summary (``difficulty.probe``) so that the router model sees one row of
``FEATURE_NAMES``. Everything here is pure and takes tens of microseconds: it runs on every
request, before the decision, inside the p99 <= 1 ms decision budget.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from difficulty.probe import ProbeSummary

PROMPT_FEATURES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "n_lines",
    "n_numbers",
    "n_distinct_numbers",
    "log_max_number",
    "mean_number_digits",
    "n_operators",
    "n_mul_div",
    "n_parens",
    "frac_alpha",
    "has_question",
    "kind_game24",
    "kind_arithmetic",
    "kind_open",
    # Game of 24 shape: large numbers, repeats and ones change how many solutions exist.
    "g24_n_large",
    "g24_has_repeat",
    "g24_has_one",
    "g24_sum_log",
)
PROBE_FEATURES: tuple[str, ...] = (
    "probe_present",
    "probe_mean_entropy",
    "probe_max_entropy",
    "probe_mean_nll",
    "probe_finished",
    "probe_has_answer",
    "probe_verified",
    "probe_refuted",
    "probe_log_tokens",
    # Interactions: a linear model needs them to let confidence mean different things per task.
    "probe_entropy_x_game24",
    "probe_entropy_x_arithmetic",
    "probe_refuted_x_game24",
    "probe_refuted_x_arithmetic",
)
FEATURE_NAMES: tuple[str, ...] = PROMPT_FEATURES + PROBE_FEATURES
"""Column order of the router model's input; persisted with the model as its schema."""

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
_OPERATOR = re.compile(r"(?<=[\d)\s])[-+*/x×÷](?=[\s\d(])")


def prompt_features(text: str, kind: str) -> list[float]:
    """The ``PROMPT_FEATURES`` of ``text`` (of task ``kind``) as floats, in schema order."""
    numbers = [float(m) for m in _NUMBER.findall(text)[:256]]
    ints = [abs(n) for n in numbers]
    n_chars = len(text)
    n_alpha = sum(c.isalpha() for c in text[:4096])
    g24 = kind == "game24" and len(numbers) == 4
    return [
        math.log1p(n_chars),
        math.log1p(len(text.split())),
        float(text.count("\n") + 1),
        float(len(numbers)),
        float(len(set(numbers))),
        math.log1p(max(ints, default=0.0)),
        (sum(len(str(int(n))) for n in ints) / len(ints)) if ints else 0.0,
        float(len(_OPERATOR.findall(text[:4096]))),
        float(sum(text.count(c) for c in "*/×÷")),
        float(text.count("(")),
        n_alpha / max(1, min(n_chars, 4096)),
        1.0 if "?" in text else 0.0,
        1.0 if kind == "game24" else 0.0,
        1.0 if kind == "arithmetic" else 0.0,
        1.0 if kind == "open" else 0.0,
        float(sum(n > 10 for n in ints)) if g24 else 0.0,
        1.0 if g24 and len(set(ints)) < 4 else 0.0,
        1.0 if g24 and 1.0 in ints else 0.0,
        sum(math.log(max(n, 1.0)) for n in ints) if g24 else 0.0,
    ]


def probe_features(probe: ProbeSummary | None, kind: str) -> list[float]:
    """The ``PROBE_FEATURES`` of a probe summary (all zeros with ``probe_present=0`` if None).

    Training masks the probe the same way, so one model serves requests with and without it.
    """
    if probe is None:
        return [0.0] * len(PROBE_FEATURES)
    ent = probe.mean_entropy or 0.0
    refuted = 1.0 if probe.verifier_score is not None and probe.verifier_score < 0.5 else 0.0
    return [
        1.0,
        ent,
        probe.max_entropy or 0.0,
        probe.mean_nll or 0.0,
        1.0 if probe.finish_reason == "stop" else 0.0,
        1.0 if probe.has_answer else 0.0,
        1.0 if probe.verifier_score is not None and probe.verifier_score >= 0.5 else 0.0,
        refuted,
        math.log1p(probe.tokens),
        ent if kind == "game24" else 0.0,
        ent if kind == "arithmetic" else 0.0,
        refuted if kind == "game24" else 0.0,
        refuted if kind == "arithmetic" else 0.0,
    ]


def feature_vector(text: str, probe: ProbeSummary | None, kind: str) -> np.ndarray:
    """One row of ``FEATURE_NAMES`` (float64) for the router model."""
    return np.asarray(prompt_features(text, kind) + probe_features(probe, kind), dtype=np.float64)


def as_dict(
    row: Sequence[float] | np.ndarray, names: Sequence[str] = FEATURE_NAMES
) -> dict[str, float]:
    """A feature row as ``{name: value}`` (what the outcome log stores for retraining)."""
    return {n: round(float(v), 6) for n, v in zip(names, row, strict=True)}


def from_dict(values: Mapping[str, float], names: Sequence[str] = FEATURE_NAMES) -> np.ndarray:
    """A logged ``{name: value}`` back into a row; missing names (older schemas) become 0."""
    return np.asarray([float(values.get(n, 0.0) or 0.0) for n in names], dtype=np.float64)
