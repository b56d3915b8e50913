"""The probe runs only where it can change the decision or answer the request, and then as
the start of the single-pass answer (the client's caps and fields on it)."""

from __future__ import annotations

from backends.base import ChatMessage
from difficulty.model import RouterModel, bundled_router_path
from policies.adaptive import AdaptivePolicy
from policies.base import Problem
from policies.registry import default_arms
from policies.request import RequestSpec
from policies.settings import PolicySettings, StrategiesSettings
from tasks.profiles import TaskProfiles
from tasks.structured import structured_task
from tests.fakes import FakeBackend


def spec_of(text: str, **fields: object) -> RequestSpec:
    problem = Problem(
        text=text,
        messages=[ChatMessage(role="user", content=text)],
        task=TaskProfiles().match(text),
    )
    return RequestSpec(problem, **fields)  # type: ignore[arg-type]


def policy(model: RouterModel, backend: FakeBackend) -> AdaptivePolicy:
    settings = PolicySettings(exploration_rate=0.0, decision_cache_ttl_s=0)
    return AdaptivePolicy(settings, StrategiesSettings(), backend=backend, model=model)


async def test_a_router_model_that_ignores_the_probe_decides_without_calling_the_model() -> None:
    backend = FakeBackend(lambda prompt, i, req: "Paris.")
    uninformed = RouterModel.uninformed(default_arms(), probe_tokens=16)
    assert not uninformed.reads_probe
    decision = await policy(uninformed, backend).decide(spec_of("Capital of France?"))
    assert backend.calls == [] and decision.probe is None and decision.probe_tokens == 0
    assert decision.strategy == "single_pass"


async def test_a_router_model_that_reads_the_probe_probes_with_the_clients_fields() -> None:
    backend = FakeBackend(lambda prompt, i, req: "Answer: 24")
    model = RouterModel.load(bundled_router_path())
    assert model.reads_probe
    spec = spec_of("4 9 10 13", max_tokens=20)
    spec.problem.params["presence_penalty"] = 0.5
    decision = await policy(model, backend).decide(spec)
    (probe,) = backend.calls
    assert decision.probe is not None and probe.logprobs
    # The probe is the single-pass answer's start: within the client's cap, with its fields.
    assert probe.max_tokens == 20 and probe.params == {"presence_penalty": 0.5}


async def test_a_structured_request_is_never_probed() -> None:
    backend = FakeBackend(lambda prompt, i, req: "{}")
    model = RouterModel.load(bundled_router_path())
    spec = spec_of("4 9 10 13")
    task = structured_task({"response_format": {"type": "json_object"}})
    assert task is not None
    spec.problem.task = task
    decision = await policy(model, backend).decide(spec)
    assert backend.calls == [] and decision.probe is None
    assert decision.strategy not in ("beam_search", "bounded_reasoning")
