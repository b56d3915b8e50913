"""A pool of backends measured through the service (``docs/benchmarks.md``, "Pools").

- ``mixed``: Game of 24 (held-out rows), arithmetic and the open prompts, each as a chat
  request with the official ``openai`` client to ``acr serve`` on Ray Serve: once to the
  bundled model alone, once to the pool id of a pool of the bundled model and a real
  llama.cpp server (``--llama-url``). Accuracy and tokens per task, and which model served
  each open prompt.
- ``failover``: two ``llama-server`` processes with the same GGUF in a pool (the router's
  app on uvicorn); four clients ask in a loop, one server is killed after ``--before``
  answers, and the clients go on for ``--after`` more. Failed requests are counted.
- ``overhead``: the decision of a request to the pool against the decision of the same
  request to the model the pool chose (``/v1/route``'s path, in process, state in a real
  redis-server): p50/p99 of what the pool adds.

    python -m lab.pool_bench mixed --llama-url http://127.0.0.1:18210/v1 \\
        --game24 ../shared/data/game24.csv --out runs/pool-mixed.json
    python -m lab.pool_bench failover --out runs/pool-failover.json
    python -m lab.pool_bench overhead --llama-url http://127.0.0.1:18210/v1
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Annotated, Any

import openai
import typer

from router.commands.bench_items import Item, grade, item_seed, load_items
from router.config import AppConfig, BackendConfig, load_config
from router.serving.embedded_redis import free_port

app = typer.Typer(add_completion=False)

MODELS = ("acr-bundled", "smollm2")
OPEN_PROMPTS = Path(__file__).resolve().parents[1] / "docs" / "data" / "open_prompts.jsonl"


def pool_config(llama_url: str) -> AppConfig:
    """The bundled model for Game of 24 and arithmetic, SmolLM2 on llama.cpp for the rest."""
    cfg = load_config(env={})
    cfg.backends = [
        BackendConfig(name="acr-bundled", profiles=["game24", "arithmetic"]),
        BackendConfig(name="smollm2", kind="openai", base_url=llama_url),
    ]
    return cfg


def open_prompts(n: int) -> list[str]:
    """The first ``n`` open prompts of ``docs/data/open_prompts.jsonl``."""
    lines = OPEN_PROMPTS.read_text().splitlines()[:n]
    return [json.loads(line)["question"] for line in lines]


async def _ask(
    client: openai.AsyncOpenAI, model: str, text: str, **kw: Any
) -> tuple[str, str, int, float]:
    """(serving model, answer, completion tokens, wall seconds) of one chat request."""
    served, answer, tokens, wall, _ = await _ask_id(client, model, text, **kw)
    return served, answer, tokens, wall


async def _ask_id(
    client: openai.AsyncOpenAI, model: str, text: str, **kw: Any
) -> tuple[str, str, int, float, str]:
    """``_ask``'s answer and the response id."""
    t0 = time.perf_counter()
    r = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], **kw
    )
    tokens = r.usage.completion_tokens if r.usage else 0
    return r.model, r.choices[0].message.content or "", tokens, time.perf_counter() - t0, r.id


async def _items(
    url: str, model: str, items: list[Item], concurrency: int, *, feedback: bool = False
) -> list[dict[str, Any]]:
    """Every item to ``model`` at ``url`` with its bench seed; graded like ``acr bench``.
    ``feedback``: each grade goes back as ``POST /v1/feedback`` (what a client that knows
    the right answers tells the router)."""
    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(concurrency)

    async def one(item: Item) -> dict[str, Any]:
        async with sem:
            try:
                served, text, tokens, wall, rid = await _ask_id(
                    client, model, item.text, seed=item_seed(item)
                )
                if feedback:
                    await client.post(
                        "/feedback",
                        body={"id": rid, "reward": float(grade(item, text))},
                        cast_to=object,
                    )
            except openai.APIStatusError as err:  # counted as a miss, with its status
                return {"item": item.id, "kind": item.kind, "model": "", "correct": False,
                        "tokens": 0, "wall_s": None, "error": err.status_code}  # fmt: skip
        correct = grade(item, text)
        return {"item": item.id, "kind": item.kind, "model": served, "correct": correct,
                "tokens": tokens, "wall_s": round(wall, 2)}  # fmt: skip

    return list(await asyncio.gather(*(one(i) for i in items)))


