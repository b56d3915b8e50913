"""Training the router model from logged outcomes: ``acr train-router``.

Sources (any mix, each a path):

- *item labels* (``.jsonl`` from ``lab.labels``): one line per prompt with its probe and
  the outcome of every arm: ``{"text", "probe": {...}, "arms": {arm: {"correct", "tokens",
  "latency_ms"}}}``. Each line also trains the probe-less regime (probe features masked), so
  one model serves requests with and without a probe.
- *outcome logs* (``.jsonl`` export of the Redis outcome stream, or the stream itself via
  ``load_stream``): one line per served request with ``features``, ``strategy``, ``budget``,
  ``verifier_score`` or ``reward``, ``completion_tokens``, ``latency_ms``.
- *bench results* (``.json`` from ``acr bench``): items with ``text``/``problem``,
  ``strategy``, ``correct``, ``tokens``, ``latency_ms``.

Per arm a standardised logistic regression is fit; AUROC and Brier score are measured on a
held-out 20% of prompts (split by prompt hash, so one prompt never sits on both sides), then
the model is refit on everything and written with its card (schema, version, metrics).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from redis.asyncio import Redis

from difficulty.features import FEATURE_NAMES, feature_vector, from_dict
from difficulty.model import (
    N_BINS,
    ArmSpec,
    BinStat,
    RouterModel,
    RouterModelCard,
    arm_label,
)
from difficulty.probe import ProbeSummary
from tasks.profiles import TaskProfiles
from tasks.task import Task

# Item labels written before kinds were recorded are matched to the built-in profiles.
_PROFILES = TaskProfiles()


class TrainingError(ValueError):
    """The training data cannot produce a model (no rows, unknown format, one class only)."""


@dataclass
class Row:
    """One training example: a feature row, the prompt group and the arms' outcomes."""

    x: np.ndarray
    group: str
    outcomes: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    has_probe: bool = False
    text: str | None = None
    kind: str | None = None


def _group(text: str) -> str:
    return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()[:16]


def _float(v: Any, default: float = 0.0) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return f if math.isfinite(f) else default


def rows_from_item(obj: dict[str, Any], task: Task | None = None) -> list[Row]:
    """Rows of one item-label line: with its probe and, when it has one, probe-masked.

    ``task`` is the profile the prompt is served under (default: the built-in profile its
    ``kind`` names, else the one its text matches)."""
    text = str(obj.get("text") or obj.get("problem") or obj.get("prompt") or "")
    arms = obj.get("arms") or {}
    outcomes = {
        str(a): (
            1.0 if v.get("correct") else 0.0,
            _float(v.get("tokens")),
            _float(v.get("latency_ms")),
        )
        for a, v in arms.items()
        if isinstance(v, dict) and v.get("correct") is not None
    }
    if not text or not outcomes:
        return []
    g = _group(text)
    if task is None:
        kind_name = obj.get("kind")
        task = _PROFILES.task_named(str(kind_name)) if kind_name else _PROFILES.match(text)
    kind = task.kind
    rows = []
    probe = obj.get("probe")
    if isinstance(probe, dict):
        summary = ProbeSummary.model_validate(probe)
        rows.append(Row(feature_vector(text, summary, task), g, outcomes, True, text, kind))
    rows.append(Row(feature_vector(text, None, task), g, outcomes, False, text, kind))
    return rows


def row_from_outcome(obj: dict[str, Any]) -> Row | None:
    """A row from one served request's log record (only its own arm is labelled)."""
    feats = obj.get("features")
    if isinstance(feats, str):
        try:
            feats = json.loads(feats) if feats else None
        except ValueError:
            feats = None
    if not isinstance(feats, dict) or obj.get("status", "ok") not in ("ok", "", None):
        return None
    budget = obj.get("budget")
    if isinstance(budget, str):
        try:
            budget = json.loads(budget) if budget else None
        except ValueError:
            budget = None
    score = obj.get("reward")
    if score in (None, ""):
        score = obj.get("verifier_score")
    if score in (None, ""):
        return None
    arm = str(
        obj.get("arm")
        or arm_label(str(obj.get("strategy", "")), budget if isinstance(budget, dict) else None)
    )
    x = from_dict({k: _float(v) for k, v in feats.items()})
    tokens = _float(obj.get("completion_tokens")) - _float(obj.get("probe_tokens"))
    y = 1.0 if _float(score) >= 0.5 else 0.0
    g = str(obj.get("prompt_hash") or obj.get("id") or hashlib.md5(x.tobytes()).hexdigest())
    return Row(
        x,
        g[:16],
        {arm: (y, max(0.0, tokens), _float(obj.get("latency_ms")))},
        bool(x[FEATURE_NAMES.index("probe_present")]),
        kind=str(obj["task"]) if obj.get("task") else None,
    )


