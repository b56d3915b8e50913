"""Which router model a policy decides with, and the settings it brings: the probe length
its features were measured at and the cost weight chosen on its calibration data."""

from __future__ import annotations

import logging
from pathlib import Path

from difficulty.model import RouterModel, RouterModelError, bundled_router_path
from difficulty.probe import DEFAULT_PROBE_TOKENS
from policies.registry import default_arms

log = logging.getLogger("acr.policy")

#: cost weight of a router model that was not calibrated with one
DEFAULT_LAMBDA_PER_1K_TOKENS = 0.1


def probe_length(configured: int | None, model: RouterModel) -> int:
    """Probe tokens in use: 0 when disabled, else the model's own length (its features were
    measured at it), else the configured one, else the default."""
    if configured == 0:
        return 0
    if model.card.probe_tokens:
        return model.card.probe_tokens
    return configured if configured is not None else DEFAULT_PROBE_TOKENS


def cost_weight(configured: float | None, model: RouterModel) -> float:
    """The cost weight in use: the configured one, else the router model's (chosen on its
    calibration data), else ``DEFAULT_LAMBDA_PER_1K_TOKENS``."""
    if configured is not None:
        return configured
    if model.card.lambda_per_1k_tokens is not None:
        return model.card.lambda_per_1k_tokens
    return DEFAULT_LAMBDA_PER_1K_TOKENS


def uninformed_model(probe_tokens: int | None = None) -> RouterModel:
    """A router model that knows nothing (every arm equally likely to succeed, one bin): a
    backend no router model was fit for starts at the cheapest arm and moves on evidence."""
    return RouterModel.uninformed(
        default_arms(),
        probe_tokens=probe_tokens if probe_tokens is not None else DEFAULT_PROBE_TOKENS,
    )


def for_backend(model: RouterModel, backend_model: str) -> RouterModel:
    """``model`` when it was fit for ``backend_model`` (or for no model in particular), else
    an uninformed model over the same arms: one model's success rates, token counts and
    latencies never price another's."""
    fitted = model.card.backend_model
    if not fitted or fitted == backend_model:
        return model
    log.warning(
        "router model %s was fit for %r, not %r: deciding from priors and online outcomes",
        model.version,
        fitted,
        backend_model,
    )
    return RouterModel.uninformed(
        list(model.card.arms),
        version=f"{model.version}-unfit",
        probe_tokens=model.card.probe_tokens,
    )


def load_model(path: str | Path | None) -> RouterModel:
    """The router model at ``path``, else the bundled one, else an uninformed one.

    A configured ``path`` that cannot be used raises ``RouterModelError``.
    """
    try:
        return RouterModel.load(path or bundled_router_path())
    except RouterModelError as exc:
        if path:
            raise
        log.warning("no usable bundled router model (%s); using priors only", exc)
        return uninformed_model()