def _serve(config: AppConfig) -> Any:
    from router.serving.local import LocalService

    config.server.port = free_port()
    return LocalService(config).start()


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[str, dict[str, Any]] = {}
    for kind in sorted({r["kind"] for r in rows}):
        mine = [r for r in rows if r["kind"] == kind]
        by[kind] = {
            "items": len(mine),
            "accuracy": round(sum(r["correct"] for r in mine) / len(mine), 3),
            "mean_tokens": round(sum(r["tokens"] for r in mine) / len(mine), 1),
            "models": {m: sum(r["model"] == m for r in mine) for m in {r["model"] for r in mine}},
            "errors": sum("error" in r for r in mine),
        }
    return by


@app.command()
def mixed(
    llama_url: Annotated[str, typer.Option(help="llama.cpp server's /v1 base URL.")],
    game24: Annotated[Path, typer.Option(help="Game of 24 CSV.")] = Path(
        "../shared/data/game24.csv"
    ),
    rows: Annotated[str, typer.Option(help="Held-out Game of 24 rows.")] = "900-919",
    per_count: Annotated[int, typer.Option(help="Arithmetic items per operand count.")] = 3,
    prompts: Annotated[int, typer.Option(help="Open prompts (at most 42).")] = 42,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 4,
    warmup: Annotated[
        int,
        typer.Option(
            help="Further arithmetic items per operand count (not measured) sent to the pool "
            "after its cold pass, each grade sent back as feedback, so each model's online "
            "statistics learn; then it is measured "
            "again."
        ),
    ] = 7,
    out: Annotated[Path, typer.Option(help="Results JSON.")] = Path("runs/pool-mixed.json"),
) -> None:
    """The bundled model alone, then the pool (cold; after a warm-up on other items), on
    the same items; the pool on open prompts."""
    items = load_items("game24", rows=rows, path=game24) + load_items(
        "arithmetic", per_count=per_count
    )
    measured = {i.text for i in items}
    more = load_items("arithmetic", per_count=per_count + warmup) if warmup else []
    warm_items = [i for i in more if i.text not in measured]
    result: dict[str, Any] = {}
    svc = _serve(load_config(env={}))
    try:
        alone = asyncio.run(_items(svc.url + "/v1", "acr-bundled", items, concurrency))
    finally:
        svc.stop()
    svc = _serve(pool_config(llama_url))
    try:
        pooled = asyncio.run(_items(svc.url + "/v1", "auto", items, concurrency))
        learned = asyncio.run(
            _items(svc.url + "/v1", "auto", warm_items, concurrency, feedback=True)
        )
        warmed = asyncio.run(_items(svc.url + "/v1", "auto", items, concurrency))
        client = openai.AsyncOpenAI(base_url=svc.url + "/v1", api_key="x", timeout=600)
        answers = asyncio.run(_open(client, open_prompts(prompts)))
    finally:
        svc.stop()
    result = {
        "bundled_alone": _summary(alone),
        "pool": _summary(pooled),
        "warmup": _summary(learned),
        "pool_after_warmup": _summary(warmed),
        "open": {
            "prompts": len(answers),
            "served_by": {
                m: sum(a["model"] == m for a in answers) for m in {"smollm2", "acr-bundled"}
            },
            "answered": sum(bool(a["text"].strip()) for a in answers),
        },
        "rows": {
            "bundled_alone": alone,
            "pool": pooled,
            "warmup": learned,
            "pool_after_warmup": warmed,
            "open": answers,
        },  # fmt: skip
    }
    _write(out, result)


async def _open(client: openai.AsyncOpenAI, texts: list[str]) -> list[dict[str, Any]]:
    out = []
    for text in texts:
        served, answer, tokens, wall = await _ask(client, "auto", text, max_tokens=64)
        out.append({"prompt": text, "model": served, "text": answer, "tokens": tokens})
    return out


@app.command()
def failover(
    before: Annotated[int, typer.Option(help="Answers before the kill.")] = 20,
    after: Annotated[int, typer.Option(help="Requests sent after the kill to answer.")] = 40,
    clients: Annotated[int, typer.Option(help="Clients asking in a loop.")] = 4,
    out: Annotated[Path, typer.Option(help="Results JSON.")] = Path("runs/pool-failover.json"),
) -> None:
    """Kill one of two llama.cpp servers under load; count the failed requests."""
    from router.serving.runtime import build_runtime
    from tests.llama_server import start_cpp_server
    from tests.router_http import served

    a, b = start_cpp_server(parallel=2, n_ctx=4096), start_cpp_server(parallel=2, n_ctx=4096)
    try:
        cfg = load_config(env={})
        cfg.backends = [
            BackendConfig(name="a", kind="openai", base_url=a.base_url),
            BackendConfig(name="b", kind="openai", base_url=b.base_url),
        ]
        with served(build_runtime(cfg)) as url:
            result = asyncio.run(_under_load(url, a, before, after, clients))
    finally:
        a.stop()
        b.stop()
    _write(out, result)