def rows_from_bench(obj: dict[str, Any]) -> list[Row]:
    """Rows of an ``acr bench`` result file: items grouped by text across strategies."""
    items = obj.get("items") or obj.get("rows") or obj.get("results") or []
    by_text: dict[str, dict[str, Any]] = {}
    for it in items:
        if not isinstance(it, dict):
            continue
        strategy = str(it.get("strategy") or "")
        if strategy in ("", "auto", "oracle"):
            continue
        text = str(it.get("text") or it.get("problem") or it.get("prompt") or "")
        if not text or it.get("correct") is None:
            continue
        budget = it.get("budget") if isinstance(it.get("budget"), dict) else None
        arm = str(it.get("arm") or arm_label(strategy, budget))
        entry = by_text.setdefault(text, {"text": text, "arms": {}, "kind": it.get("kind")})
        entry["arms"][arm] = {
            "correct": bool(it.get("correct")),
            "tokens": it.get("tokens", it.get("completion_tokens", 0)),
            "latency_ms": it.get("latency_ms", 0.0),
        }
    rows: list[Row] = []
    for entry in by_text.values():
        rows.extend(rows_from_item(entry))
    return rows


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Parsed JSON objects of a JSONL file (blank and broken lines skipped)."""
    with path.open() as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                yield obj


def load_rows(sources: Iterable[Path]) -> list[Row]:
    """All training rows of the given files (format recognised per line/file)."""
    rows: list[Row] = []
    for src in sources:
        p = Path(src)
        if not p.is_file():
            raise TrainingError(f"training source {str(p)!r} does not exist")
        if p.suffix == ".json":
            obj = json.loads(p.read_text())
            rows.extend(rows_from_bench(obj if isinstance(obj, dict) else {"items": obj}))
            continue
        records = list(iter_jsonl(p))
        # Client feedback arrives as its own record ({"status": "feedback", "id", "reward"});
        # it is the label of the served record with the same id and beats the verifier.
        rewards = {
            str(r.get("id")): r.get("reward")
            for r in records
            if r.get("status") == "feedback" and r.get("id") and r.get("reward") is not None
        }
        for obj in records:
            if obj.get("status") == "feedback":
                continue
            if rewards and str(obj.get("id")) in rewards:
                obj = {**obj, "reward": rewards[str(obj.get("id"))]}
            rows.extend(rows_from_record(obj))
    return rows


def rows_from_record(obj: dict[str, Any]) -> list[Row]:
    """Rows of one JSONL record, item label or outcome log."""
    if "arms" in obj:
        return rows_from_item(obj)
    r = row_from_outcome(obj)
    return [r] if r is not None else []


async def load_stream(url: str, stream: str, count: int = 1_000_000) -> list[dict[str, Any]]:
    """Records of the Redis outcome stream (decoded), oldest first, for ``train_router``."""
    client = Redis.from_url(url, decode_responses=True)
    try:
        entries: Any = await client.xrange(stream, count=count)
    finally:
        await client.aclose()
    out = []
    for _id, fields in entries or []:
        rec: dict[str, Any] = {}
        for k, v in (fields or {}).items():
            try:
                rec[k] = json.loads(v) if v and v[0] in "[{0123456789-tfn" else v
            except ValueError:
                rec[k] = v
        out.append(rec)
    return out


# -- metrics ----------------------------------------------------------------------------------


def auroc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the ROC curve (None when only one class is present)."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, p))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of probabilities (lower is better; 0.25 = coin flip at 50%)."""
    return float(np.mean((p - y) ** 2))


