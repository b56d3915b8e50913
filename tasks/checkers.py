"""Verifiers by name: the exact checkers a task profile may name, and the reward models."""

from __future__ import annotations

from collections.abc import Callable

from backends.verifiers.base import Verifier
from tasks.game24_checker import Game24Verifier

#: exact checkers by the name a task profile's ``verifier`` uses
EXACT_CHECKERS: dict[str, Callable[[], Verifier]] = {
    "game24": Game24Verifier,
}


def exact_checker(name: str) -> Verifier:
    """A fresh exact checker ``name``; unknown names fail with the valid list."""
    try:
        factory = EXACT_CHECKERS[name]
    except KeyError:
        raise ValueError(
            f"unknown exact checker {name!r}; valid: {', '.join(sorted(EXACT_CHECKERS))}"
        ) from None
    return factory()
