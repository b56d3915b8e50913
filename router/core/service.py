"""The router's request handling, free of HTTP and Ray: validate, decide, run, account, record.

``RouterService`` is what the HTTP edge calls, and what ``acr bench`` and ``acr calibrate``
drive in-process: one orchestration path. One request is one async generator
(``RouterService.serve``): it yields the frozen ``Decision`` first (so the edge can refuse
with a status before anything is sent), then, when streaming, the answer's text pieces, and
last the ``ServedResult``. The request runs inside two context managers that end it
exactly once however it ends: its quota hold (``router.quota.hold``) and its outcome record
(``router.outcomes.record``). Every failure is a domain error (``router.errors``); the edge
maps them to status codes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from backends.base import Backend, BackendError, StreamDelta
from policies.base import StrategyError, StrategyResult
from policies.decision import Decision
from policies.learning import OnlineLearner
from policies.policy import Policy
from policies.request import RequestSpec
from router.config import AppConfig
from router.core.execution import Execution, Executor, continued
from router.core.served import ServedResult
from router.core.validation import RequestValidator
from router.errors import DeadlineExceeded, InvalidOption, RouterError
from router.metrics import Metrics
from router.outcomes.log import OutcomeLog
from router.outcomes.record import Outcome, OutcomeRecorder
from router.quota.charges import (
    admission_tokens,
    decided_tokens,
    spent_without_answer,
    streamed_tokens,
)
from router.quota.hold import Hold, Quota
from router.quota.limiter import RateLimiter
from tasks.profiles import TaskProfiles

#: the outer bound's slack over the deadline, for a strategy to hand back its best so far
DEADLINE_GRACE_S = 0.5

#: what ``RouterService.serve`` yields: the decision, pieces of the answer (text, or a
#: ``StreamDelta`` with tool-call deltas or logprobs), then the result
Event = Decision | str | StreamDelta | ServedResult


def whole_delta(result: StrategyResult) -> StreamDelta:
    """A finished result as one stream piece: its text, its tool calls (indexed as stream
    deltas are) and the client's logprobs."""
    calls = None
    if result.tool_calls:
        calls = [{"index": i, **call} for i, call in enumerate(result.tool_calls)]
    return StreamDelta(text=result.text, tool_calls=calls, logprobs=result.logprobs)