async def _under_load(
    url: str, victim: Any, before: int, after: int, clients: int
) -> dict[str, Any]:
    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=300)
    sent_before: list[str] = []
    sent_after: list[str] = []
    failures: list[str] = []
    walls: list[float] = []
    killed = asyncio.Event()

    async def loop(i: int) -> None:
        n = 0
        while len(sent_after) < after:
            late = killed.is_set()
            n += 1
            try:
                model, _, _, wall = await _ask(client, "auto", f"Say something about boat {i}.{n}",
                                              max_tokens=16)  # fmt: skip
            except openai.APIError as err:
                failures.append(repr(err))
                continue
            walls.append(wall)
            (sent_after if late else sent_before).append(model)
            if len(sent_before) >= before and not killed.is_set():
                victim.kill()
                killed.set()

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(clients)))
    return {
        "requests": len(sent_before) + len(sent_after) + len(failures),
        "failed": len(failures),
        "failures": failures[:5],
        "before_kill": {m: sent_before.count(m) for m in sorted(set(sent_before))},
        "after_kill": {m: sent_after.count(m) for m in sorted(set(sent_after))},
        "wall_p50_s": round(statistics.median(walls), 3),
        "wall_max_s": round(max(walls), 3),
        "seconds": round(time.perf_counter() - t0, 1),
    }


@app.command()
def overhead(
    llama_url: Annotated[str, typer.Option(help="llama.cpp server's /v1 base URL.")],
    game24: Annotated[Path, typer.Option(help="Game of 24 CSV.")] = Path(
        "../shared/data/game24.csv"
    ),
    repeats: Annotated[int, typer.Option(help="Passes over the prompts.")] = 20,
    out: Annotated[Path, typer.Option(help="Results JSON.")] = Path("runs/pool-overhead.json"),
) -> None:
    """What the pool's choice adds to the chosen model's own decision."""
    from router.serving.embedded_redis import EmbeddedRedis

    texts = [i.text for i in load_items("game24", rows="900-919", path=game24)]
    texts += [i.text for i in load_items("arithmetic", per_count=3)] + open_prompts(42)
    redis = EmbeddedRedis(port=free_port()).start()
    try:
        cfg = pool_config(llama_url)
        cfg.redis.url = redis.url
        result = asyncio.run(_decision_times(cfg, texts, repeats))
    finally:
        redis.cleanup()
    _write(out, result)


async def _decision_times(cfg: AppConfig, texts: list[str], repeats: int) -> dict[str, Any]:
    from router.commands.bench_rows import user_spec
    from router.commands.calibrate import local_backend
    from router.serving.runtime import build_runtime

    bundled = local_backend(cfg.for_backend(cfg.backends[0]), "cpu", 1)
    rt = build_runtime(cfg, backends={"acr-bundled": bundled})
    pool = rt.service
    members = {m.name: m.service for m in pool.members}  # type: ignore[attr-defined]
    await pool.start()  # type: ignore[attr-defined]
    pooled, alone, ranked = [], [], 0
    for r in range(repeats + 1):
        for text in texts:
            spec = user_spec(text, r)
            t0 = time.perf_counter()
            decision = await pool.route(pool.check(spec))
            t1 = time.perf_counter()
            own = members[decision.model]
            await own.route(own.check(spec))
            t2 = time.perf_counter()
            if r:  # the first pass warms caches
                pooled.append((t1 - t0) * 1000)
                alone.append((t2 - t1) * 1000)
                ranked += "best utility" in (decision.model_reason or "")
    extra = [p - a for p, a in zip(pooled, alone, strict=True)]

    def pct(xs: list[float], q: float) -> float:
        return round(sorted(xs)[int(q * (len(xs) - 1))], 3)

    return {
        "decisions": len(pooled),
        "ranked_between_models": ranked,
        "one_model_ms": {"p50": pct(alone, 0.5), "p99": pct(alone, 0.99)},
        "pool_ms": {"p50": pct(pooled, 0.5), "p99": pct(pooled, 0.99)},
        "pool_extra_ms": {"p50": pct(extra, 0.5), "p99": pct(extra, 0.99)},
    }


def _write(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    app()
