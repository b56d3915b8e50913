"""What ``acr calibrate`` is asked to do: its data, arms and limits (``CalibrationPlan``), and
the arms read from ``--arm`` specs as serving names them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difficulty.model import ArmSpec
from policies.registry import default_arms, strategy_class
from router.commands.bench_arms import parse_arm
from router.config import AppConfig


@dataclass
class CalibrationPlan:
    """What to calibrate on and where to write it (``acr calibrate``'s options)."""

    data: Path
    out_dir: Path
    profile: str | None = None
    question_field: str = "question"
    answer_field: str | None = "answer"
    answer_marker: str | None = "####"
    eval_percent: int = 30
    limit: int | None = None
    arms: list[ArmSpec] = field(default_factory=default_arms)
    concurrency: int = 4
    timeout_s: float = 120.0
    version: str = "router-calibrated"
    progress: bool = True
    #: the pool backend fitted (None: the config's one model): how the report says to use it
    pool_backend: str | None = None

    def manifest(self, backend_model: str, probe_tokens: int, data_hash: str) -> dict[str, Any]:
        """The settings that make labels comparable; a resumed run must have the same."""
        return {
            "backend_model": backend_model,
            "data_hash": data_hash,
            "profile": self.profile,
            "probe_tokens": probe_tokens,
            "eval_percent": self.eval_percent,
            "arms": [a.model_dump() for a in self.arms],
        }


def arms_from_specs(specs: list[str], config: AppConfig) -> list[ArmSpec]:
    """Arms from ``strategy[:field=value,...]`` specs (as ``acr bench --arm``), named as
    serving names them, with the budget fields that differ from the configured default."""
    arms: list[ArmSpec] = []
    for spec in specs:
        _, strategy, budget = parse_arm(spec, config)
        default = config.strategies.budget(strategy).model_dump()
        fields = {k: float(v) for k, v in budget.model_dump().items() if v != default.get(k)}
        name = strategy_class(strategy).arm_name(budget)
        if any(a.name == name for a in arms):
            raise ValueError(f"two arms are both {name!r}; give each a distinct budget")
        arms.append(ArmSpec(name=name, strategy=strategy, budget=fields))
    return arms
