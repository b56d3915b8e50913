"""The policy's and the strategies' settings: the ``policy`` and ``strategies`` sections of
the service config (``router.config`` composes them), defined here once with their defaults.
"""

from __future__ import annotations

import inspect
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

from policies.base import Strategy
from policies.budget import Budget
from policies.registry import STRATEGY_NAMES, default_budgets, default_effort, strategy_class

Effort = Literal["low", "medium", "high"]
EFFORTS: tuple[str, ...] = ("low", "medium", "high")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StrategiesSettings(_Section):
    """Strategy budgets and what ``reasoning_effort`` maps to."""

    budgets: dict[str, Budget] = Field(
        default_factory=default_budgets, description="Default budget of each strategy."
    )
    effort: dict[Effort, str] = Field(
        default_factory=default_effort,  # type: ignore[arg-type]
        description="The strategy each reasoning_effort forces.",
    )

    thinking_budget_tokens: dict[Effort, int] = Field(
        default_factory=lambda: {"low": 256, "medium": 1024, "high": 4096},  # type: ignore[arg-type]
        description="On a reasoning model, the thinking budget each reasoning_effort buys.",
    )
    options: dict[str, dict[str, float | bool | str]] = Field(
        default_factory=dict,
        description="A strategy's own settings, e.g. self_consistency: {threshold: 0.95}.",
    )

    @model_validator(mode="after")
    def _known_names(self) -> StrategiesSettings:
        where_names = (
            ("budgets", self.budgets.keys()),
            ("effort", self.effort.values()),
            ("options", self.options.keys()),
        )
        for where, names in where_names:
            for name in names:
                if name not in STRATEGY_NAMES:
                    raise ValueError(
                        f"strategies.{where} names unknown strategy {name!r}; "
                        f"valid: {', '.join(STRATEGY_NAMES)}"
                    )
        for name, opts in self.options.items():
            valid = strategy_options(strategy_class(name))
            unknown = sorted(set(opts) - set(valid))
            if unknown:
                raise ValueError(
                    f"strategies.options.{name} has no setting {unknown[0]!r}; "
                    f"valid: {', '.join(valid) or 'none'}"
                )
            try:  # the values too: a bad one fails here, not on the first request
                strategy_class(name)(**opts)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"strategies.options.{name}: {exc}") from None
        return self

    def budget(self, strategy: str) -> Budget:
        """The configured budget of ``strategy`` (the model default when not configured)."""
        return self.budgets.get(strategy) or Budget()

    def strategy(self, name: str) -> Strategy:
        """A fresh strategy ``name`` built with its configured options."""
        return strategy_class(name)(**self.options.get(name, {}))


def strategy_options(cls: type[Strategy]) -> list[str]:
    """The settings a strategy's constructor takes (none for most strategies)."""
    params = inspect.signature(cls.__init__).parameters
    return [k for k, p in params.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]


class PolicySettings(_Section):
    """How the router chooses a strategy and learns from outcomes."""

    version: str = Field(
        default="v1",
        pattern=r"^[A-Za-z0-9._-]{1,32}$",
        description="Policy version; part of every Redis key of the online state.",
    )
    latency_slo_ms: PositiveInt = Field(
        default=10_000, le=3_600_000, description="Latency SLO of a request."
    )
    cost_cap_tokens: PositiveInt = Field(
        default=4096, le=1_000_000, description="Most tokens auto may plan for one request."
    )
    lambda_per_1k_tokens: float | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Success probability traded for 1,000 tokens. Empty: the router model's "
        "own (chosen by `acr calibrate` on its fit data), else 0.1.",
    )
    exploration_rate: float = Field(
        default=0.05, ge=0, le=1, description="Largest share of requests that explore."
    )
    decision_cache_ttl_s: NonNegativeInt = Field(
        default=300, le=86_400, description="How long a prompt's difficulty estimate is kept."
    )
    classifier_path: str | None = Field(
        default=None, description="A trained router model (.skops); empty uses the bundled one."
    )
    probe_tokens: NonNegativeInt | None = Field(
        default=None,
        le=512,
        description="Greedy tokens of the entropy probe. Empty: the router model's own probe "
        "length (entropy over 24 tokens is not entropy over 96, so a model's length wins); "
        "a number is used with a model that has none; 0 disables the probe.",
    )
    prior_strength: float = Field(
        default=20.0, gt=0, description="Pseudo-observations the training prior is worth."
    )
    capacity_tokens_per_s: float = Field(
        default=2000.0, gt=0, description="Initial backend throughput guess (learned live)."
    )
    call_latency_ms: float = Field(
        default=0.0, ge=0, description="Initial latency of one backend call (learned live)."
    )
    agreement_weight: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Observations the agreement among a run's samples is worth when no "
        "verifier scored it (a proxy of success; 0 ignores it).",
    )
    feedback_cap_per_tenant: float = Field(
        default=20.0,
        ge=0,
        le=1e6,
        description="Most observations one API key's feedback may add to any one (task, "
        "difficulty bin, arm) estimate shared by all tenants.",
    )
    feedback_ttl_s: PositiveInt = Field(
        default=86_400, le=30 * 86_400, description="How long a response accepts feedback."
    )
    probe_share_of_slo: float = Field(
        default=0.5, gt=0, le=1, description="Skip the probe if it would use more of the SLO."
    )