def _fit_arm(x: np.ndarray, y: np.ndarray, c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(C=c, max_iter=2000))])
    pipe.fit(x, y)
    return pipe


def _fold(pipe: Any) -> tuple[np.ndarray, float]:
    """The pipeline as one linear function of raw features: (w, b) with scaler folded in."""
    scale = pipe.named_steps["scale"]
    lr = pipe.named_steps["lr"]
    sd = np.where(scale.scale_ > 0, scale.scale_, 1.0)
    w = lr.coef_[0] / sd
    b = float(lr.intercept_[0] - np.dot(w, scale.mean_))
    return w, b


def _constant_logit(y: np.ndarray) -> float:
    p = (y.sum() + 0.5) / (len(y) + 1.0)
    return math.log(p / (1 - p))


def fit_router_model(
    rows: list[Row],
    *,
    version: str,
    probe_tokens: int,
    arms: list[ArmSpec],
    c: float = 0.5,
    holdout: float = 0.2,
    provenance: dict[str, Any] | None = None,
) -> RouterModel:
    """Fit per-arm calibrated classifiers, bins and bin stats; metrics on a held-out split."""
    if not rows:
        raise TrainingError("no training rows: give item labels, outcome logs or bench results")
    seen = {a for r in rows for a in r.outcomes}
    arms = [a for a in arms if a.name in seen]
    if not arms:
        raise TrainingError(f"no known arm in the training data (saw {sorted(seen)})")
    test_groups = {
        r.group
        for r in rows
        if int(hashlib.md5(r.group.encode()).hexdigest(), 16) % 100 < holdout * 100
    }
    metrics = _holdout_metrics(rows, arms, test_groups, c)
    # Final fit on everything.
    n_feat = len(FEATURE_NAMES)
    weights = np.zeros((len(arms), n_feat))
    bias = np.zeros(len(arms))
    estimators: dict[str, Any] = {}
    for i, arm in enumerate(arms):
        sel = [r for r in rows if arm.name in r.outcomes]
        x = np.stack([r.x for r in sel])
        y = np.asarray([r.outcomes[arm.name][0] for r in sel])
        if len(np.unique(y)) < 2:
            bias[i] = _constant_logit(y)
            continue
        pipe = _fit_arm(x, y, c)
        weights[i], bias[i] = _fold(pipe)
        estimators[arm.name] = pipe
    card = RouterModelCard(
        version=version,
        feature_names=list(FEATURE_NAMES),
        probe_tokens=probe_tokens,
        arms=arms,
        bin_edges=[],
        metrics=metrics,
        training=dict(provenance or {}, rows=len(rows), prompts=len({r.group for r in rows})),
    )
    xs = np.stack([r.x for r in rows])
    card.feature_lo = [float(v) for v in xs.min(axis=0)]
    card.feature_hi = [float(v) for v in xs.max(axis=0)]
    card.kinds = sorted({r.kind for r in rows if r.kind})
    model = RouterModel(card, weights, bias, estimators)
    _fit_bins(model, rows)
    return model


def _holdout_metrics(
    rows: list[Row], arms: list[ArmSpec], test_groups: set[str], c: float
) -> dict[str, Any]:
    """Per-arm AUROC and Brier score on the held-out prompts (with and without the probe),
    pooled, and the probe entropy's own AUROC for the cheapest arm's failures."""
    metrics: dict[str, Any] = {"arms": {}}
    pooled_y: list[np.ndarray] = []
    pooled_p: list[np.ndarray] = []
    for arm in arms:
        sel = [r for r in rows if arm.name in r.outcomes]
        x = np.stack([r.x for r in sel])
        y = np.asarray([r.outcomes[arm.name][0] for r in sel])
        is_test = np.asarray([r.group in test_groups for r in sel])
        with_probe = np.asarray([r.has_probe for r in sel])
        m: dict[str, Any] = {"rows": int(len(y)), "success_rate": round(float(y.mean()), 4)}
        tr, te = ~is_test, is_test
        if te.any() and len(np.unique(y[tr])) == 2:
            p_te = _fit_arm(x[tr], y[tr], c).predict_proba(x[te])[:, 1]
            for label, mask in (("with_probe", with_probe[te]), ("no_probe", ~with_probe[te])):
                if mask.any():
                    yy, pp = y[te][mask], p_te[mask]
                    a = auroc(yy, pp)
                    m[label] = {
                        "test_rows": int(mask.sum()),
                        "auroc": None if a is None else round(a, 4),
                        "brier": round(brier(yy, pp), 4),
                        "brier_base_rate": round(brier(yy, np.full_like(yy, y[tr].mean())), 4),
                    }
                    if label == "with_probe":
                        pooled_y.append(yy)
                        pooled_p.append(pp)
        metrics["arms"][arm.name] = m
    if pooled_y:
        yy, pp = np.concatenate(pooled_y), np.concatenate(pooled_p)
        a = auroc(yy, pp)
        metrics["pooled_with_probe"] = {
            "auroc": None if a is None else round(a, 4),
            "brier": round(brier(yy, pp), 4),
        }
    metrics["baseline_probe_entropy_auroc"] = _entropy_baseline(rows, test_groups, arms[0].name)
    return metrics


