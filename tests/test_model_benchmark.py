"""The bundled model's benchmark arithmetic: intervals and the two-operand check."""

from __future__ import annotations

import random
import re

import pytest

from backends.base import Completion, GenerationRequest, GenerationResult
from backends.bundled.tasks import arithmetic
from lab.bundled.benchmark import (
    arithmetic_greedy_check,
    confidence_report,
    wilson_interval,
)


class SumsOnlyBackend:
    """Answers sums right and products off by one, like a model that slips on carries."""

    def generate_batch_sync(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        out = []
        for req in requests:
            assert req.prompt is not None
            q = arithmetic.parse_expression(re.sub(r"^<calc> ", "", req.prompt).strip())
            assert q is not None
            wrong = any(t.multiplier for t in q.terms)
            text = f"Answer: {q.answer() + int(wrong)}"
            out.append(GenerationResult([Completion(text, 5, "stop")] * req.n, 8))
        return out


def test_the_two_operand_check_scores_each_kind_of_question_separately() -> None:
    report = arithmetic_greedy_check(SumsOnlyBackend(), operands=2, count=200)
    assert report["items"] == 200
    assert report["greedy_sums_only"] == 1.0
    assert report["greedy_with_product"] == 0.0
    assert report["greedy"] == pytest.approx(report["items_sums_only"] / 200)
    low, high = report["greedy_95"]
    assert low < report["greedy"] < high


def test_the_wilson_interval_matches_known_values_and_stays_in_range() -> None:
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.404, abs=0.001)
    assert high == pytest.approx(0.596, abs=0.001)
    assert wilson_interval(0, 20)[0] == 0.0
    assert wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def _trace(entropy: float, logprob: float) -> Completion:
    return Completion("x", 3, "stop", token_logprobs=[logprob] * 3, token_entropies=[entropy] * 3)


def test_confidence_is_scored_by_entropy_and_by_log_probability_with_an_interval() -> None:
    # Failures have high entropy but confident-looking log-probs: the two signals disagree.
    fails = [1] * 10 + [0] * 30
    traces = [_trace(1.0 + i / 10, -0.1) for i in range(10)]
    traces += [_trace(0.1 + i / 100, -0.5 - i / 100) for i in range(30)]
    report = confidence_report(traces, fails)
    assert report["entropy_auroc"] == 1.0
    assert report["nll_auroc"] == 0.0
    assert report["entropy_auroc_95"] == (1.0, 1.0)
    shuffled = fails[:]
    random.Random(0).shuffle(shuffled)
    mixed = confidence_report(traces, shuffled)
    low, high = mixed["entropy_auroc_95"]
    assert 0.0 < low < mixed["entropy_auroc"] < high < 1.0
