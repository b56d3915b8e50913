"""``acr calibrate``: fit the router to your backend and your prompts, and measure it.

1. **Label.** Every item of a JSONL file runs the router's probe and then every arm
   (strategy + budget) through ``RouterService``, the code that serves requests, against the
   configured backend; each response is graded with the task profile's checker. Finished
   items are appended to ``labels.jsonl`` (fsynced), so an interrupted run resumes where it
   stopped. At most ``concurrency`` items are in flight; an item's arms run one after the
   other.
2. **Fit.** The router model is fit on the *fit* part only (a fixed hash split of the
   questions) and written as ``router.skops`` with its card: feature schema, backend model,
   profile, data hash, date, probe length and the chosen cost weight.
3. **Choose lambda.** On the fit part, by 5-fold cross-fitting: each fold's items are decided
   by a model fit on the other folds, with the policy's own ``choose`` at each candidate
   lambda, and scored from the labels. The largest lambda whose accuracy is within one point
   of the best is kept (the cheapest near-best). This lookup only picks a setting; no
   reported number comes from it.
4. **Evaluate.** ``auto`` with the new model runs live through the service on the
   *evaluation* part; the fixed arms' rows there are their labelling runs (also live), and the
   oracle is the cheapest arm that solved each item, known after the fact. The report has a
   table with 95% Wilson intervals and a Pareto plot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from backends.base import Backend, BackendError
from difficulty.model import ArmSpec, RouterModel
from difficulty.probe import DEFAULT_PROBE_TOKENS, ProbeResult, run_probe
from difficulty.train import Row, TrainingError, fit_router_model, rows_from_item
from policies.adaptive import AdaptivePolicy
from policies.base import Problem
from policies.budget import BudgetOverride
from policies.latency import SLO
from policies.registry import default_arms, strategy_class
from policies.request import RequestSpec
from router.commands.bench import ItemRun, bench_config, parse_arm, user_spec
from router.commands.calibration_data import (
    CalibrationDataError,
    CalibrationItem,
    LabelFile,
    RunManifest,
    load_items,
    text_key,
)
from router.commands.calibration_report import (
    fixed_rows,
    oracle_row,
    row_summary,
    verdict,
    write_report,
)
from router.config import AppConfig
from router.core.assembly import make_profiles, make_service
from router.core.service import RouterService
from router.errors import BackendUnavailable, DeadlineExceeded, RouterError
from router.serving.runtime import make_backend, make_reward_model
from tasks.grading import gradable, is_correct
from tasks.profiles import TaskProfiles
from tasks.task import Task

#: cost weights tried when choosing lambda (success probability per 1,000 tokens)
LAMBDA_GRID: tuple[float, ...] = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
#: accuracy a cheaper lambda may lose against the best one on the fit part
LAMBDA_TOLERANCE = 0.01
FOLDS = 5

log = logging.getLogger(__name__)


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


def item_seed(item_id: str) -> int:
    """The item's sampling seed, the same in every run (resumed ones included)."""
    return int(hashlib.sha256(item_id.encode()).hexdigest()[:8], 16) % 100_000


