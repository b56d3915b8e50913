"""Verifiers by name: what a task profile names as its checker."""

from __future__ import annotations

from collections.abc import Callable

from backends.verifiers.base import Verifier
from backends.verifiers.game24 import Game24Verifier
from backends.verifiers.numeric import NumericAnswerVerifier


def _reward_model(path: str = "") -> Verifier:
    # torch and transformers load only when a reward model is configured.
    from backends.verifiers.reward_model import RewardModelVerifier

    return RewardModelVerifier.from_pretrained(path)


VERIFIERS: dict[str, Callable[..., Verifier]] = {
    "game24": Game24Verifier,
    "numeric": NumericAnswerVerifier,
    "reward_model": _reward_model,
}


def get_verifier(name: str, **kwargs: object) -> Verifier:
    """Build the verifier ``name``; unknown names fail with the valid list."""
    try:
        factory = VERIFIERS[name]
    except KeyError:
        raise ValueError(
            f"unknown verifier {name!r}; valid: {', '.join(sorted(VERIFIERS))}"
        ) from None
    return factory(**kwargs)
