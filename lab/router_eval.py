"""Router training data and evaluation on the bundled model: ``python -m lab.router_eval``.

``label``: item labels (``lab.labels``) for a split. ``train`` uses Game of 24 puzzles
outside rows 0-99 and 900-999 of game24.csv and arithmetic questions from a seed the
benchmark never uses (the benchmark's held-out questions are excluded too); ``test`` is the
benchmark mix: rows 0-99 and 900-999 plus the held-out arithmetic questions of 2-8 operands.

``evaluate``: on test labels, every fixed arm, fixed-N best-of-N, the oracle, auto at the
configured lambda and a lambda sweep, the issue's targets, the in-process decision latency,
and the SLO load simulation (auto vs always-search at twice what always-search sustains).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from backends.batching import MicroBatcher
from backends.bundled.paths import bundled_model_path
from backends.bundled.tasks.arithmetic import heldout_questions, random_question
from backends.bundled.tasks.game24 import puzzle_text, read_csv_puzzles
from backends.verifiers.base import Verifier
from backends.verifiers.game24 import Game24Verifier
from backends.verifiers.numeric import NumericAnswerVerifier
from difficulty.model import ArmSpec, RouterModel
from difficulty.profiles import Task
from lab.bundled.data import game24_splits
from lab.labels import LabelItem, label_items, messages_for, run_real_arms
from lab.replay import (
    PROFILES,
    accuracy_at_tokens,
    best_of_n_curve,
    fixed_arm_rows,
    oracle_repeatability,
    oracle_row,
    replay_auto,
    sweep_lambda,
    tokens_for_accuracy,
)
from lab.slo_sim import ReplayBackend, simulate
from policies.adaptive import AdaptivePolicy
from policies.base import Problem, StrategyResult
from policies.budget import Budget
from policies.decision import Decision, DecisionRequest
from policies.registry import default_arms, get_strategy
from policies.settings import PolicySettings, StrategiesSettings
from router.config import AppConfig
from router.errors import APIError
from router.schemas import RouterOptions
from router.service import RouterService

TEST_ROWS = set(range(0, 100)) | set(range(900, 1000))
#: the longest request deadline the service config allows
MAX_TIMEOUT_MS = 3_600_000
CONFIGURED_ARMS = (
    "single_pass",
    "bounded_reasoning",
    "best_of_n@16",
    "self_consistency@16",
    "beam_search",
)


def serving_task(text: str) -> Task:
    """The task serving matches ``text`` to: its kind and verifier (Game of 24: exact;
    arithmetic: none; anything else ``open``)."""
    return PROFILES.match(text)


def verifier_for(text: str) -> Verifier | None:
    """Serving's verifier: drives early stops and the probe's verdict (Game of 24 only)."""
    return serving_task(text).verifier


def grader_for(text: str) -> Verifier | None:
    """The benchmark's grader: exact Game of 24 check, arithmetic value against the question."""
    if serving_task(text).kind == "game24":
        return Game24Verifier()
    return NumericAnswerVerifier(solve_arithmetic=True)


def problem_for(item: LabelItem) -> Problem:
    """The strategies' view of a benchmark prompt: one user turn, its reference, and the task
    (kind and verifier) serving matches it to."""
    return Problem(
        text=item.text,
        messages=messages_for(item.text),
        reference=item.reference,
        task=serving_task(item.text),
    )


def split_items(
    split: str, csv: Path, n_game24: int, arith_per_k: int, seed: int
) -> list[LabelItem]:
    """Prompts of a split (see the module docstring)."""
    puzzles = read_csv_puzzles(csv)
    rng = random.Random(seed)
    if split == "test":
        g24 = [puzzles[i] for i in sorted(TEST_ROWS) if i < len(puzzles)]
        qs = heldout_questions(arith_per_k)
    else:
        # Prefer puzzles the model never trained on (its seeded extra held-out set), as the
        # benchmark's are; fill up with training puzzles. Benchmark rows never appear.
        bench = {puzzles[i] for i in TEST_ROWS if i < len(puzzles)}
        splits = game24_splits(csv)
        unseen = [p for p in splits.heldout if p not in bench]
        seen = [p for p in splits.train if p not in bench]
        g24 = unseen[:n_game24] + rng.sample(seen, max(0, min(len(seen), n_game24 - len(unseen))))
        held = {q.expression() for q in heldout_questions(50)}
        qrng = random.Random(seed + 9_000_001)
        qs = []
        for k in range(2, 9):
            got = 0
            while got < arith_per_k:
                q = random_question(qrng, k)
                if q.expression() not in held:
                    qs.append(q)
                    got += 1
    items = [LabelItem(puzzle_text(p), None, "game24", "game24.csv") for p in g24]
    items += [LabelItem(q.text(), str(q.answer()), "arithmetic", f"arith-{q.operands}") for q in qs]
    return items


