"""Task profiles: what kind of prompt a request is, and which verifier judges its answers.

A prompt is matched to one profile once per request (``TaskProfiles.match``); the match
travels with the problem to the policy (priors and stats are kept per profile) and to the
strategies (the verifier). Built in: the bundled model's two tasks (``game24`` with its
exact checker, ``arithmetic`` with none in serving) and ``open`` for everything else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from backends.bundled.tasks.detect import parse_task
from backends.verifiers.base import Verifier
from backends.verifiers.registry import get_verifier

OPEN = "open"


@dataclass(frozen=True)
class Task:
    """The profile a prompt matched: its ``kind`` (the profile name) and its verifier."""

    kind: str = OPEN
    verifier: Verifier | None = None

    @property
    def exact(self) -> bool:
        """Whether an exact checker judges this task's answers (samplers may stop early)."""
        return self.verifier is not None and self.verifier.exact


OPEN_TASK = Task()


@dataclass(frozen=True)
class TaskProfile:
    """A named kind of prompt: how to recognise it and which verifier checks its answers."""

    name: str
    matches: Callable[[str], bool]
    verifier: Verifier | None = None

    def task(self) -> Task:
        """The ``Task`` a matching prompt carries."""
        return Task(self.name, self.verifier)


def _bundled_kind(kind: str) -> Callable[[str], bool]:
    def matches(text: str) -> bool:
        return parse_task(text).kind == kind

    return matches


def builtin_profiles() -> list[TaskProfile]:
    """The bundled model's tasks, in match order (``open`` is the fallback, not listed)."""
    return [
        TaskProfile("game24", _bundled_kind("game24"), get_verifier("game24")),
        TaskProfile("arithmetic", _bundled_kind("arithmetic")),
    ]


class TaskProfiles:
    """Matches prompts to the first profile that accepts them, else ``open``."""

    def __init__(self, profiles: list[TaskProfile] | None = None) -> None:
        self.profiles = builtin_profiles() if profiles is None else profiles

    def match(self, text: str) -> Task:
        """The task of ``text``; never raises (a matcher that fails does not match)."""
        for profile in self.profiles:
            try:
                if profile.matches(text):
                    return profile.task()
            except Exception:  # noqa: BLE001 - a broken matcher must not fail a request
                continue
        return OPEN_TASK

    @property
    def kinds(self) -> list[str]:
        """Every profile name, ``open`` last."""
        return [p.name for p in self.profiles] + [OPEN]
