"""When self-consistency may stop drawing samples: pure rules over the votes so far.

A run that stops early should answer what the full vote of ``budget.samples`` would have
answered; that is the bar a stopping rule is judged by (against the fixed vote it replaces).

- ``vote_settled``: the current leader would almost surely still lead after the remaining
  samples. The remaining votes are drawn from the Dirichlet posterior of the answer shares
  (a Polya urn over the answers seen so far, with mass for answers not seen yet), and the
  rule stops when the leader keeps the lead in at least ``threshold`` of the draws. Unlike
  a fixed-share futility stop it never settles on a scattered plurality: four different
  answers out of four leave the final vote open, so it keeps sampling.
- ``beta_settled``: Adaptive-Consistency's criterion, P(leader's share > runner-up's) under
  Beta(v1+1, v2+1); the default rule (``SelfConsistency(rule="beta")``).

Both are deterministic for given votes (the simulation's seed is derived from the counts),
so a run and its replay on the same samples stop at the same point.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

#: pseudo-count each seen answer gets, and the mass of answers not seen yet (Polya urn)
PRIOR_COUNT = 0.5
NEW_ANSWER_MASS = 1.0
SIMULATIONS = 512


def prob_leader_ahead(v1: int, v2: int) -> float:
    """Adaptive-Consistency's Beta stopping statistic.

    With ``v1`` votes for the leading answer and ``v2`` for the runner-up, the leader's share
    ``x`` of their combined probability has posterior Beta(v1+1, v2+1); returns
    P(x > 1/2) = P(Binomial(v1+v2+1, 1/2) <= v1), exact for integer counts.
    """
    n = v1 + v2 + 1
    return sum(math.comb(n, k) for k in range(v1 + 1)) / 2**n


def beta_settled(counts: Sequence[int], threshold: float) -> bool:
    """Adaptive-Consistency's stop: P(leader ahead of the runner-up) >= ``threshold``."""
    if not counts:
        return False
    v1 = counts[0]
    v2 = counts[1] if len(counts) > 1 else 0
    return prob_leader_ahead(v1, v2) >= threshold


def prob_lead_holds(counts: Sequence[int], unanswered: int, remaining: int) -> float:
    """P(the current leader still strictly leads once ``remaining`` more samples are drawn),
    under the Dirichlet posterior of the answer shares given ``counts`` (descending votes per
    answer) and ``unanswered`` samples that stated no answer."""
    if not counts:
        return 0.0
    if remaining <= 0:
        return 1.0 if len(counts) == 1 or counts[0] > counts[1] else 0.0
    seed = int.from_bytes(
        hashlib.sha256(f"{list(counts)}|{unanswered}|{remaining}".encode()).digest()[:8], "big"
    )
    rng = np.random.default_rng(seed)
    # Categories: each seen answer, "no answer" and "some new answer" (which, spread over
    # answers never seen, is taken never to overtake a leader: optimistic only for ties).
    alpha = np.array(
        [c + PRIOR_COUNT for c in counts] + [unanswered + PRIOR_COUNT, NEW_ANSWER_MASS]
    )
    shares = rng.dirichlet(alpha, size=SIMULATIONS)
    extra = np.array([rng.multinomial(remaining, p) for p in shares])
    final = np.asarray(counts) + extra[:, : len(counts)]
    if len(counts) == 1:
        # A lone answer leads unless new answers collect as many votes as it has.
        return float(np.mean(final[:, 0] > extra[:, -1]))
    rivals = final[:, 1:].max(axis=1)
    return float(np.mean(final[:, 0] > rivals))


def vote_settled(
    counts: Sequence[int], unanswered: int, drawn: int, planned: int, threshold: float
) -> bool:
    """Stop when the full vote of ``planned`` samples would keep the current leader with
    probability at least ``threshold``."""
    return prob_lead_holds(counts, unanswered, planned - drawn) >= threshold
