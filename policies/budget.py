"""The one ``Budget`` contract: how much compute a strategy may spend.

Config (``strategies.budgets``), the API's ``acr.budget`` override and every strategy use
this model, so the fields, their units and their bounds are defined here once.
``BudgetOverride`` is derived from it field by field (every field optional, same bounds).
"""

from __future__ import annotations

from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo


class BudgetError(ValueError):
    """A budget field is unknown or out of range; the message names it and what is valid."""


class Budget(BaseModel):
    """How much compute a strategy may spend; filled by the selector, config or the request.

    ``max_tokens`` bounds each sample's (or each step trace's) generated tokens; ``samples``
    is N for best-of-N and the maximum for self-consistency, drawn ``batch_size`` at a time;
    ``beam_width`` and ``expansions`` shape step search (keep b states, propose k per
    state) over at most ``max_steps`` steps; ``temperature`` is the sampling temperature
    (0 = greedy).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    # Long enough for an 8-operand arithmetic scratchpad of the bundled model (~130 tokens);
    # most answers end far sooner at their end-of-sequence token, so the cap costs nothing.
    max_tokens: int = Field(
        default=160, ge=1, le=32768, description="Generated tokens per sample or trace."
    )
    samples: int = Field(default=1, ge=1, le=256, description="Samples (N) to draw at most.")
    batch_size: int = Field(default=4, ge=1, le=256, description="Samples per backend call.")
    beam_width: int = Field(default=1, ge=1, le=64, description="States kept per search step.")
    expansions: int = Field(default=1, ge=1, le=64, description="Proposals per state and step.")
    max_steps: int = Field(default=8, ge=1, le=64, description="Steps (lines) per search trace.")
    temperature: float = Field(default=0.8, ge=0.0, le=5.0, description="0 is greedy.")


def _override_model() -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, info in Budget.model_fields.items():
        optional = FieldInfo(default=None, description=info.description)
        optional.metadata = list(info.metadata)  # the same ge/le bounds
        fields[name] = (cast(Any, info.annotation) | None, optional)
    return create_model(
        "BudgetOverride",
        __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
        __doc__="Budget fields a request may set (``acr.budget``); unset fields keep the "
        "configured budget. Same fields and bounds as ``Budget``.",
        **fields,
    )


BudgetOverride = _override_model()

BUDGET_FIELDS: tuple[str, ...] = tuple(Budget.model_fields)


def merged_budget(base: Budget | None, *layers: dict[str, Any] | None) -> Budget:
    """``base`` (default ``Budget()``) with each layer's non-None fields applied in order.

    Returns a validated ``Budget``; raises ``BudgetError`` naming an unknown field (and the
    valid ones) or an out-of-range value. Used for config defaults + arm + request overrides.
    """
    data = (base or Budget()).model_dump()
    for layer in layers:
        if not layer:
            continue
        unknown = sorted(set(layer) - set(BUDGET_FIELDS))
        if unknown:
            raise BudgetError(
                f"unknown budget field {unknown[0]!r}; valid: {', '.join(BUDGET_FIELDS)}"
            )
        data.update({k: v for k, v in layer.items() if v is not None})
    try:
        return Budget(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise BudgetError(f"invalid budget: {where}: {err['msg']}") from None
