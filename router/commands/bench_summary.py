"""What a bench's per-item records add up to: the ``oracle`` row, per-row summaries, the
Pareto frontier of accuracy against tokens, and its plot (``acr calibrate``'s report draws
the same plot)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

#: rows known only after the fact: drawn for reference, never on the frontier
REFERENCE_ROWS = ("oracle",)


def oracle_records(records: list[dict[str, Any]], rows: list[str]) -> list[dict[str, Any]]:
    """The ``oracle`` row, known after the fact: per item the cheapest of ``rows`` that solved
    it (unsolved items cost the cheapest row's tokens)."""
    by_item: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["row"] in rows:
            by_item.setdefault(r["item"], []).append(r)
    out = []
    for item, rs in by_item.items():
        solved = [r for r in rs if r["correct"]]
        best = min(solved or rs, key=lambda r: r["tokens"])
        out.append(
            {
                **best,
                "row": "oracle",
                "strategy": f"oracle:{best['row']}",
                "correct": bool(solved),
                "item": item,
            }
        )
    return out


def summarise(records: list[dict[str, Any]], *, by_group: bool = False) -> list[dict[str, Any]]:
    """Accuracy, mean tokens, samples and latency per row, in the order rows appear.

    With ``by_group`` one entry per (row, item group), each with a ``group`` field: how a
    strategy fares per difficulty bucket (row range, operand count).
    """
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        key = (r["row"], str(r.get("group", "")) if by_group else "")
        rows.setdefault(key, []).append(r)
    out = []
    for (name, group), rs in rows.items():
        out.append(
            {
                "row": name,
                **({"group": group} if by_group else {}),
                "items": len(rs),
                "accuracy": statistics.fmean(float(r["correct"]) for r in rs),
                "mean_tokens": statistics.fmean(r["tokens"] for r in rs),
                "mean_hidden_tokens": statistics.fmean(r.get("hidden_tokens", 0) for r in rs),
                "mean_samples": statistics.fmean(r["samples"] for r in rs),
                "p50_latency_ms": statistics.median(r["latency_ms"] for r in rs),
            }
        )
    return out


def pareto(summary: list[dict[str, Any]]) -> list[str]:
    """Rows not beaten on both accuracy and tokens by another row (reference rows such as the
    oracle, which no policy can run, are left out)."""
    summary = [s for s in summary if s["row"] not in REFERENCE_ROWS]
    front = []
    for a in summary:
        if not any(
            b["accuracy"] >= a["accuracy"]
            and b["mean_tokens"] < a["mean_tokens"]
            or b["accuracy"] > a["accuracy"]
            and b["mean_tokens"] <= a["mean_tokens"]
            for b in summary
        ):
            front.append(a["row"])
    return front


def plot(summary: list[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy against mean generated tokens, frontier joined."""
    # matplotlib is heavy and only the plot needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = set(pareto(summary))
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for s in summary:
        on = s["row"] in front
        ref = s["row"] in REFERENCE_ROWS
        ax.scatter(
            s["mean_tokens"],
            s["accuracy"],
            s=90 if ref else 60 if on else 30,
            marker="*" if ref else "o",
            color="#999999" if ref else "#cc3311" if on else "#4477aa",
            zorder=3,
        )
        ax.annotate(
            s["row"],
            (s["mean_tokens"], s["accuracy"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    pts = sorted((s["mean_tokens"], s["accuracy"]) for s in summary if s["row"] in front)
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="#cc3311", lw=1, zorder=2)
    ax.set_xscale("log")
    ax.margins(x=0.25)  # room for the labels of the rightmost rows
    ax.set_xlabel("mean generated tokens per item (log)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