def strategy_runner(backend: Any, budgets: dict[str, Budget]) -> Any:
    """An arm runner on the strategy registry (for arms a sample pool cannot stand for)."""

    async def run(item: LabelItem, arm: ArmSpec) -> tuple[bool, int, float]:
        data = budgets.get(arm.strategy, Budget()).model_dump()
        data.update({k: type(data[k])(v) for k, v in arm.budget.items() if k in data})
        problem = problem_for(item)
        t0 = time.perf_counter()
        res = await get_strategy(arm.strategy).run(
            problem, backend, Budget(**data), time.monotonic() + 300
        )
        wall = (time.perf_counter() - t0) * 1000
        g = grader_for(item.text)
        ok = g is not None and g.score(item.text, res.text, item.reference) >= 0.5
        return ok, res.completion_tokens + res.verifier_tokens, wall

    return run


async def cmd_label(args: argparse.Namespace) -> None:
    """Label a split with the bundled (or given) model and write JSONL."""
    # torch and transformers are heavy: only the commands that run the model import them.
    from backends.transformers_backend import TransformersBackend

    model_dir = args.model_dir or bundled_model_path()
    backend = TransformersBackend.from_pretrained(
        model_dir, device=args.device, dtype="float32", torch_threads=args.threads
    )
    items = split_items(args.split, args.csv, args.n_game24, args.arith_per_k, args.seed)
    if args.limit:
        # A seeded sample keeps the split's task mix.
        items = random.Random(args.seed).sample(items, min(args.limit, len(items)))
    arms = [a for a in default_arms() if a.name not in set(args.skip_arms.split(","))]
    runner = None
    if any(a.strategy in ("bounded_reasoning", "beam_search") for a in arms):
        runner = strategy_runner(MicroBatcher(backend), StrategiesSettings().budgets)
    t0 = time.time()

    def progress(done: int, total: int) -> None:
        print(f"  {done}/{total} labelled ({time.time() - t0:.0f} s)", file=sys.stderr)

    recs = await label_items(
        backend,
        items,
        verifier_for,
        grader_for=grader_for,
        probe_tokens=args.probe_tokens,
        samples=args.samples,
        sample_max_tokens=args.max_tokens,
        seed=args.seed,
        chunk=args.chunk,
        arms=arms,
        run_arm=runner,
        progress=progress,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    print(f"wrote {len(recs)} records to {args.out} in {time.time() - t0:.0f} s")


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_policy(model: RouterModel, **kw: Any) -> AdaptivePolicy:
    """A fresh policy (in-memory store, replay backend) for offline evaluation."""
    return AdaptivePolicy(
        PolicySettings(exploration_rate=0.0, **kw),
        StrategiesSettings(),
        backend=ReplayBackend(),
        model=model,
        rng=random.Random(0),
    )


class LiveRouter:
    """``auto`` for real, as the service serves it: an in-process ``RouterService`` on
    ``policy`` (its backend, settings and strategies) decides (probe included), runs the
    chosen strategy or reuses the probe, and learns online."""

    def __init__(self, policy: AdaptivePolicy) -> None:
        if policy.backend is None:
            raise ValueError("a live router needs the policy's backend")
        config = AppConfig(policy=policy.settings, strategies=policy.strategies)
        # Lab runs choose their own deadlines: allow the longest the config does.
        config.server.max_request_timeout_ms = MAX_TIMEOUT_MS
        self.policy = policy
        self.service = RouterService(config, policy.backend, policy)

    async def solve(
        self, problem: Problem, deadline: float
    ) -> tuple[Decision, StrategyResult, int]:
        """Serve ``problem`` by ``deadline`` (``time.monotonic`` seconds): (decision, result,
        total generated tokens, the probe's and the verifiers' included).

        Raises ``router.errors.APIError`` (408) when no answer came within the deadline.
        """
        timeout_ms = max(1, int((deadline - time.monotonic()) * 1000))
        served = await self.service.serve(
            problem,
            n=1,
            effort=None,
            options=RouterOptions(timeout_ms=timeout_ms),
            max_tokens=None,
            temperature=None,
        )
        total = served.completion_tokens + sum(r.verifier_tokens for r in served.results)
        return served.decision, served.results[0], total


async def decision_latency(model: RouterModel, texts: list[str], n: int = 2000) -> dict[str, float]:
    """In-process decision latency without the probe: features + model + selector + store.

    The decision cache is off so every call computes features and the model.
    """
    pol = make_policy(model, decision_cache_ttl_s=0)
    request = DecisionRequest(probe=False, serving=False)
    times = []
    for i in range(n):
        text = texts[i % len(texts)]
        t0 = time.perf_counter()
        # Task detection is timed too: it is part of deciding on a prompt.
        await pol.decide(Problem(text=text, task=serving_task(text)), request)
        times.append((time.perf_counter() - t0) * 1000)
    a = np.asarray(times[100:])
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 4),
        "p99_ms": round(float(np.percentile(a, 99)), 4),
        "n": len(a),
    }


