"""Fitting the router on labelled items and choosing its cost weight (lambda).

The router model is fit on the *fit* part's labels only. Lambda is chosen there too, by
``FOLDS``-fold cross-fitting: each fold's items are decided by a model fit on the other folds,
with the policy's own ``choose`` at each lambda of ``LAMBDA_GRID``, and scored from the
labels; the largest lambda within ``LAMBDA_TOLERANCE`` of the best accuracy is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from difficulty.model import RouterModel
from difficulty.probe import ProbeResult
from difficulty.train import Row, TrainingError, fit_router_model, rows_from_item
from policies.adaptive import AdaptivePolicy
from policies.latency import SLO
from router.commands.calibration_data import CalibrationItem, text_key
from router.commands.calibration_labels import Labeler
from router.commands.calibration_plan import CalibrationPlan
from router.config import AppConfig

#: cost weights tried when choosing lambda (success probability per 1,000 tokens)
LAMBDA_GRID: tuple[float, ...] = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
#: accuracy a cheaper lambda may lose against the best one on the fit part
LAMBDA_TOLERANCE = 0.01
FOLDS = 5


def training_rows(records: list[dict[str, Any]], labeler: Labeler) -> list[Row]:
    """Router-model rows of labelled items, featurised under the profile they are served.

    Latencies are left out: measured at calibration's own concurrency on a machine that
    may be busy, they would price every later request; serving learns the backend's call
    speed from its own requests instead (``policies.load``).
    """
    rows: list[Row] = []
    for record in records:
        arms = {a: {**v, "latency_ms": 0.0} for a, v in record["arms"].items()}
        rows.extend(rows_from_item({**record, "arms": arms}, task=labeler.task_of(record["text"])))
    return rows


def fold_of(text: str) -> int:
    """The cross-fitting fold of a question (by its text hash)."""
    return int(text_key(text)[8:16], 16) % FOLDS


def outcome_of(record: dict[str, Any], decision: Any) -> tuple[bool, float] | None:
    """(correct, tokens) the labels say ``decision`` would have had on this item, probe
    included (None when its arm was not labelled)."""
    probe = record.get("probe") or {}
    probe_tokens = float(probe.get("tokens", 0))
    if decision.reuse_probe:
        return bool(record.get("probe_correct")), probe_tokens
    arm = record["arms"].get(decision.arm)
    if arm is None:
        return None
    if decision.continue_probe:
        return bool(arm["correct"]), max(float(arm["tokens"]), probe_tokens)
    return bool(arm["correct"]), float(arm["tokens"]) + probe_tokens


async def lambda_sweep(
    records: list[dict[str, Any]],
    labeler: Labeler,
    config: AppConfig,
    fit_model: Callable[[list[Row]], RouterModel],
) -> list[dict[str, Any]]:
    """Accuracy and mean tokens of ``auto`` at each lambda of ``LAMBDA_GRID`` on the fit
    records, each fold decided by a model fit on the other folds."""
    totals = {lam: [0, 0.0, 0] for lam in LAMBDA_GRID}  # correct, tokens, items
    settings = config.policy.model_copy(update={"exploration_rate": 0.0})
    for k in range(FOLDS):
        train = [r for r in records if fold_of(r["text"]) != k]
        test = [r for r in records if fold_of(r["text"]) == k]
        if not test or not train:
            continue
        try:
            model = fit_model(training_rows(train, labeler))
        except TrainingError:
            continue
        policy = AdaptivePolicy(
            settings, config.strategies, backend=labeler.service.backend, model=model
        )
        for record in test:
            probe = ProbeResult.model_validate(record["probe"]) if record.get("probe") else None
            problem = labeler.problem(CalibrationItem(record["id"], record["text"], None, "fit"))
            est = policy.estimate(problem, probe)
            for lam in LAMBDA_GRID:
                slo = SLO(
                    latency_budget_ms=settings.latency_slo_ms,
                    cost_cap_tokens=settings.cost_cap_tokens,
                    lambda_per_1k_tokens=lam,
                )
                decision = await policy.choose(est, slo, policy.tracker.snapshot())
                if probe is None and decision.reuse_probe:
                    decision = decision.model_copy(update={"reuse_probe": False})
                got = outcome_of(record, decision)
                if got is not None:
                    t = totals[lam]
                    t[0] += int(got[0])
                    t[1] += got[1]
                    t[2] += 1
    return [
        {"lambda": lam, "accuracy": c / n, "mean_tokens": tok / n, "items": n}
        for lam, (c, tok, n) in totals.items()
        if n
    ]


def choose_lambda(sweep: list[dict[str, Any]], tolerance: float = LAMBDA_TOLERANCE) -> float:
    """The largest lambda whose accuracy is within ``tolerance`` of the sweep's best."""
    if not sweep:
        return 0.1
    best = max(s["accuracy"] for s in sweep)
    return max(s["lambda"] for s in sweep if s["accuracy"] >= best - tolerance)


async def fit_and_save(
    fit_recs: list[dict[str, Any]], labeler: Labeler, config: AppConfig, data_hash: str
) -> tuple[RouterModel, Path, list[dict[str, Any]]]:
    """Choose lambda on the fit records, fit the router on them and write it with its card;
    (model, its path, the lambda sweep)."""
    plan, probe_tokens = labeler.plan, labeler.probe_tokens
    sweep = await lambda_sweep(
        fit_recs, labeler, config, lambda rows: _fit(rows, plan, probe_tokens, holdout=0.0)
    )
    model = _fit(
        training_rows(fit_recs, labeler),
        plan,
        probe_tokens,
        provenance={"data": str(plan.data), "data_hash": data_hash, "profile": plan.profile},
    )
    model.card.backend_model = labeler.service.backend.name
    model.card.lambda_per_1k_tokens = choose_lambda(sweep)
    model_path = (plan.out_dir / "router.skops").resolve()
    model.save(model_path)
    return model, model_path, sweep


def _fit(rows: list[Row], plan: CalibrationPlan, probe_tokens: int, **kw: Any) -> RouterModel:
    """The router model fit on ``rows`` with the plan's arms and version (``kw``: the other
    options of ``fit_router_model``, e.g. ``holdout``, ``provenance``)."""
    return fit_router_model(
        rows, version=plan.version, probe_tokens=probe_tokens, arms=list(plan.arms), **kw
    )
