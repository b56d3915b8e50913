"""``acr calibrate``'s report: each fixed arm, auto and the oracle on the evaluation part,
with 95% confidence intervals, as a table (Markdown and JSON) and a Pareto plot (PNG)."""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from pathlib import Path
from typing import Any

from difficulty.model import RouterModel
from router.commands.bench_summary import pareto, plot
from router.commands.calibration_plan import CalibrationPlan

#: z of a two-sided 95% interval
Z95 = 1.959964
#: best accuracy under which the report says the backend mostly fails this data
LOW_ACCURACY = 0.25


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a success rate (0, 1 for no trials)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def row_summary(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (with its interval), mean tokens and samples of one row's item runs."""
    n = len(runs)
    correct = sum(1 for r in runs if r["correct"])
    lo, hi = wilson(correct, n)
    return {
        "row": name,
        "items": n,
        "accuracy": correct / n if n else 0.0,
        "ci95": [round(lo, 4), round(hi, 4)],
        "mean_tokens": statistics.fmean(r["tokens"] for r in runs) if n else 0.0,
        "mean_samples": statistics.fmean(r.get("samples", 1) for r in runs) if n else 0.0,
        "p50_latency_ms": statistics.median(r.get("latency_ms", 0.0) for r in runs) if n else 0.0,
    }


def fixed_rows(records: list[dict[str, Any]], arms: list[str]) -> list[dict[str, Any]]:
    """One summary per fixed arm over the labelled ``records`` that ran it."""
    return [
        row_summary(arm, [r["arms"][arm] for r in records if arm in r["arms"]])
        for arm in arms
        if any(arm in r["arms"] for r in records)
    ]


def oracle_row(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per item the cheapest arm that solved it (the cheapest arm's cost when none did):
    the bound no router reaches, known only after the fact."""
    runs = []
    for r in records:
        arms = list(r["arms"].values())
        if not arms:
            continue
        solved = [a for a in arms if a["correct"]]
        runs.append(min(solved or arms, key=lambda a: a["tokens"]))
    return row_summary("oracle", runs)


def verdict(summary: list[dict[str, Any]]) -> list[str]:
    """Plain sentences on what the numbers mean (a weak backend is said to be weak)."""
    fixed = [s for s in summary if s["row"] not in ("auto", "oracle")]
    auto = next((s for s in summary if s["row"] == "auto"), None)
    lines = []
    if fixed:
        best = max(fixed, key=lambda s: (s["accuracy"], -s["mean_tokens"]))
        lines.append(
            f"Best fixed arm: {best['row']} at {best['accuracy']:.3f} "
            f"({best['mean_tokens']:.0f} tokens per item)."
        )
        if best["accuracy"] < LOW_ACCURACY:
            lines.append(
                f"The backend solves at most {best['accuracy']:.0%} of these items with any "
                "arm: the router can only choose among arms that mostly fail, so its accuracy "
                "is low too. That is a property of the model on this data, not of routing."
            )
        if auto is not None:
            lines.append(
                f"Auto: {auto['accuracy']:.3f} at {auto['mean_tokens']:.0f} tokens per item "
                f"({auto['accuracy'] - best['accuracy']:+.3f} accuracy, "
                f"{auto['mean_tokens'] / max(best['mean_tokens'], 1e-9):.2f}x the tokens of "
                "the best fixed arm)."
            )
    return lines


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
    model: RouterModel,
    model_path: Path,
    sweep: list[dict[str, Any]],
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
        "use": use_lines(plan.pool_backend, str(model_path), lam),
        "auto_runs": auto_runs,
    }


def _coverage(runs: list[dict[str, Any]], profile: str | None) -> float | None:
    """Share of evaluation prompts the service's rules matched to ``profile``."""
    if profile is None or not runs:
        return None
    return sum(1 for r in runs if r.get("task") == profile) / len(runs)


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: what was run, the table, the verdict, how to use it."""
    head = report["settings"]
    out = [
        f"# Calibration of `{head['backend_model']}` on `{head['data']}`",
        "",
        f"- profile: {head['profile'] or 'matched per prompt'}; data hash {head['data_hash']}",
        f"- items: {report['items']['fit']} fit, {report['items']['eval']} evaluation "
        f"({report['items']['skipped']} not gradable, skipped; "
        f"{report['items'].get('failed', 0)} left out, the backend kept failing on them)",
        f"- chosen cost weight: lambda = {report['lambda_per_1k_tokens']:g} per 1k tokens "
        "(largest within one point of the best fit-part accuracy)",
        f"- date: {report['date']}",
        "",
        "| row | items | accuracy | 95% CI | mean tokens | mean samples | p50 latency ms |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for s in report["summary"]:
        lo, hi = s["ci95"]
        out.append(
            f"| {s['row']} | {s['items']} | {s['accuracy']:.3f} | {lo:.3f}-{hi:.3f} | "
            f"{s['mean_tokens']:.1f} | {s['mean_samples']:.1f} | {s['p50_latency_ms']:.0f} |"
        )
    out += ["", *report["verdict"], "", "Use it:", "", "```yaml", *report["use"], "```", ""]
    return "\n".join(out)


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path, Path]:
    """``report.json``, ``report.md`` and ``pareto.png`` in ``out_dir``; their paths."""
    summary = report["summary"]
    report["pareto"] = pareto(summary)
    js, md, png = out_dir / "report.json", out_dir / "report.md", out_dir / "pareto.png"
    js.write_text(json.dumps(report, indent=2, default=str))
    md.write_text(markdown(report))
    title = f"{report['settings']['backend_model']}: evaluation part ({report['items']['eval']})"
    plot(summary, png, title)
    return js, md, png


def use_lines(pool_backend: str | None, model_path: str, lam: float) -> list[str]:
    """The config lines that put the router model at ``model_path`` to use: the policy's,
    or the pool backend's of that name."""
    if pool_backend is None:
        return ["policy:", f"  classifier_path: {model_path}   # lambda {lam:g} comes with it"]
    return [
        "backends:",
        f"  - name: {pool_backend}",
        f"    router_model_path: {model_path}   # lambda {lam:g} comes with it",
    ]