async def cmd_evaluate(args: argparse.Namespace) -> None:
    """Evaluate auto against fixed arms and the oracle on test labels; write JSON."""
    items = load_jsonl(args.test)
    model = RouterModel.load(args.model)
    every = fixed_arm_rows(items)
    # The fixed strategies at their configured budgets (what `acr bench` and the service
    # run); the other arms exist for the router to choose among.
    fixed = {k: v for k, v in every.items() if k in CONFIGURED_ARMS}
    curve = best_of_n_curve(items)
    oracle = oracle_row(items, list(fixed))
    oracle_all = oracle_row(items, list(every))
    auto = await replay_auto(items, make_policy(model, lambda_per_1k_tokens=args.lam))
    lambdas = [0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
    sweep = await sweep_lambda(
        items, lambda lam: make_policy(model, lambda_per_1k_tokens=lam), lambdas
    )
    best_name = max(fixed, key=lambda k: (fixed[k]["accuracy"], -fixed[k]["mean_tokens"]))
    best = fixed[best_name]
    high = fixed.get("best_of_n@16")
    need = tokens_for_accuracy(curve, auto["accuracy"])
    at_equal = accuracy_at_tokens(sweep + [auto], best["mean_tokens"])
    gap = oracle["accuracy"] - best["accuracy"]
    targets = {
        "best_fixed": best_name,
        "auto_accuracy_minus_best_fixed": round(auto["accuracy"] - best["accuracy"], 4),
        "bon_tokens_for_auto_accuracy": None if need is None else round(need, 1),
        "auto_tokens_over_bon_tokens": None
        if need is None
        else round(auto["mean_tokens"] / need, 4),
        "auto_tokens_over_effort_high": None
        if high is None
        else round(auto["mean_tokens"] / high["mean_tokens"], 4),
        "auto_accuracy_at_best_fixed_tokens": None if at_equal is None else round(at_equal, 4),
        "gap_recovered_at_equal_tokens": None
        if at_equal is None or gap <= 0
        else round((at_equal - best["accuracy"]) / gap, 4),
    }
    texts = [it["text"] for it in items]
    latency = await decision_latency(model, texts)
    sim = await slo_simulation(items, model, args)
    result = {
        "items": len(items),
        "kinds": {k: sum(it.get("kind") == k for it in items) for k in ("game24", "arithmetic")},
        "fixed": fixed,
        "all_arms": every,
        "best_of_n_fixed_n": curve,
        "oracle": oracle,
        "oracle_all_arms": oracle_all,
        "auto": {"lambda_per_1k_tokens": args.lam, **auto},
        "auto_sweep": sweep,
        "targets": targets,
        "decision_latency": latency,
        "slo_simulation": sim,
        "model": {"version": model.version, "metrics": model.card.metrics},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "fixed",
                    "oracle",
                    "auto",
                    "targets",
                    "decision_latency",
                    "slo_simulation",
                )
            },
            indent=1,
        )
    )


