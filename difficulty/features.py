"""Cheap prompt features: what the router knows about a request before spending any compute.

``prompt_features(text, task)`` returns a fixed-order vector (``PROMPT_FEATURES`` names it)
of generic text statistics of any prompt (length, structure, numbers, math notation, code)
plus what its task profile can do with answers (an exact checker, a learned verifier,
extractable answers), never which task it is. ``feature_vector`` appends the
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
from tasks.task import Task

PROMPT_FEATURES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "n_lines",
    "n_sentences",
    "mean_word_len",
    "n_numbers",
    "n_distinct_numbers",
    "log_max_number",
    "mean_number_digits",
    "n_operators",
    "n_mul_div",
    "n_parens",
    "n_latex",
    "has_code",
    "frac_alpha",
    "frac_non_ascii",
    "has_question",
    # What the task profile can do with answers (not which task it is).
    "task_exact_verifier",
    "task_learned_verifier",
    "task_selectable",
)
PROBE_FEATURES: tuple[str, ...] = (
    "probe_present",
    "probe_mean_entropy",
    "probe_max_entropy",
    "probe_mean_nll",
    "probe_worst_window_nll",
    "probe_mean_margin",
    "probe_low_margin_share",
    "probe_finished",
    "probe_has_answer",
    "probe_verified",
    "probe_refuted",
    "probe_log_tokens",
    # A linear model needs the interaction to let confidence mean something else where an
    # exact checker already says whether the probe was right.
    "probe_entropy_x_exact",
)
FEATURE_NAMES: tuple[str, ...] = PROMPT_FEATURES + PROBE_FEATURES
"""Column order of the router model's input; persisted with the model as its schema."""

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
_OPERATOR = re.compile(r"(?<=[\d)\s])[-+*/x×÷](?=[\s\d(])")
_LATEX = re.compile(r"\\[A-Za-z]+|\$")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
#: bounded work per request: features read at most this many characters
_SCAN = 4096


def prompt_features(text: str, task: Task) -> list[float]:
    """The ``PROMPT_FEATURES`` of ``text`` (matched to ``task``) as floats, in schema order."""
    head = text[:_SCAN]
    numbers = [float(m) for m in _NUMBER.findall(head)[:256] if len(m) <= 32]
    ints = [abs(n) for n in numbers]
    words = head.split()
    n_chars = len(text)
    scanned = max(1, len(head))
    learned = task.verifier is not None and not task.exact
    return [
        math.log1p(n_chars),
        math.log1p(len(text.split())),
        float(text.count("\n") + 1),
        float(len(_SENTENCE_END.findall(head))),
        (sum(len(w) for w in words) / len(words)) if words else 0.0,
        float(len(numbers)),
        float(len(set(numbers))),
        math.log1p(min(max(ints, default=0.0), 1e300)),
        (sum(len(str(int(min(n, 1e18)))) for n in ints) / len(ints)) if ints else 0.0,
        float(len(_OPERATOR.findall(head))),
        float(sum(head.count(c) for c in "*/×÷")),
        float(head.count("(")),
        float(len(_LATEX.findall(head))),
        1.0 if "```" in head else 0.0,
        sum(c.isalpha() for c in head) / scanned,
        sum(not c.isascii() for c in head) / scanned,
        1.0 if "?" in head else 0.0,
        1.0 if task.exact else 0.0,
        1.0 if learned else 0.0,
        1.0 if task.selectable else 0.0,
    ]


def probe_features(probe: ProbeSummary | None, task: Task) -> list[float]:
    """The ``PROBE_FEATURES`` of a probe summary (all zeros with ``probe_present=0`` if None).

    Training masks the probe the same way, so one model serves requests with and without it.
    """
    if probe is None:
        return [0.0] * len(PROBE_FEATURES)
    ent = probe.mean_entropy or 0.0
    verdict = probe.verifier_score
    return [
        1.0,
        ent,
        probe.max_entropy or 0.0,
        probe.mean_nll or 0.0,
        probe.worst_window_nll or 0.0,
        probe.mean_margin or 0.0,
        probe.low_margin_share or 0.0,
        1.0 if probe.finish_reason == "stop" else 0.0,
        1.0 if probe.has_answer else 0.0,
        1.0 if verdict is not None and verdict >= 0.5 else 0.0,
        1.0 if verdict is not None and verdict < 0.5 else 0.0,
        math.log1p(probe.tokens),
        ent if task.exact else 0.0,
    ]


def feature_vector(text: str, probe: ProbeSummary | None, task: Task) -> np.ndarray:
    """One row of ``FEATURE_NAMES`` (float64) for the router model."""
    return np.asarray(prompt_features(text, task) + probe_features(probe, task), dtype=np.float64)


def as_dict(
    row: Sequence[float] | np.ndarray, names: Sequence[str] = FEATURE_NAMES
) -> dict[str, float]:
    """A feature row as ``{name: value}`` (what the outcome log stores for retraining)."""
    return {n: round(float(v), 6) for n, v in zip(names, row, strict=True)}


def from_dict(values: Mapping[str, float], names: Sequence[str] = FEATURE_NAMES) -> np.ndarray:
    """A logged ``{name: value}`` back into a row; missing names (older schemas) become 0."""
    return np.asarray([float(values.get(n, 0.0) or 0.0) for n in names], dtype=np.float64)
