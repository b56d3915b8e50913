"""Labelling one calibration item: the router's probe and every arm of the plan run on it
through ``RouterService`` (the code that serves requests), each graded with the task
profile's checker. ``Labeler.label`` returns the item's record for ``labels.jsonl``; the
run over all items (concurrency, retries, resuming) is ``calibrate.label_all``'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any

from backends.base import BackendError
from difficulty.model import ArmSpec
from difficulty.probe import ProbeResult, run_probe
from policies.base import Problem
from policies.budget import BudgetOverride
from policies.request import RequestSpec
from router.commands.bench_rows import ItemRun, user_spec
from router.commands.calibration_data import CalibrationItem
from router.commands.calibration_plan import CalibrationPlan
from router.core.service import RouterService
from router.errors import BackendUnavailable, DeadlineExceeded, RouterError
from tasks.grading import is_correct
from tasks.profiles import TaskProfiles
from tasks.task import Task


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
