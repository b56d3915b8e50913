"""Several backends behind one endpoint: the pool chooses the model, and that model's own
service chooses and runs the strategy and budget.

A request naming a backend runs there (a 503 with ``retry-after`` when it is down: never a
silent substitution). A request naming the pool (``pool.id``, ``auto`` or no model) is checked by
every backend (its fields, its task profiles); those that can serve it and are up are
scored by their own policy's decision without a probe: the success it predicts for its best
arm, less the cost weight times what that arm would cost in the pool's price units
(``BackendConfig.price``). The best backend serves it with its full decision (probe
included); when it turns out to be down before anything was sent, the next one does, and
the ``router`` object says which model served and why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from policies.decision import Decision
from policies.request import RequestSpec
from policies.router_model import DEFAULT_LAMBDA_PER_1K_TOKENS
from router.config import AppConfig, BackendConfig
from router.core.served import ServedResult
from router.core.service import Event, RouterService
from router.errors import (
    BackendUnavailable,
    InvalidOption,
    NotFound,
    RouterError,
    UnknownModel,
)
from router.metrics import Metrics


@dataclass(frozen=True)
class Member:
    """One backend of the pool: its config and the service in front of it."""

    config: BackendConfig
    service: RouterService

    @property
    def name(self) -> str:
        """Its model id."""
        return self.config.name


@dataclass(frozen=True)
class Choice:
    """A backend that can serve a request: its checked spec and its score."""

    member: Member
    spec: RequestSpec
    utility: float = 0.0
    note: str = ""
    #: its policy's decision without a probe, when the pool ranked it (``/v1/route``'s own)
    decision: Decision | None = None


class PoolService:
    """Serves requests on the backend of ``members`` each one is best served by."""

    def __init__(
        self,
        config: AppConfig,
        members: list[Member],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.members = members
        self.by_name = {m.name: m for m in members}
        self.metrics: Metrics = members[0].service.metrics
        self.clock = clock
        weight = config.policy.lambda_per_1k_tokens
        self.cost_weight = DEFAULT_LAMBDA_PER_1K_TOKENS if weight is None else weight

    @property
    def model_name(self) -> str:
        """The pool's id."""
        return self.config.pool.id

    def models(self) -> list[str]:
        """Every backend's model id, then the pool's."""
        return [*self.by_name, self.model_name]

    async def start(self) -> None:
        """Let every backend get ready; one that fails is retried on its next request."""
        await asyncio.gather(*(m.service.start() for m in self.members), return_exceptions=True)

    async def readiness(self) -> dict[str, str]:
        """Ready when at least one backend is; otherwise every backend's problems."""
        problems: dict[str, str] = {}
        for m in self.members:
            found = await m.service.readiness()
            if not found:
                return {}
            problems.update({f"{m.name}.{k}": v for k, v in found.items()})
        return problems

    def check(self, spec: RequestSpec) -> RequestSpec:
        """Refuse a model this pool does not serve, and a request no backend it may go to
        takes (the first refusal); each backend checks it again when it serves it."""
        if spec.model not in (None, "", "auto", self.model_name, *self.by_name):
            raise UnknownModel(
                f"model {spec.model!r} does not exist; available: {', '.join(self.models())}",
                "model",
            )
        self._candidates(spec, first=True)
        return spec

    def check_batch(self, specs: Sequence[RequestSpec]) -> list[RequestSpec]:
        """The prompts of one text completion request within the shared bounds; each one
        is served (and checked) by the backend chosen for it."""
        if specs:
            self.check(specs[0])
        self.members[0].service.validate.batch_bounds(specs)
        return list(specs)

    async def route(self, spec: RequestSpec) -> Decision:
        """The decision the best backend would make, without generating."""
        choice = (await self.choices(spec))[0]
        labelled = dataclasses.replace(choice.spec, model_reason=choice.note)
        if choice.decision is not None:
            # ranking made the very decision route would: same checked spec, no probe
            return choice.member.service.labelled(choice.decision, labelled)
        return await choice.member.service.route(labelled)

    async def answer(self, spec: RequestSpec) -> ServedResult:
        """``spec`` served to its end without streaming."""
        served: ServedResult | None = None
        async for item in self.serve(spec):
            if isinstance(item, ServedResult):
                served = item
        if served is None:
            raise RuntimeError("the request ended without a result")
        return served

    async def serve(self, spec: RequestSpec, *, stream: bool = False) -> AsyncIterator[Event]:
        """Serve ``spec`` on the best backend, failing over to the next one when it is
        unavailable before anything of the answer was sent. Yields the first backend's
        ``Decision`` (the edge's headers), the answer's pieces, then the ``ServedResult``,
        whose decision names the model that served and why."""
        choices = await self.choices(spec)
        start = self.clock() if spec.start is None else spec.start
        failed: list[str] = []
        decided = False
        for i, choice in enumerate(choices):
            note = choice.note + (f"; failed over from {', '.join(failed)}" if failed else "")
            checked = dataclasses.replace(choice.spec, start=start, model_reason=note)
            sent = False
            try:
                async for item in choice.member.service.serve(checked, stream=stream):
                    if isinstance(item, Decision):
                        if decided:
                            continue
                        decided = True
                    elif not isinstance(item, ServedResult):
                        sent = True
                    yield item
                return
            except BackendUnavailable:
                if sent or i == len(choices) - 1:
                    raise
                failed.append(choice.member.name)

    async def feedback(self, response_id: str, reward: float, tenant: str) -> dict[str, Any]:
        """Feedback on a response of any backend (each knows its own), counted once against
        the key's requests (``RouterService.feedback``)."""
        async with self.members[0].service.quota.hold(tenant, 0) as hold:
            hold.outcome = "feedback"
        missing: RouterError | None = None
        for m in self.members:
            try:
                return await m.service.recorder.feedback(response_id, reward, tenant)
            except NotFound as err:
                missing = err
        assert missing is not None
        raise missing

    async def choices(self, spec: RequestSpec) -> list[Choice]:
        """The backends that can serve ``spec``, best first (see the module docstring)."""
        named = spec.model if spec.model in self.by_name else None
        fits = self._candidates(spec)
        waits = [c.member.service.backend.unavailable_for_s() for c in fits]
        up = [c for c, wait in zip(fits, waits, strict=True) if wait <= 0]
        if not up:
            names = ", ".join(c.member.name for c in fits)
            retry = max(1, math.ceil(min(waits)))
            raise BackendUnavailable(f"model {names} is unavailable now", retry_after_s=retry)
        if named or len(up) == 1:
            why = "named in request" if named else "the only backend up that serves it"
            return [dataclasses.replace(c, note=f"{c.member.name}: {why}") for c in up]
        return await self._ranked(up)

    def _candidates(self, spec: RequestSpec, *, first: bool = False) -> list[Choice]:
        """The backends ``spec`` may go to that take it (``first``: the first one found);
        the first refusal when none does."""
        named = spec.model if spec.model in self.by_name else None
        pool = [self.by_name[named]] if named else self.members
        fits, refusal = self._fitting(spec, pool, first=first)
        if not fits:
            raise refusal or InvalidOption("no backend of the pool serves this request", "model")
        return fits

    def _fitting(
        self, spec: RequestSpec, pool: list[Member], *, first: bool = False
    ) -> tuple[list[Choice], RouterError | None]:
        """The backends whose fields, limits and task profiles take ``spec``."""
        out: list[Choice] = []
        refusal: RouterError | None = None
        for m in pool:
            try:
                checked = m.service.validate.check(dataclasses.replace(spec, model=None))
            except InvalidOption as err:
                refusal = refusal or err
                continue
            kind = checked.problem.task.kind
            if m.config.profiles and kind not in m.config.profiles:
                refusal = refusal or InvalidOption(
                    f"no backend of the pool serves task {kind!r} "
                    f"({m.name} serves {', '.join(m.config.profiles)})",
                    "model",
                )
                continue
            out.append(Choice(m, checked))
            if first:
                break
        return out, refusal

    async def _ranked(self, choices: list[Choice]) -> list[Choice]:
        """``choices`` by the utility of each one's best arm in the pool's price units."""
        # each policy reads its own online statistics (Redis): side by side
        decisions = await asyncio.gather(
            *(
                c.member.service.policy.decide(
                    dataclasses.replace(c.spec, probe=False, serving=False)
                )
                for c in choices
            ),
            return_exceptions=True,
        )
        scored = []
        refusal: BaseException | None = None
        for c, d in zip(choices, decisions, strict=True):
            if isinstance(d, ValueError):  # what the request forces cannot run there
                refusal = refusal or d
                continue
            if isinstance(d, BaseException):
                raise d
            tokens = d.predicted_cost_tokens or float(d.budget.max_tokens)
            cost = c.member.config.price(self._prompt_tokens(c), tokens)
            utility = (d.predicted_success or 0.0) - self.cost_weight * cost
            scored.append((utility, c, d, cost))
        # equal utilities (one model on two servers): the one predicted faster under its
        # load serves, which spreads the load
        if not scored:
            raise InvalidOption(str(refusal), getattr(refusal, "field", None) or "acr")
        scored.sort(key=lambda s: (-round(s[0], 3), s[2].predicted_latency_ms or 0.0))
        best = scored[0]
        others = "; ".join(f"{c.member.name} {u:.3f}" for u, c, _, _ in scored[1:])
        out = []
        for utility, c, d, cost in scored:
            note = (
                f"{c.member.name}: best utility {utility:.3f} ({d.arm} P="
                f"{d.predicted_success or 0:.2f} cost={cost:.3g} "
                f"latency={d.predicted_latency_ms or 0:.0f}ms) over {others}"
                if c is best[1]
                else f"{c.member.name}: next best"
            )
            out.append(dataclasses.replace(c, utility=utility, note=note, decision=d))
        return out

    @staticmethod
    def _prompt_tokens(choice: Choice) -> float:
        """The prompt's tokens on the choice's backend (its tokenizer, else about 4
        characters a token)."""
        text = choice.spec.problem.text
        counted = choice.member.service.backend.count_tokens(text)
        return float(counted) if counted is not None else len(text) / 4