async def slo_simulation(
    items: list[dict[str, Any]], model: RouterModel, args: argparse.Namespace
) -> dict[str, Any]:
    """Auto vs always-search at ``args.load_x`` times what always-search sustains."""
    always = "best_of_n@16"
    if not all(always in it["arms"] for it in items):
        return {"skipped": f"{always} not labelled"}
    mean_tok = float(np.mean([it["arms"][always]["tokens"] for it in items]))
    rate = args.load_x * args.capacity / mean_tok
    kw: dict[str, Any] = {
        "rate_per_s": rate,
        "n_requests": args.sim_requests,
        "slo_ms": args.slo_ms,
        "capacity_tok_s": args.capacity,
        "single_seq_tok_s": args.single_rate,
    }
    base = await simulate(items, mode=always, policy=None, **kw)
    pol = make_policy(model, lambda_per_1k_tokens=args.lam, capacity_tokens_per_s=args.capacity)
    auto = await simulate(items, mode="auto", policy=pol, **kw)
    return {
        "offered_rate_per_s": round(rate, 3),
        "always_search": base.summary(args.slo_ms),
        "auto": auto.summary(args.slo_ms),
        "backend_model": {"capacity_tok_s": args.capacity, "single_seq_tok_s": args.single_rate},
    }


async def run_live(
    items: list[LabelItem],
    backend: Any,
    names: list[str],
    policy: AdaptivePolicy | None,
    budgets: dict[str, Budget],
    timeout_s: float = 120.0,
) -> list[dict[str, Any]]:
    """Run each fixed strategy (config budget) and ``auto`` for real on every item, graded.

    One row per (item, strategy): correct, generated tokens (probe included for auto),
    latency, and for auto the chosen arm (``timeout`` when the service answered nothing
    within the deadline). Items run one at a time (latencies are unloaded).
    """
    router = LiveRouter(policy) if policy is not None else None
    rows: list[dict[str, Any]] = []
    for it in items:
        problem = problem_for(it)
        grader = grader_for(it.text)
        for name in names:
            t0 = time.perf_counter()
            deadline = time.monotonic() + timeout_s
            arm = name
            text: str | None
            if name == "auto":
                assert router is not None
                try:
                    d, res, total = await router.solve(problem, deadline)
                    arm, text = d.arm, res.text
                except APIError as exc:
                    if exc.status != 408:
                        raise
                    arm, text, total = "timeout", None, 0
            else:
                res = await get_strategy(name).run(problem, backend, budgets[name], deadline)
                text, total = res.text, res.completion_tokens + res.verifier_tokens
            wall = (time.perf_counter() - t0) * 1000
            ok = (
                text is not None
                and grader is not None
                and grader.score(it.text, text, it.reference) >= 0.5
            )
            rows.append(
                {
                    "text": it.text,
                    "kind": it.kind,
                    "strategy": name,
                    "arm": arm,
                    "correct": bool(ok),
                    "tokens": int(total),
                    "latency_ms": round(wall, 2),
                }
            )
    return rows