class RouterService:
    """Serves chat and text completions through the strategy the policy chooses.

    Collaborators are injected: ``backend`` (a Ray handle adapter in production, a fake in
    tests), ``policy``, ``learner`` (what outcomes teach the policy; None: nothing),
    ``outcomes`` (the outcome log; None: none), ``limiter`` (per-key limits; None: none),
    ``profiles`` (task profiles), ``clock``.
    """

    def __init__(
        self,
        config: AppConfig,
        backend: Backend,
        policy: Policy,
        *,
        learner: OnlineLearner | None = None,
        outcomes: OutcomeLog | None = None,
        metrics: Metrics | None = None,
        limiter: RateLimiter | None = None,
        profiles: TaskProfiles | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.backend = backend
        self.policy = policy
        self.outcomes = outcomes
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.quota = Quota(limiter, self.metrics)
        self.recorder = OutcomeRecorder(
            learner,
            outcomes,
            agreement_weight=config.policy.agreement_weight,
            log_prompts=config.server.log_prompts,
            clock=clock,
        )
        self.validate = RequestValidator(config, backend, profiles or TaskProfiles())
        self.executor = Executor(backend, self.metrics, config.strategies, clock)
        #: whether the backend got ready (``start``); a live reload's new service inherits it
        self.started = False
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        """Let the backend get ready (discover what it can do) once, before its first
        request; a failure is retried on the next request."""
        if self.started:
            return
        async with self._start_lock:
            if not self.started:
                await self.backend.start()
                self.started = True

    async def readiness(self) -> dict[str, str]:
        """What keeps the service from serving now, by part (empty: ready)."""
        problems: dict[str, str] = {}
        try:
            await self.start()
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            problems["backend"] = f"not started ({type(exc).__name__})"
        reason = await self.backend.ready()
        if reason is not None:
            problems.setdefault("backend", reason)
        if self.outcomes is not None:
            problems.update(await self.outcomes.problems())
        return problems

    @property
    def model_name(self) -> str:
        """The model id this service answers to."""
        return self.backend.name

    def models(self) -> list[str]:
        """The model ids a request may name."""
        return [self.backend.name]

    def check(self, spec: RequestSpec) -> RequestSpec:
        """``spec`` within the limits, its task matched (``RequestValidator.check``)."""
        return self.validate.check(spec)

    def check_batch(self, specs: Sequence[RequestSpec]) -> list[RequestSpec]:
        """The prompts of one text completion request (``RequestValidator.check_batch``)."""
        return self.validate.check_batch(specs)

    async def route(self, spec: RequestSpec) -> Decision:
        """The decision for ``spec`` without generating anything (``/v1/route``)."""
        spec = dataclasses.replace(self.validate.check(spec), probe=False, serving=False)
        return await self._decide(spec)

    async def answer(self, spec: RequestSpec) -> ServedResult:
        """``spec`` (checked) served to its end, without streaming: its ``ServedResult``."""
        served: ServedResult | None = None
        async for item in self.serve(spec):
            if isinstance(item, ServedResult):
                served = item
        if served is None:  # serve always ends with its result or raises
            raise RuntimeError("the request ended without a result")
        return served

    async def serve(self, spec: RequestSpec, *, stream: bool = False) -> AsyncIterator[Event]:
        """Decide, run and record one request checked by ``validate.check``: yields its
        ``Decision`` first, then (``stream``) text pieces of its one choice as they are
        produced, then the ``ServedResult``. Single pass streams the backend's tokens; other
        strategies (and ``n`` > 1, a reasoning model's answer, a reused probe) run to the end
        first. It starts now and has the default deadline unless the spec says otherwise."""
        spec = dataclasses.replace(
            spec,
            start=self.clock() if spec.start is None else spec.start,
            deadline_ms=spec.deadline_ms or float(self.config.server.request_timeout_ms),
        )
        await self.start()
        streamed = False
        probe = admission_tokens(spec.problem, self.policy.probe_tokens)
        async with self.quota.hold(spec.tenant, probe) as hold:
            decision = await self._decide(spec)
            hold.charge = spent_without_answer(spec.problem, decision)
            await hold.grow(decided_tokens(spec.problem, decision, spec.n))
            yield decision
            async with self.recorder.recording(spec, decision) as outcome:
                run = Execution([])
                if stream and self._streams(spec, decision):
                    streamed = True
                    async for item in self._stream(spec, decision, hold):
                        if isinstance(item, Execution):
                            run = item
                        else:
                            yield item
                else:
                    run = await self._run(spec, decision, hold)
                served = self._complete(spec, decision, run, hold, outcome)
        if stream and not streamed:
            for r in served.results:
                yield whole_delta(r)
        yield served

    async def _decide(self, spec: RequestSpec) -> Decision:
        """The policy's decision, naming this backend's model; a request's invalid strategy
        or budget is its error."""
        try:
            decision = await self.policy.decide(spec)
        except (StrategyError, ValueError) as exc:
            raise InvalidOption(str(exc), getattr(exc, "field", None) or "acr") from exc
        return self.labelled(decision, spec)

    def labelled(self, decision: Decision, spec: RequestSpec) -> Decision:
        """``decision`` naming this backend's model and why ``spec`` came to it."""
        return decision.model_copy(
            update={"model": self.backend.name, "model_reason": spec.model_reason}
        )

    def _streams(self, spec: RequestSpec, decision: Decision) -> bool:
        """Whether the answer can stream as the backend produces it: one choice, a model
        that does not think first, and not the probe's completion returned whole."""
        return (
            spec.n == 1 and spec.problem.think is None and not (spec.plain and decision.reuse_probe)
        )

    async def _run(self, spec: RequestSpec, decision: Decision, hold: Hold) -> Execution:
        """Run the decision to its end (or its deadline)."""
        # Cut off, calls report no count and the model may finish anyway: charge all held.
        hold.charge = None
        try:
            # Strategies honour the deadline themselves; this outer bound guarantees that a
            # stuck backend call can never make the client hang past it.
            return await asyncio.wait_for(
                self.executor.run(spec, decision),
                timeout=max(0.001, spec.deadline - self.clock()) + DEADLINE_GRACE_S,
            )
        except TimeoutError:
            return Execution([])
        except RouterError:
            hold.charge = spent_without_answer(spec.problem, decision)
            raise

    async def _stream(
        self, spec: RequestSpec, decision: Decision, hold: Hold
    ) -> AsyncIterator[str | StreamDelta | Execution]:
        """The single choice's text pieces as the strategy streams them, then its
        ``Execution``. A backend failure before the first piece retries as ``_run`` does;
        after it, the request fails, charged what was sent (a closed stream stops the
        backend)."""
        problem = spec.problem
        go_on = (
            continued(problem, decision.probe) if spec.plain and decision.continue_probe else None
        )
        strategy = self.config.strategies.strategy(decision.strategy)
        result: StrategyResult | None = None
        sent: list[str] = []
        try:
            async for item in strategy.stream(
                go_on or problem, self.backend, decision.budget, spec.deadline, self.clock
            ):
                if isinstance(item, StrategyResult):
                    result = item
                    continue
                sent.append(item if isinstance(item, str) else item.text)
                yield item
        except BackendError:
            if sent:
                hold.charge = self._streamed_charge(spec, decision, sent, go_on)
                raise
            run = await self._run(spec, decision, hold)  # nothing sent yet: retry as usual
            if run.results:
                yield whole_delta(run.results[0])
            yield run
            return
        except BaseException:
            hold.charge = self._streamed_charge(spec, decision, sent, go_on)
            raise
        yield Execution([result] if result else [], probe_continued=go_on is not None)

    def _streamed_charge(
        self, spec: RequestSpec, decision: Decision, sent: list[str], go_on: Any
    ) -> int:
        streamed = streamed_tokens(self.backend, sent, go_on.prefix if go_on else "")
        return spent_without_answer(spec.problem, decision, streamed)

    def _complete(
        self, spec: RequestSpec, decision: Decision, run: Execution, hold: Hold, outcome: Outcome
    ) -> ServedResult:
        """The finished request, counted and charged; ``DeadlineExceeded`` when nothing came
        in time (charged all it held: the calls cut at the deadline report no count)."""
        start = spec.start if spec.start is not None else self.clock()
        served = ServedResult(
            id=spec.response_id or f"chatcmpl-{uuid.uuid4().hex[:24]}",
            model=self.backend.name,
            decision=decision,
            results=run.results,
            latency_ms=(self.clock() - start) * 1000,
            task_kind=spec.problem.task.kind,
            probe_reused=run.probe_reused,
            probe_continued=run.probe_continued,
            fell_back_to=run.fell_back_to,
        )
        outcome.results = run.results
        spent = served.completion_tokens + served.prompt_tokens
        if all(r.stop_reason == "deadline" and not r.text for r in run.results):
            hold.charge = max(spent, hold.tokens)
            raise DeadlineExceeded(
                f"no answer within the deadline of {spec.deadline_ms:.0f} ms; "
                "raise acr.timeout_ms or lower the budget"
            )
        self._count(served, spec.tenant)
        hold.charge = spent
        outcome.response_id = served.id
        outcome.probe_hidden = served.probe_hidden
        return served

    def _count(self, served: ServedResult, key: str) -> None:
        m = self.metrics
        for r in served.results:
            m.strategy.labels(strategy=r.strategy, stop_reason=r.stop_reason).inc()
            m.tokens.labels(kind="visible").inc(r.visible_tokens)
            m.tokens.labels(kind="hidden").inc(r.hidden_tokens)
            m.tokens.labels(kind="verifier").inc(r.verifier_tokens)
        m.tokens.labels(kind="prompt").inc(served.prompt_tokens)
        m.tokens.labels(kind="hidden").inc(served.probe_hidden)
        by = {"model": self.backend.name, "key": key}
        m.model_tokens.labels(**by, kind="prompt").inc(served.prompt_tokens)
        m.model_tokens.labels(**by, kind="completion").inc(served.completion_tokens)
        m.model_tokens.labels(**by, kind="reasoning").inc(served.reasoning_tokens)
        cost = self.config.model.price(served.prompt_tokens, served.completion_tokens)
        m.model_cost.labels(**by).inc(cost)
        decision = served.decision
        if decision.predicted_latency_ms is not None:
            labels = {"strategy": decision.strategy}
            m.latency_predicted.labels(**labels).observe(decision.predicted_latency_ms / 1000)
            m.latency_observed.labels(**labels).observe(served.latency_ms / 1000)

    async def feedback(self, response_id: str, reward: float, tenant: str) -> dict[str, Any]:
        """Apply a client's reward for one of its own responses, once, and log it
        (``OutcomeRecorder.feedback``). Each call counts against the key's
        ``requests_per_minute`` (``RateLimited`` past it), so ids cannot be probed without
        limit."""
        async with self.quota.hold(tenant, 0) as hold:
            hold.outcome = "feedback"
        return await self.recorder.feedback(response_id, reward, tenant)