class Labeler:
    """Runs the probe and every arm on one item through the service, and grades them."""

    def __init__(
        self,
        service: RouterService,
        profiles: TaskProfiles,
        plan: CalibrationPlan,
        probe_tokens: int,
    ) -> None:
        self.service = service
        self.profiles = profiles
        self.plan = plan
        self.probe_tokens = probe_tokens
        if plan.profile is not None and plan.profile not in profiles.kinds:
            raise ValueError(
                f"unknown profile {plan.profile!r}; valid: {', '.join(profiles.kinds)}"
            )

    def task_of(self, text: str) -> Task:
        """The profile the item is calibrated under: the named one, else its match."""
        if self.plan.profile is not None:
            return self.profiles.task_named(self.plan.profile)
        return self.profiles.match(text)

    def spec(self, item: CalibrationItem) -> RequestSpec:
        """The item as the service reads it from a chat request, under its profile."""
        spec = user_spec(item.text, item_seed(item.id), profile=self.plan.profile)
        return self.service.validate.check(spec)

    def problem(self, item: CalibrationItem) -> Problem:
        """The item's problem as the service reads it, under its profile."""
        return self.spec(item).problem

    async def probe(self, problem: Problem) -> ProbeResult | None:
        """The router's probe of the item, as the policy runs it (None if it failed)."""
        if self.probe_tokens <= 0:
            return None
        try:
            return await run_probe(
                self.service.backend,
                problem_text=problem.text,
                prompt=problem.prompt,
                messages=problem.messages,
                max_tokens=self.probe_tokens,
                stop=problem.stop,
                task=problem.task,
            )
        except (BackendError, TimeoutError):
            return None

    async def run_arm(self, item: CalibrationItem, spec: RequestSpec, arm: ArmSpec) -> Any:
        """One arm on the item through the service: its graded run, or why it cannot run."""
        problem = spec.problem
        t0 = time.perf_counter()
        try:
            armed = dataclasses.replace(
                spec,
                strategy=arm.strategy,
                budget=_budget_fields(arm),
                deadline_ms=int(self.plan.timeout_s * 1000),
            )
            served = await self.service.answer(self.service.validate.check(armed))
        except BackendUnavailable:
            raise
        except RouterError as exc:
            if isinstance(exc, DeadlineExceeded):
                budget = self.service.config.strategies.budget(arm.strategy)
                return {
                    "correct": False,
                    "tokens": budget.max_tokens * budget.samples,
                    "latency_ms": round((time.perf_counter() - t0) * 1000, 1),
                    "samples": 0,
                    "stop_reason": "deadline",
                }
            return exc.message  # this arm cannot run on this prompt (e.g. nothing to vote)
        run = ItemRun.served(served, arm.name)
        result = served.results[0]
        return {
            "correct": is_correct(problem.task, item.text, run.text, item.reference),
            "tokens": run.tokens,
            "latency_ms": round(served.latency_ms, 1),
            "samples": run.samples,
            "samples_planned": result.samples_planned,
            "stop_reason": run.stop_reason,
            "answer": problem.task.answer_of(run.text),
        }

    async def label(self, item: CalibrationItem) -> dict[str, Any]:
        """The item's labels record: its probe and every arm's graded run."""
        spec = self.spec(item)
        problem = spec.problem
        probe = await self.probe(problem)
        arms: dict[str, Any] = {}
        unavailable: dict[str, str] = {}
        for arm in self.plan.arms:
            got = await self.run_arm(item, spec, arm)
            if isinstance(got, str):
                unavailable[arm.name] = got
            else:
                arms[arm.name] = got
        return {
            "id": item.id,
            "text": item.text,
            "kind": problem.task.kind,
            "split": item.split,
            "reference": item.reference,
            "probe": probe.model_dump() if probe is not None else None,
            "probe_correct": (
                is_correct(problem.task, item.text, probe.text, item.reference)
                if probe is not None
                else None
            ),
            "arms": arms,
            "unavailable": unavailable,
        }


def _budget_fields(arm: ArmSpec) -> dict[str, Any] | None:
    """An arm's budget fields as a request's ``acr.budget`` (validated as the API does)."""
    if not arm.budget:
        return None
    override = BudgetOverride(**arm.budget)
    return {k: v for k, v in override.model_dump().items() if v is not None} or None


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


#: tries of one item when the backend fails (a 5xx), and the wait between them
ITEM_TRIES = 3
RETRY_WAIT_S = 10.0


async def _label_with_retries(labeler: Labeler, item: CalibrationItem) -> dict[str, Any] | None:
    """The item's record; None when the backend kept failing on it (it is left out of this
    run and tried again by the next, which resumes)."""
    for attempt in range(1, ITEM_TRIES + 1):
        try:
            return await labeler.label(item)
        except BackendUnavailable as exc:
            log.warning(
                "item %s failed (attempt %d of %d): %s", item.id, attempt, ITEM_TRIES, exc.message
            )
            if attempt < ITEM_TRIES:
                await asyncio.sleep(min(float(exc.retry_after_s), RETRY_WAIT_S))
    return None