def summarise_live(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-strategy accuracy/tokens/latency plus the oracle over the fixed strategies."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["strategy"], []).append(r)
    out: dict[str, Any] = {}
    for name, rs in by.items():
        lat = sorted(r["latency_ms"] for r in rs)
        out[name] = {
            "items": len(rs),
            "accuracy": round(float(np.mean([r["correct"] for r in rs])), 4),
            "mean_tokens": round(float(np.mean([r["tokens"] for r in rs])), 1),
            "p50_latency_ms": round(lat[len(lat) // 2], 1),
        }
    fixed = [n for n in by if n != "auto"]
    per_item: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["strategy"] in fixed:
            per_item.setdefault(r["text"], []).append(r)
    if per_item:
        accs, toks = [], []
        for rs in per_item.values():
            solved = [r["tokens"] for r in rs if r["correct"]]
            accs.append(bool(solved))
            toks.append(min(solved) if solved else min(r["tokens"] for r in rs))
        out["oracle"] = {
            "items": len(per_item),
            "accuracy": round(float(np.mean(accs)), 4),
            "mean_tokens": round(float(np.mean(toks)), 1),
        }
    return out


async def cmd_live(args: argparse.Namespace) -> None:
    """Live benchmark of auto and fixed strategies on the test split; JSON rows + summary."""
    from backends.transformers_backend import TransformersBackend

    model_dir = args.model_dir or bundled_model_path()
    backend = TransformersBackend.from_pretrained(
        model_dir, device=args.device, dtype="float32", torch_threads=args.threads
    )
    items = split_items("test", args.csv, 0, args.arith_per_k, args.seed)
    if args.limit:
        items = random.Random(args.seed).sample(items, min(args.limit, len(items)))
    k, n = (int(x) for x in args.shard.split("/"))
    items = items[k::n]
    model = RouterModel.load(args.model)
    policy = AdaptivePolicy(
        PolicySettings(exploration_rate=args.exploration, lambda_per_1k_tokens=args.lam),
        StrategiesSettings(),
        backend=backend,
        model=model,
        rng=random.Random(args.seed),
    )
    names = [n for n in args.strategies.split(",") if n]
    rows = await run_live(items, backend, names, policy, policy.strategies.budgets)
    summary = summarise_live(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "items": rows}, indent=1))
    print(json.dumps(summary, indent=1))


async def cmd_oracle_check(args: argparse.Namespace) -> None:
    """How much of the oracle's edge repeats across two labelling runs (both directions)."""
    a, b = load_jsonl(args.first), load_jsonl(args.second)
    best = args.base
    result = {
        "first_to_second": oracle_repeatability(a, b, CONFIGURED_ARMS, best),
        "second_to_first": oracle_repeatability(b, a, CONFIGURED_ARMS, best),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=1))


async def cmd_add_arms(args: argparse.Namespace) -> None:
    """Run arms a pool cannot stand for (beam search) for real on existing label records."""
    from backends.transformers_backend import TransformersBackend

    model_dir = args.model_dir or bundled_model_path()
    tb = TransformersBackend.from_pretrained(
        model_dir, device=args.device, dtype="float32", torch_threads=args.threads
    )
    backend = MicroBatcher(tb)
    recs = load_jsonl(args.labels)
    items = [LabelItem(r["text"], r.get("reference"), r.get("kind")) for r in recs]
    arms = [a for a in default_arms() if a.name in set(args.arms.split(","))]
    runner = strategy_runner(backend, StrategiesSettings().budgets)
    t0 = time.time()
    for start in range(0, len(recs), 64):
        await run_real_arms(
            recs[start : start + 64], items[start : start + 64], arms, runner, args.concurrency
        )
        print(
            f"  {min(start + 64, len(recs))}/{len(recs)} ({time.time() - t0:.0f} s)",
            file=sys.stderr,
        )
    await backend.close()
    args.out.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    print(f"wrote {len(recs)} records to {args.out} in {time.time() - t0:.0f} s")


async def cmd_merge(args: argparse.Namespace) -> None:
    """Merge live shards into one result with its summary and a Pareto plot."""
    rows: list[dict[str, Any]] = []
    for path in args.parts:
        rows.extend(json.loads(Path(path).read_text())["items"])
    summary = summarise_live(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "items": rows}, indent=1))
    sweep = None
    if args.eval is not None and args.eval.is_file():
        sweep = json.loads(args.eval.read_text()).get("auto_sweep")
    pareto_plot(summary, sweep, args.out.with_suffix(".png"))
    print(json.dumps(summary, indent=1))