def _entropy_baseline(rows: list[Row], test_groups: set[str], arm: str) -> float | None:
    # How well the raw probe entropy alone predicts the cheapest arm's failure.
    i = FEATURE_NAMES.index("probe_mean_entropy")
    sel = [r for r in rows if r.has_probe and arm in r.outcomes]
    if not sel:
        return None
    y = np.asarray([1.0 - r.outcomes[arm][0] for r in sel])
    s = np.asarray([r.x[i] for r in sel])
    a = auroc(y, s)
    return None if a is None else round(a, 4)


def _fit_bins(model: RouterModel, rows: list[Row]) -> None:
    """Bin edges at difficulty quantiles and per-(bin, arm) outcome statistics, pooled and
    per task kind."""
    x = np.stack([r.x for r in rows])
    diff = 1.0 - model.predict_many(x).mean(axis=1)
    qs = np.quantile(diff, [i / N_BINS for i in range(1, N_BINS)])
    model.card.bin_edges = [float(q) for q in np.unique(qs)]
    model._edges = np.asarray(model.card.bin_edges)

    def empty() -> list[list[float]]:
        return [[0, 0, 0, 0] for _ in range(N_BINS)]

    acc: dict[str, list[list[float]]] = defaultdict(empty)
    by_kind: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(empty))
    for r, d in zip(rows, diff, strict=True):
        b = model.bin_of(float(d))
        for arm, (y, tok, lat) in r.outcomes.items():
            for s in [acc[arm][b]] + ([by_kind[r.kind][arm][b]] if r.kind else []):
                s[0] += 1
                s[1] += y
                s[2] += tok
                s[3] += lat
    model.card.bin_stats = _bin_stats(acc, model.n_bins)
    model.card.kind_bin_stats = {k: _bin_stats(v, model.n_bins) for k, v in by_kind.items()}


def _bin_stats(acc: dict[str, list[list[float]]], n_bins: int) -> dict[str, list[BinStat]]:
    return {
        arm: [
            BinStat(
                trials=s[0],
                successes=s[1],
                tokens_mean=s[2] / s[0] if s[0] else 0.0,
                latency_ms_mean=s[3] / s[0] if s[0] else 0.0,
            )
            for s in per_bin[:n_bins]
        ]
        for arm, per_bin in acc.items()
    }


def train_router(
    sources: list[Path],
    out: Path,
    *,
    arms: list[ArmSpec],
    version: str = "router-v1",
    probe_tokens: int = 64,
    c: float = 0.5,
) -> dict[str, Any]:
    """Fit a router model over ``arms`` from ``sources`` and write it to ``out`` (.skops).

    Returns the metrics (per-arm AUROC/Brier on held-out prompts, pooled, entropy baseline)
    that are also stored in the model card.
    """
    rows = load_rows(sources)
    model = fit_router_model(
        rows,
        version=version,
        probe_tokens=probe_tokens,
        arms=arms,
        c=c,
        provenance={"sources": [str(s) for s in sources]},
    )
    model.save(out)
    return {
        "version": version,
        "out": str(out),
        **model.card.metrics,
        "bin_edges": model.card.bin_edges,
        "rows": len(rows),
    }