async def label_all(
    labeler: Labeler, items: list[CalibrationItem], labels: LabelFile, progress: bool
) -> dict[str, dict[str, Any]]:
    """Label every item not yet in ``labels`` (``concurrency`` at a time); all records."""
    done = labels.load()
    todo = [i for i in items if i.id not in done]
    sem = asyncio.Semaphore(labeler.plan.concurrency)
    with _progress(progress) as bar:
        task = bar.add_task("labelling", total=len(items), completed=len(items) - len(todo))

        async def one(item: CalibrationItem) -> None:
            async with sem:
                record = await _label_with_retries(labeler, item)
            if record is not None:
                labels.append(record)
                done[item.id] = record
            bar.advance(task)

        await asyncio.gather(*(one(i) for i in todo))
    return done


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


def local_backend(config: AppConfig, device: str, torch_threads: int) -> Backend:
    """The configured backend in this process: the OpenAI-compatible server, or the local
    checkpoint (``model.path``, else the bundled model) micro-batched."""
    if config.model.kind == "openai":
        return make_backend(config)
    # torch loads only when a local checkpoint is calibrated.
    from router.commands.bench import load_model

    path = Path(config.model.path) if config.model.path else None
    return load_model(path, device, torch_threads, name=config.model.name)


async def evaluate_auto(
    service: RouterService, items: list[CalibrationItem], plan: CalibrationPlan
) -> list[dict[str, Any]]:
    """``auto`` on ``items``, live through ``service`` as chat requests (the task matched by
    the service's rules, as when serving), graded under the calibrated profile."""
    sem = asyncio.Semaphore(plan.concurrency)
    labeler = Labeler(service, service.validate.profiles, plan, 0)
    timeout_ms = int(plan.timeout_s * 1000)
    with _progress(plan.progress) as bar:
        task = bar.add_task("auto (evaluation part)", total=len(items))

        async def one(item: CalibrationItem) -> dict[str, Any]:
            spec = service.validate.check(
                user_spec(item.text, item_seed(item.id), deadline_ms=timeout_ms)
            )
            problem = spec.problem
            async with sem:
                try:
                    served = await service.answer(spec)
                except DeadlineExceeded:
                    bar.advance(task)
                    return {"id": item.id, "correct": False, "tokens": 0, "arm": "timeout"}
            bar.advance(task)
            run = ItemRun.served(served, "auto")
            grader = labeler.task_of(item.text)
            return {
                "id": item.id,
                "correct": is_correct(grader, item.text, run.text, item.reference),
                "tokens": run.tokens,
                "samples": run.samples,
                "latency_ms": round(served.latency_ms, 1),
                "arm": served.decision.arm,
                "task": problem.task.kind,
            }

        return list(await asyncio.gather(*(one(i) for i in items)))


def _fit(rows: list[Row], plan: CalibrationPlan, probe_tokens: int, **kw: Any) -> RouterModel:
    return fit_router_model(
        rows, version=plan.version, probe_tokens=probe_tokens, arms=list(plan.arms), **kw
    )


