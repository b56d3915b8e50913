"""Live config in one ingress, in-process over a scripted backend: what a reload changes,
what it keeps, what it refuses; the drain; the Serve config ``acr serve`` deploys."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from backends.base import GenerationRequest
from router.config import AppConfig, ConfigError, load_config
from router.live_config import LIVE_SECTIONS, live_sections, revision, with_live
from router.serving.deploy import INGRESS, serve_config
from router.serving.runtime import Runtime, build_runtime
from tests.fakes import FakeBackend

CHAT = {"messages": [{"role": "user", "content": "4 9 10 13"}]}


def answer(prompt: str, i: int, req: GenerationRequest) -> str:
    return "13-9=4 (left: 4 4 10)\n10-4=6 (left: 4 6)\n4*6=24 (left: 24)\nAnswer: 24"


def runtime(**sections: Any) -> Runtime:
    cfg = AppConfig(**sections) if sections else load_config(env={})
    return build_runtime(cfg, backend=FakeBackend(answer))


def client(rt: Runtime) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=rt.http_app), base_url="http://t")


async def decide(rt: Runtime) -> dict[str, Any]:
    async with client(rt) as c:
        r = await c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    router: dict[str, Any] = r.json()["router"]
    assert r.headers["x-acr-config-revision"] == router["config_revision"]
    return router


def test_the_revision_names_the_live_sections_and_nothing_else() -> None:
    base = AppConfig()
    assert revision(base) == revision(AppConfig(server={"port": 9}))
    changed = [
        AppConfig(policy={"lambda_per_1k_tokens": 0.3}),
        AppConfig(strategies={"effort": {"low": "best_of_n"}}),
        AppConfig(limits={"max_n": 3}),
    ]
    assert len({revision(base), *(revision(c) for c in changed)}) == 4


@pytest.mark.parametrize(
    ("live", "message"),
    [
        ({"model": {"name": "x"}}, "model cannot change while serving"),
        ({"policy": {"bogus": 1}}, "policy.bogus"),
        ({"limits": {"max_n": 0}}, "limits.max_n"),
        ({"strategies": {"effort": {"low": "nope"}}}, "unknown strategy 'nope'"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_an_invalid_live_config_is_refused_naming_what_is_wrong(live: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        with_live(AppConfig(), live, "test")


def test_sections_a_live_config_leaves_out_are_the_base_configs() -> None:
    base = AppConfig(limits={"max_n": 5})
    got = with_live(base, {"policy": {"lambda_per_1k_tokens": 0.4}}, "test")
    assert got.limits.max_n == 5 and got.policy.lambda_per_1k_tokens == 0.4


async def test_a_reload_changes_the_next_decision_and_names_its_revision() -> None:
    rt = runtime()
    first = await decide(rt)
    assert first["config_revision"] == rt.revision == revision(rt.config)
    assert rt.reconfigure({"policy": {"lambda_per_1k_tokens": 0.77}}, "test") == "applied"
    second = await decide(rt)
    assert second["config_revision"] == rt.revision != first["config_revision"]
    assert "0.77/1k tok" in second["reason"]
    metrics = rt.metrics.registry
    assert (
        metrics.get_sample_value(
            "acr_config_revision_info", {"revision": second["config_revision"]}
        )
        == 1.0
    )
    assert (
        metrics.get_sample_value("acr_config_revision_info", {"revision": first["config_revision"]})
        is None
    )


async def test_a_reload_keeps_the_backend_and_the_policys_learned_state() -> None:
    rt = runtime()
    await decide(rt)
    old = rt.service
    rt.reconfigure({"policy": {"lambda_per_1k_tokens": 0.5}}, "test")
    new = rt.service
    assert new is not old and new.backend is old.backend and new.started
    assert new.policy.tracker is old.policy.tracker  # type: ignore[attr-defined]
    assert new.policy.store is old.policy.store  # type: ignore[attr-defined]
    # a new policy version starts new online state
    rt.reconfigure({"policy": {"version": "v2"}}, "test")
    assert rt.service.policy.store is not old.policy.store  # type: ignore[attr-defined]


async def test_a_reload_of_the_limits_changes_what_requests_are_accepted() -> None:
    rt = runtime()
    async with client(rt) as c:
        assert (await c.post("/v1/chat/completions", json={**CHAT, "n": 3})).status_code == 200
        rt.reconfigure({"limits": {"max_n": 2}}, "test")
        r = await c.post("/v1/chat/completions", json={**CHAT, "n": 3})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text
        schema = (await c.get("/openapi.json")).json()
    assert "maximum" in str(schema) and '"maximum": 2' in str(schema).replace("'", '"')


async def test_a_refused_reload_keeps_the_running_config_and_says_why_on_readyz() -> None:
    rt = runtime()
    running = rt.revision
    assert rt.reconfigure({"policy": {"bogus": 1}}, "the test") == "refused"
    assert rt.revision == running
    async with client(rt) as c:
        ready = (await c.get("/readyz")).json()
    assert ready["status"] == "ready"
    assert ready["config"]["revision"] == running
    assert "policy.bogus" in ready["config"]["refused"]["reason"]
    assert ready["config"]["refused"]["source"] == "the test"
    assert rt.metrics.registry.get_sample_value("acr_config_refused") == 1.0
    assert (await decide(rt))["config_revision"] == running
    assert rt.reconfigure({"policy": {"lambda_per_1k_tokens": 0.2}}, "test") == "applied"
    assert rt.refused is None
    assert rt.metrics.registry.get_sample_value("acr_config_refused") == 0.0


def test_the_same_live_sections_again_change_nothing() -> None:
    rt = runtime(policy={"lambda_per_1k_tokens": 0.3})
    service = rt.service
    assert rt.reconfigure(live_sections(rt.config), "test") == "unchanged"
    assert rt.service is service


async def test_the_decision_cache_never_serves_an_estimate_made_under_another_revision() -> None:
    rt = runtime()
    policy: Any = rt.service.policy
    assert policy.cache.namespace == rt.revision
    rt.reconfigure({"policy": {"probe_tokens": 8}}, "test")
    new: Any = rt.service.policy
    assert new.cache.namespace == rt.revision != policy.cache.namespace
    # the same prompt's key lands in another namespace
    assert new.cache._key("k") != policy.cache._key("k")


async def test_a_drain_finishes_the_requests_inside_and_refuses_new_ones() -> None:
    release = asyncio.Event()

    class Slow(FakeBackend):
        async def generate(self, req: GenerationRequest) -> Any:
            await release.wait()
            return await super().generate(req)

    rt = build_runtime(load_config(env={}), backend=Slow(answer))
    async with client(rt) as c:
        inside = asyncio.create_task(
            c.post("/v1/chat/completions", json={**CHAT, "acr": {"strategy": "single_pass"}})
        )
        while rt.http_app.in_flight == 0:
            await asyncio.sleep(0.01)
        drained = asyncio.create_task(rt.http_app.drain(30))
        await asyncio.sleep(0.05)
        refused = await c.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "shutting_down"
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/readyz")).status_code == 503
        assert not drained.done()
        release.set()
        assert (await inside).status_code == 200
        assert await drained == 0


def test_acr_serves_deploy_config_carries_the_live_sections_only_as_the_ingress_user_config() -> (
    None
):
    from ray.serve._private.build_app import build_app
    from ray.serve.schema import ServeDeploySchema

    from router.serving.app import app_builder

    config = AppConfig(policy={"lambda_per_1k_tokens": 0.4}, redis={"url": "redis://x:1/0"})
    deployed = serve_config(config, name="acr")
    ServeDeploySchema(**deployed)
    (app,) = deployed["applications"]
    assert not set(app["args"]["config"]) & set(LIVE_SECTIONS)
    (ingress,) = app["deployments"]
    assert ingress["name"] == INGRESS
    assert with_live(AppConfig(**app["args"]["config"]), ingress["user_config"], "t") == config
    built = build_app(app_builder(app["args"]), name="acr")
    options = {d.name: d for d in built.deployments}
    ingress_config = options[INGRESS]._deployment_config
    assert ingress_config.max_surge_percent == 100
    assert ingress_config.graceful_shutdown_timeout_s >= config.server.max_request_timeout_ms / 1000