def pareto_plot(summary: dict[str, Any], sweep: list[dict[str, Any]] | None, out: Path) -> None:
    """Accuracy vs mean tokens: fixed strategies, auto (live and the replayed lambda sweep),
    the oracle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in summary.items():
        style = {"auto": ("tab:red", "*", 14), "oracle": ("black", "D", 8)}.get(
            name, ("tab:blue", "o", 7)
        )
        ax.scatter(
            row["mean_tokens"],
            row["accuracy"],
            c=style[0],
            marker=style[1],
            s=style[2] ** 2,
            zorder=3,
        )
        ax.annotate(
            name,
            (row["mean_tokens"], row["accuracy"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    if sweep:
        pts = sorted((p["mean_tokens"], p["accuracy"]) for p in sweep)
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            "--",
            c="tab:red",
            alpha=0.6,
            label="auto, lambda sweep (replay)",
        )
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("mean generated tokens per item (probe included)")
    ax.set_ylabel("accuracy")
    ax.set_title("Router vs fixed strategies vs oracle")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """CLI entry: ``label``, ``evaluate``, ``live``, ``merge``, ``add-arms``, ``oracle-check``."""
    p = argparse.ArgumentParser(prog="python -m lab.router_eval")
    sub = p.add_subparsers(dest="cmd", required=True)
    lab = sub.add_parser("label")
    lab.add_argument("--split", choices=["train", "test"], required=True)
    lab.add_argument("--out", type=Path, required=True)
    lab.add_argument("--csv", type=Path, default=Path("../shared/data/game24.csv"))
    lab.add_argument("--model-dir", type=Path, default=None)
    lab.add_argument("--n-game24", type=int, default=300)
    lab.add_argument("--arith-per-k", type=int, default=20)
    lab.add_argument("--samples", type=int, default=32)
    lab.add_argument("--probe-tokens", type=int, default=96)
    lab.add_argument("--max-tokens", type=int, default=160)
    lab.add_argument("--chunk", type=int, default=16)
    lab.add_argument("--seed", type=int, default=1)
    lab.add_argument("--limit", type=int, default=0)
    lab.add_argument("--threads", type=int, default=2)
    lab.add_argument("--device", default="cpu")
    lab.add_argument("--skip-arms", default="beam_search")
    ev = sub.add_parser("evaluate")
    ev.add_argument("--test", type=Path, required=True)
    ev.add_argument("--model", type=Path, required=True)
    ev.add_argument("--out", type=Path, default=Path("bench-out/router_eval.json"))
    ev.add_argument("--lam", type=float, default=0.1)
    ev.add_argument("--slo-ms", type=float, default=2000.0)
    ev.add_argument("--load-x", type=float, default=2.0)
    ev.add_argument("--capacity", type=float, default=5000.0)
    ev.add_argument("--single-rate", type=float, default=470.0)
    ev.add_argument("--sim-requests", type=int, default=3000)
    live = sub.add_parser("live")
    live.add_argument("--model", type=Path, required=True)
    live.add_argument("--out", type=Path, default=Path("bench-out/router_live.json"))
    live.add_argument("--csv", type=Path, default=Path("../shared/data/game24.csv"))
    live.add_argument("--model-dir", type=Path, default=None)
    live.add_argument("--arith-per-k", type=int, default=20)
    live.add_argument("--limit", type=int, default=0)
    live.add_argument("--seed", type=int, default=1)
    live.add_argument("--lam", type=float, default=0.1)
    live.add_argument("--exploration", type=float, default=0.0)
    live.add_argument("--threads", type=int, default=2)
    live.add_argument("--device", default="cpu")
    live.add_argument("--shard", default="0/1", help="k/n: every n-th item from k.")
    live.add_argument(
        "--strategies",
        default="auto,single_pass,bounded_reasoning,best_of_n,self_consistency,beam_search",
    )
    mer = sub.add_parser("merge")
    mer.add_argument("parts", nargs="+", type=Path)
    mer.add_argument("--out", type=Path, default=Path("bench-out/router_live.json"))
    mer.add_argument("--eval", type=Path, default=None, help="evaluate JSON (lambda sweep)")
    add = sub.add_parser("add-arms")
    add.add_argument("--labels", type=Path, required=True)
    add.add_argument("--out", type=Path, required=True)
    add.add_argument("--arms", default="beam_search")
    add.add_argument("--model-dir", type=Path, default=None)
    add.add_argument("--device", default="cpu")
    add.add_argument("--threads", type=int, default=2)
    add.add_argument("--concurrency", type=int, default=32)
    orc = sub.add_parser(
        "oracle-check", help="how much of the oracle's edge repeats in a second labelling run"
    )
    orc.add_argument("--first", type=Path, required=True, help="labels of one run")
    orc.add_argument("--second", type=Path, required=True, help="same prompts, another seed")
    orc.add_argument("--base", default="beam_search", help="the best fixed strategy")
    orc.add_argument("--out", type=Path, default=Path("bench-out/oracle_check.json"))
    args = p.parse_args(argv)
    cmds = {
        "oracle-check": cmd_oracle_check,
        "label": cmd_label,
        "evaluate": cmd_evaluate,
        "live": cmd_live,
        "merge": cmd_merge,
        "add-arms": cmd_add_arms,
    }
    asyncio.run(cmds[args.cmd](args))


if __name__ == "__main__":
    main()
