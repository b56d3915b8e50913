"""``acr bench --pool CONFIG``: a row that sends every item to a pool of backends (the
config's ``backends``), so the pool is measured beside the bundled model's fixed arms and
``auto`` on the same items, through the same ``PoolService`` that serves requests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from backends.base import Backend
from router.commands.bench_items import Item, item_seed
from router.commands.bench_rows import ItemRun, Runner, bench_config, user_spec
from router.config import AppConfig
from router.core.assembly import make_profiles, make_service
from router.core.pool import Member, PoolService
from router.serving.runtime import make_backend


def pool_backends(
    config: AppConfig, bench_model: Backend, load: Callable[[Path, str], Backend]
) -> dict[str, Backend]:
    """Each backend of ``config``'s pool: ``bench_model`` for a transformers backend without
    a path of its own (the model the bench loaded), ``load(path, name)`` for one with a path,
    the server for an OpenAI-compatible one."""
    out: dict[str, Backend] = {}
    for b in config.pool_backends():
        if b.kind == "openai":
            out[b.name] = make_backend(config.for_backend(b))
        elif b.path:
            out[b.name] = load(Path(b.path), b.name)
        else:
            out[b.name] = bench_model
    return out


def pool_runner(config: AppConfig, backends: dict[str, Backend], timeout_s: float) -> Runner:
    """The ``pool`` row: each item as a chat request to the pool's id; its label names the
    model that served it and that model's arm."""
    cfg = bench_config(config)
    cfg.server.max_request_timeout_ms = max(
        cfg.server.max_request_timeout_ms, int(timeout_s * 1000)
    )
    members = []
    for b in cfg.pool_backends():
        own = cfg.for_backend(b)
        members.append(
            Member(b, make_service(own, backends[b.name], profiles=make_profiles(own, None)))
        )
    pool = PoolService(cfg, members)

    async def run(item: Item) -> ItemRun:
        spec = user_spec(item.text, item_seed(item), deadline_ms=int(timeout_s * 1000))
        served = await pool.answer(pool.check(spec))
        return ItemRun.served(served, f"pool:{served.model}:{served.decision.arm}")

    return run
