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

This module runs the steps in order, with the labelling run over all items (concurrency,
retries, resuming) and the live evaluation; each step's parts are in a module of their own:
``calibration_plan`` (the options), ``calibration_data`` (items and the labels file),
``calibration_labels`` (one item's labels), ``calibration_fit`` (fit and lambda) and
``calibration_report``.
"""

from __future__ import annotations

import asyncio
import logging
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

from backends.base import Backend
from difficulty.probe import DEFAULT_PROBE_TOKENS
from router.commands.bench_rows import ItemRun, bench_config, user_spec
from router.commands.calibration_data import (
    CalibrationDataError,
    CalibrationItem,
    LabelFile,
    RunManifest,
    load_items,
)
from router.commands.calibration_fit import choose_lambda, fit_and_save
from router.commands.calibration_labels import Labeler, item_seed
from router.commands.calibration_plan import CalibrationPlan, arms_from_specs
from router.commands.calibration_report import build_report, write_report
from router.config import AppConfig
from router.core.assembly import make_profiles, make_service
from router.core.service import RouterService
from router.errors import BackendUnavailable, DeadlineExceeded
from router.serving.runtime import make_backend, make_reward_model
from tasks.grading import gradable, is_correct
from tasks.profiles import TaskProfiles

#: the calibration's names as the CLI, tests and ``lab/`` import them from here; each is
#: defined in the module of its step (plan, labels, fit, report)
__all__ = [
    "CalibrationItem",
    "CalibrationPlan",
    "ITEM_TRIES",
    "Labeler",
    "RETRY_WAIT_S",
    "arms_from_specs",
    "calibrate",
    "choose_lambda",
    "evaluate_auto",
    "item_seed",
    "label_all",
    "local_backend",
]

log = logging.getLogger(__name__)


def _progress(enabled: bool) -> Progress:
    """A progress bar for one step over the items, with elapsed and remaining time (hidden
    unless ``enabled``)."""
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


def pool_members(config: AppConfig, backend: str | None) -> list[tuple[str, AppConfig]]:
    """What ``acr calibrate`` fits: (model id, config as that backend's service sees it)
    for ``backend``, else for every backend of a pool, else for the one model. Raises
    ``ValueError`` naming the choices for an unknown ``backend``."""
    members = {b.name: b for b in config.backends}
    if backend is None:
        return [(n, config.for_backend(b)) for n, b in members.items()] or [
            (config.model.name, config)
        ]
    if backend in members:
        return [(backend, config.for_backend(members[backend]))]
    if not members and backend == config.model.name:
        return [(backend, config)]
    known = ", ".join(members or [config.model.name])
    raise ValueError(f"--backend {backend!r} is not in the config; its backends: {known}")


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
    items, data_hash = _items_of(plan)
    cfg = bench_config(config)
    cfg.server.max_request_timeout_ms = max(
        cfg.server.max_request_timeout_ms, int(plan.timeout_s * 1000)
    )
    be = backend or local_backend(cfg, device, torch_threads)
    labeler = await _start_labeler(cfg, be, plan)
    _open_run(plan, be.name, labeler.probe_tokens, data_hash, restart)
    usable = _gradable(items, labeler)
    records = await label_all(
        labeler, usable, LabelFile(plan.out_dir / "labels.jsonl"), plan.progress
    )
    fit_recs, eval_items, failed = _parts(usable, records)
    model, model_path, sweep = await fit_and_save(fit_recs, labeler, cfg, data_hash)
    auto_service = _auto_service(cfg, be, labeler.profiles, model_path)
    auto_runs = await evaluate_auto(auto_service, eval_items, plan)
    await be.close()
    report = build_report(
        plan,
        be.name,
        labeler.probe_tokens,
        data_hash,
        fit=len(fit_recs),
        eval_recs=[records[i.id] for i in eval_items],
        # the labelled and the failed items are the gradable ones: the rest were skipped
        skipped=len(items) - len(usable),
        failed=len(failed),
        model=model,
        model_path=model_path,
        sweep=sweep,
        auto_runs=auto_runs,
    )
    write_report(report, plan.out_dir)
    return report


def _items_of(plan: CalibrationPlan) -> tuple[list[CalibrationItem], str]:
    """The plan's items read from its data file, and the file's hash (see ``load_items``)."""
    return load_items(
        plan.data,
        question_field=plan.question_field,
        answer_field=plan.answer_field,
        answer_marker=plan.answer_marker,
        eval_percent=plan.eval_percent,
        limit=plan.limit,
    )


async def _start_labeler(cfg: AppConfig, backend: Backend, plan: CalibrationPlan) -> Labeler:
    """A labeler over a started service of ``cfg`` on ``backend``, with the configured
    probe length; raises ``ValueError`` for an unknown ``plan.profile``."""
    profiles = make_profiles(cfg, make_reward_model(cfg))
    service = make_service(cfg, backend, profiles=profiles)
    await service.start()
    probe_tokens = (
        DEFAULT_PROBE_TOKENS if cfg.policy.probe_tokens is None else cfg.policy.probe_tokens
    )
    return Labeler(service, profiles, plan, probe_tokens)


def _open_run(
    plan: CalibrationPlan, backend_name: str, probe_tokens: int, data_hash: str, restart: bool
) -> None:
    """Start over (``restart``: the labels found in ``plan.out_dir`` are discarded) or resume;
    raises when the labels there were made with other settings."""
    if restart:
        for name in ("labels.jsonl", "run.json"):
            (plan.out_dir / name).unlink(missing_ok=True)
    RunManifest(plan.out_dir / "run.json").check_or_write(
        plan.manifest(backend_name, probe_tokens, data_hash)
    )


def _gradable(items: list[CalibrationItem], labeler: Labeler) -> list[CalibrationItem]:
    """The items whose answers the profile they are calibrated under can grade; raises
    ``CalibrationDataError`` when there are none."""
    usable = [i for i in items if gradable(labeler.task_of(i.text), i.reference)]
    if not usable:
        raise CalibrationDataError(
            "no item can be graded: give reference answers (--answer-field) under a profile "
            "whose answer format extracts answers, or a profile with an exact checker"
        )
    return usable


def _auto_service(
    cfg: AppConfig, backend: Backend, profiles: TaskProfiles, model_path: Path
) -> RouterService:
    """The service ``auto`` is evaluated through: the labelling service's config, backend and
    profiles with the router model at ``model_path``, and the cost weight that comes with it."""
    auto_cfg = cfg.model_copy(deep=True)
    auto_cfg.policy.classifier_path = str(model_path)
    auto_cfg.policy.lambda_per_1k_tokens = None
    return make_service(auto_cfg, backend, profiles=profiles)


def _parts(
    usable: list[CalibrationItem], records: dict[str, dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[CalibrationItem], list[CalibrationItem]]:
    """(records of the fit part, items of the evaluation part, items the backend kept failing
    on) of the ``usable`` items; raises ``CalibrationDataError`` when a part is empty."""
    failed = [i for i in usable if i.id not in records]
    if failed:
        log.warning("%d items left out: the backend kept failing on them", len(failed))
    labelled = [i for i in usable if i.id in records]
    fit_recs = [records[i.id] for i in labelled if i.split == "fit"]
    eval_items = [i for i in labelled if i.split == "eval"]
    if not fit_recs or not eval_items:
        raise CalibrationDataError(
            f"{len(fit_recs)} fit and {len(eval_items)} evaluation items: both parts need "
            "items (use more data or another --eval-percent)"
        )
    return fit_recs, eval_items, failed
