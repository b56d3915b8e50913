"""A finished request: the decision, the strategy run(s) and the honest token account that
the response's ``usage`` and ``router`` object are built from."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from policies.base import StrategyResult
from policies.decision import Decision


@dataclass
class ServedResult:
    """The chosen strategy's results (one per choice) and everything the response needs."""

    id: str
    model: str
    decision: Decision
    results: list[StrategyResult]
    latency_ms: float
    task_kind: str
    probe_reused: bool = False
    probe_continued: bool = False
    #: the strategy it fell back to after backend errors (None: the decision's own)
    fell_back_to: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens read (once: the copies share the prompt)."""
        return max((r.prompt_tokens for r in self.results), default=0)

    @property
    def probe_hidden(self) -> int:
        """Probe tokens that count as hidden (0 when the probe is the answer itself)."""
        # A reused probe *is* the visible answer and a continued one its start; otherwise
        # its tokens were spent unseen.
        if self.probe_reused or self.probe_continued:
            return 0
        return self.decision.probe_tokens

    @property
    def completion_tokens(self) -> int:
        """Every generated token, including the probe's and the hidden ones."""
        # A continued probe starts the visible answer but is not in the results' counts.
        visible_probe = self.decision.probe_tokens if self.probe_continued else 0
        return sum(r.completion_tokens for r in self.results) + self.probe_hidden + visible_probe

    @property
    def reasoning_tokens(self) -> int:
        """The hidden part of ``completion_tokens``."""
        return sum(r.hidden_tokens for r in self.results) + self.probe_hidden