async def calibrate(
    plan: CalibrationPlan,
    config: AppConfig,
    *,
    backend: Backend | None = None,
    device: str = "cpu",
    torch_threads: int = 1,
    restart: bool = False,
) -> dict[str, Any]:
    """Label, fit, choose lambda, evaluate and report (see the module docstring).

    Returns the report (also written to ``plan.out_dir``: ``router.skops``, ``labels.jsonl``,
    ``report.json``, ``report.md``, ``pareto.png``). ``backend`` replaces the configured one
    (tests). Raises ``CalibrationDataError``/``ValueError`` for unusable data or settings.
    """
    items, data_hash = load_items(
        plan.data,
        question_field=plan.question_field,
        answer_field=plan.answer_field,
        answer_marker=plan.answer_marker,
        eval_percent=plan.eval_percent,
        limit=plan.limit,
    )
    cfg = bench_config(config)
    cfg.server.max_request_timeout_ms = max(
        cfg.server.max_request_timeout_ms, int(plan.timeout_s * 1000)
    )
    be = backend or local_backend(cfg, device, torch_threads)
    profiles = make_profiles(cfg, make_reward_model(cfg))
    service = make_service(cfg, be, profiles=profiles)
    await service.start()
    probe_tokens = (
        DEFAULT_PROBE_TOKENS if cfg.policy.probe_tokens is None else cfg.policy.probe_tokens
    )
    labeler = Labeler(service, profiles, plan, probe_tokens)
    if restart:
        for name in ("labels.jsonl", "run.json"):
            (plan.out_dir / name).unlink(missing_ok=True)
    RunManifest(plan.out_dir / "run.json").check_or_write(
        plan.manifest(be.name, probe_tokens, data_hash)
    )
    usable = [i for i in items if gradable(labeler.task_of(i.text), i.reference)]
    if not usable:
        raise CalibrationDataError(
            "no item can be graded: give reference answers (--answer-field) under a profile "
            "whose answer format extracts answers, or a profile with an exact checker"
        )
    records = await label_all(
        labeler, usable, LabelFile(plan.out_dir / "labels.jsonl"), plan.progress
    )
    failed = [i for i in usable if i.id not in records]
    if failed:
        log.warning("%d items left out: the backend kept failing on them", len(failed))
    usable = [i for i in usable if i.id in records]
    fit_recs = [records[i.id] for i in usable if i.split == "fit"]
    eval_items = [i for i in usable if i.split == "eval"]
    if not fit_recs or not eval_items:
        raise CalibrationDataError(
            f"{len(fit_recs)} fit and {len(eval_items)} evaluation items: both parts need "
            "items (use more data or another --eval-percent)"
        )
    model, model_path, sweep = await fit_and_save(fit_recs, labeler, cfg, data_hash)

    auto_cfg = cfg.model_copy(deep=True)
    auto_cfg.policy.classifier_path = str(model_path)
    auto_cfg.policy.lambda_per_1k_tokens = None
    auto_service = make_service(auto_cfg, be, profiles=profiles)
    auto_runs = await evaluate_auto(auto_service, eval_items, plan)
    await be.close()
    report = build_report(
        plan,
        be.name,
        probe_tokens,
        data_hash,
        fit=len(fit_recs),
        eval_recs=[records[i.id] for i in eval_items],
        skipped=len(items) - len(usable) - len(failed),
        failed=len(failed),
        model=model,
        model_path=model_path,
        sweep=sweep,
        auto_runs=auto_runs,
    )
    write_report(report, plan.out_dir)
    return report


def build_report(
    plan: CalibrationPlan,
    backend_name: str,
    probe_tokens: int,
    data_hash: str,
    *,
    fit: int,
    eval_recs: list[dict[str, Any]],
    skipped: int,
    failed: int,
    model: Any,
    model_path: Path,
    sweep: Any,
    auto_runs: list[dict[str, Any]],
) -> dict[str, Any]:
    """The calibration report (what ``write_report`` renders): each fixed arm, auto and the
    oracle on the evaluation part, the chosen lambda and how to use the model."""
    lam = model.card.lambda_per_1k_tokens or 0.0
    summary = [
        *fixed_rows(eval_recs, [a.name for a in plan.arms]),
        row_summary("auto", auto_runs),
        oracle_row(eval_recs),
    ]
    return {
        "settings": {
            **plan.manifest(backend_name, probe_tokens, data_hash),
            "data": str(plan.data),
        },
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "items": {"fit": fit, "eval": len(eval_recs), "skipped": skipped, "failed": failed},
        "profile_coverage": _coverage(auto_runs, plan.profile),
        "lambda_per_1k_tokens": lam,
        "lambda_sweep": sweep,
        "model": str(model_path),
        "model_metrics": model.card.metrics,
        "summary": summary,
        "verdict": verdict(summary),
        "use": ["policy:", f"  classifier_path: {model_path}   # lambda {lam:g} comes with it"],
        "auto_runs": auto_runs,
    }


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


def _coverage(runs: list[dict[str, Any]], profile: str | None) -> float | None:
    """Share of evaluation prompts the service's rules matched to ``profile``."""
    if profile is None or not runs:
        return None
    return sum(1 for r in runs if r.get("task") == profile) / len(runs)
