"""Arm specs: ``strategy[:field=value,...]`` strings, as ``acr bench --arm`` and
``acr calibrate --arm`` take them, read into a strategy, its budget and its own options."""

from __future__ import annotations

import inspect
from typing import Any

from policies.budget import Budget
from policies.registry import STRATEGIES, strategy_class
from policies.settings import strategy_options
from router.config import AppConfig


def parse_arm(spec: str, config: AppConfig | None = None) -> tuple[str, str, Budget]:
    """``"best_of_n:samples=16"`` -> (row name, strategy, budget).

    Fields are ``Budget``'s; a strategy's own constructor options (``threshold`` and
    ``adaptive`` of self-consistency) are accepted too and read by ``arm_options``.
    """
    name, _, params = spec.partition(":")
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    data = (config or AppConfig()).strategies.budget(name).model_dump()
    options = _strategy_options(name)
    for kv in filter(None, params.split(",")):
        key, _, value = kv.partition("=")
        if key in options:
            continue
        if key not in data:
            valid = ", ".join([*data, *options])
            raise ValueError(f"unknown budget field {key!r}; valid: {valid}")
        data[key] = float(value) if key == "temperature" else int(value)
    return spec, name, Budget(**data)


def _strategy_options(strategy: str) -> dict[str, inspect.Parameter]:
    """The keyword options of ``strategy``'s constructor (none for most strategies)."""
    params = inspect.signature(strategy_class(strategy).__init__).parameters
    return {k: params[k] for k in strategy_options(strategy_class(strategy))}


def arm_options(spec: str) -> dict[str, Any]:
    """Constructor options named in an arm spec, e.g. ``self_consistency:threshold=0.9``."""
    name, _, params = spec.partition(":")
    options = _strategy_options(name)
    out: dict[str, Any] = {}
    for kv in filter(None, params.split(",")):
        key, _, value = kv.partition("=")
        if key in options:
            default = options[key].default
            out[key] = bool(int(value)) if isinstance(default, bool) else type(default)(value)
    return out
