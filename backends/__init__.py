"""Model backends and verifiers.

Importing this package is cheap: torch and transformers are imported only by the modules
that need them (``backends.transformers_backend``, ``backends.checkpoint_loading``,
``backends.verifiers.reward_model``).
"""

from backends.base import (
    Backend,
    BackendError,
    ChatMessage,
    Completion,
    GenerationRequest,
    GenerationResult,
)

__all__ = [
    "Backend",
    "BackendError",
    "ChatMessage",
    "Completion",
    "GenerationRequest",
    "GenerationResult",
]
