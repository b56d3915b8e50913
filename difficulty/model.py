"""The router model: features -> calibrated P(success) of each arm, plus a difficulty bin.

An *arm* is a strategy with a budget ("self_consistency@8" is self-consistency capped at 8
samples). The model holds one logistic regression per arm (standardised features, so
``predict_proba`` is calibrated in the Platt sense; Brier scores are reported at training),
the difficulty bin edges and per-(bin, arm) success/token/latency statistics that seed the
online posteriors in Redis.

It is persisted with skops (``.skops``, no pickle) together with its card: version, feature
schema, probe length, arms, metrics and provenance. Loading checks the schema against the
code's ``FEATURE_NAMES`` and refuses a mismatch. Inference does not call scikit-learn: the
scaler is folded into one weight matrix at load time so all arms cost one small matmul
(microseconds), which keeps the decision inside its 1 ms budget.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from difficulty.features import FEATURE_NAMES

N_BINS = 5
#: P(success) of every arm in a model that knows nothing
UNINFORMED_P = 0.5
# Fewer training outcomes of a kind in a bin than this: its prior is pooled over kinds.
MIN_KIND_TRIALS = 8
MODEL_FORMAT = 1


class RouterModelError(ValueError):
    """The router model file is missing, unreadable or does not match this code's schema."""


class ArmSpec(BaseModel):
    """A strategy and the budget fields that make this arm differ from the config default."""

    model_config = ConfigDict(extra="forbid")

    name: str
    strategy: str
    budget: dict[str, float] = Field(default_factory=dict)


def arm_label(strategy: str, budget: dict[str, Any] | None) -> str:
    """The arm of a logged (strategy, budget) that did not record its arm name: the
    strategy, with ``@N`` when it drew N > 1 samples (how sampling arms are named)."""
    samples = int(budget.get("samples") or 1) if budget else 1
    return f"{strategy}@{samples}" if samples > 1 else strategy


class BinStat(BaseModel):
    """Training-time outcome statistics of one arm in one difficulty bin."""

    model_config = ConfigDict(extra="ignore")

    trials: float = 0.0
    successes: float = 0.0
    tokens_mean: float = 0.0
    latency_ms_mean: float = 0.0


class RouterModelCard(BaseModel):
    """Everything about a router model except its weights; stored inside the model file."""

    model_config = ConfigDict(extra="ignore")

    format: int = MODEL_FORMAT
    version: str
    created_at: str = Field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat())
    feature_names: list[str]
    probe_tokens: int = Field(ge=0, description="Probe length the model was trained with.")
    arms: list[ArmSpec]
    bin_edges: list[float] = Field(description="Upper edges of difficulty bins 0..N-2.")
    bin_stats: dict[str, list[BinStat]] = Field(default_factory=dict)
    kind_bin_stats: dict[str, dict[str, list[BinStat]]] = Field(
        default_factory=dict,
        description="bin_stats per task kind (kind -> arm -> bins); empty in older models.",
    )
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    kinds: list[str] = Field(
        default_factory=list, description="Task kinds seen in training; others are OOD."
    )
    backend_model: str = Field(
        default="", description="The backend model it was fit for (empty: any)."
    )
    lambda_per_1k_tokens: float | None = Field(
        default=None, ge=0, description="Cost weight chosen on the fit data (acr calibrate)."
    )
    feature_lo: list[float] = Field(default_factory=list, description="Training minima.")
    feature_hi: list[float] = Field(default_factory=list, description="Training maxima.")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))


class RouterModel:
    """Calibrated per-arm success probabilities and the difficulty bin of a feature row.

    ``weights`` is (arms x features) with the scaler folded in and ``bias`` (arms,); build one
    with ``difficulty.train.fit_router_model`` or ``RouterModel.load``.
    """

    def __init__(
        self,
        card: RouterModelCard,
        weights: np.ndarray,
        bias: np.ndarray,
        estimators: dict[str, Any] | None = None,
    ) -> None:
        if tuple(card.feature_names) != FEATURE_NAMES:
            raise RouterModelError(
                f"router model {card.version!r} was trained on {len(card.feature_names)} "
                f"features that differ from this code's {len(FEATURE_NAMES)}; retrain it with "
                "`acr train-router`"
            )
        n_arms, n_feat = len(card.arms), len(card.feature_names)
        if weights.shape != (n_arms, n_feat) or bias.shape != (n_arms,):
            raise RouterModelError(
                f"router model weights have shape {weights.shape}/{bias.shape}, "
                f"expected ({n_arms}, {n_feat})/({n_arms},)"
            )
        self.card = card
        self.weights = np.ascontiguousarray(weights, dtype=np.float64)
        self.bias = np.ascontiguousarray(bias, dtype=np.float64)
        self.estimators = estimators or {}
        self.arm_names = [a.name for a in card.arms]
        self._edges = np.asarray(card.bin_edges, dtype=np.float64)
        self._lo = np.asarray(card.feature_lo, dtype=np.float64) if card.feature_lo else None
        self._hi = np.asarray(card.feature_hi, dtype=np.float64) if card.feature_hi else None

    @property
    def version(self) -> str:
        """The model's version string (part of every Redis key via the policy version)."""
        return self.card.version

    @property
    def n_bins(self) -> int:
        """Number of difficulty bins (0 = easiest); bin ``n_bins`` is out-of-distribution."""
        return len(self.card.bin_edges) + 1

    @property
    def ood_bin(self) -> int:
        """The bin of prompts whose task kind the model never saw (learned online only)."""
        return self.n_bins

    def is_ood(self, kind: str) -> bool:
        """True when ``kind`` was not in the training data (predictions would extrapolate)."""
        return bool(self.card.kinds) and kind not in self.card.kinds

    def _clip(self, rows: np.ndarray) -> np.ndarray:
        # Linear models extrapolate without bound; clip features to the training range.
        if self._lo is None or self._hi is None:
            return rows
        return np.clip(rows, self._lo, self._hi)

    @property
    def reads_probe(self) -> bool:
        """Whether any prediction depends on the probe's features (an uninformed model's
        does not: a probe could not change its decision)."""
        names = self.card.feature_names
        cols = [i for i, n in enumerate(names) if n.startswith("probe_")]
        return bool(cols) and bool(np.any(self.weights[:, cols] != 0))

    def predict(self, row: np.ndarray) -> np.ndarray:
        """P(success) of every arm (in ``card.arms`` order) for one feature row."""
        return _sigmoid(self.weights @ self._clip(row) + self.bias)

    def predict_many(self, rows: np.ndarray) -> np.ndarray:
        """P(success), shape (rows x arms)."""
        return _sigmoid(self._clip(rows) @ self.weights.T + self.bias)

    def base_rates(self) -> np.ndarray:
        """Each arm's overall training success rate (what an OOD prompt is predicted)."""
        out = []
        for name, b in zip(self.arm_names, self.bias, strict=True):
            stats = self.card.bin_stats.get(name) or []
            trials = sum(s.trials for s in stats)
            succ = sum(s.successes for s in stats)
            out.append(succ / trials if trials else float(_sigmoid(np.asarray(b))))
        return np.asarray(out)

    def difficulty(self, probs: np.ndarray) -> float:
        """Difficulty score in [0, 1]: one minus the mean predicted success over arms."""
        return float(1.0 - probs.mean())

    def bin_of(self, difficulty: float) -> int:
        """Difficulty bin of a score (bins are training-set quantiles, 0 = easiest)."""
        return int(np.searchsorted(self._edges, difficulty, side="right"))

    def bin_stat(self, arm: str, bin_: int, kind: str | None = None) -> BinStat:
        """Training statistics of ``arm`` in ``bin_``, of task ``kind`` where training saw
        at least ``MIN_KIND_TRIALS`` of them there, else pooled over kinds; the OOD bin gets
        the pooled ones over all bins. The adaptive policy's priors for success and cost."""
        own = self.card.kind_bin_stats.get(kind or "", {}).get(arm) or []
        if bin_ < len(own) and own[bin_].trials >= MIN_KIND_TRIALS:
            return own[bin_]
        stats = self.card.bin_stats.get(arm)
        if not stats:
            return BinStat()
        if bin_ >= len(stats):
            t = sum(s.trials for s in stats)
            if not t:
                return BinStat()
            # Pooled, but worth few pseudo-observations: OOD should be learned online.
            return BinStat(
                trials=t,
                successes=sum(s.successes for s in stats),
                tokens_mean=sum(s.tokens_mean * s.trials for s in stats) / t,
                latency_ms_mean=sum(s.latency_ms_mean * s.trials for s in stats) / t,
            )
        return stats[bin_]

    # -- persistence --------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the model and its card to ``path`` (skops format)."""
        import skops.io as sio

        path.parent.mkdir(parents=True, exist_ok=True)
        sio.dump(
            {
                "card_json": self.card.model_dump_json(),
                "weights": self.weights,
                "bias": self.bias,
                "estimators": self.estimators,
            },
            path,
        )

    def save_json(self, path: Path) -> None:
        """Write card + folded weights as JSON (no scikit-learn needed to load it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "card": json.loads(self.card.model_dump_json()),
                    "weights": self.weights.tolist(),
                    "bias": self.bias.tolist(),
                }
            )
        )

    @classmethod
    def load(cls, path: Path | str) -> RouterModel:
        """Read a model written by ``save`` (or ``save_json`` for ``.json``); raises
        ``RouterModelError`` when unusable.

        Only numpy and scikit-learn types are trusted when reading: anything else in the file
        is refused rather than executed.
        """
        p = Path(path)
        if not p.is_file():
            raise RouterModelError(f"router model file {str(p)!r} does not exist")
        if p.suffix == ".json":
            try:
                raw = json.loads(p.read_text())
                card = RouterModelCard.model_validate(raw["card"])
                return cls(card, np.asarray(raw["weights"]), np.asarray(raw["bias"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise RouterModelError(f"cannot read router model {str(p)!r}: {exc}") from exc
        import skops.io as sio

        try:
            untrusted = sio.get_untrusted_types(file=p)
            bad = [t for t in untrusted if not t.startswith(("sklearn.", "numpy."))]
            if bad:
                raise RouterModelError(f"router model {str(p)!r} holds untrusted types {bad}")
            data = sio.load(p, trusted=untrusted)
            card = RouterModelCard.model_validate(json.loads(data["card_json"]))
        except RouterModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - any parse failure is "unusable model"
            raise RouterModelError(f"cannot read router model {str(p)!r}: {exc}") from exc
        if card.format != MODEL_FORMAT:
            raise RouterModelError(
                f"router model format {card.format} is not supported (expected {MODEL_FORMAT})"
            )
        return cls(
            card,
            np.asarray(data["weights"], dtype=np.float64),
            np.asarray(data["bias"], dtype=np.float64),
            dict(data.get("estimators") or {}),
        )

    @classmethod
    def uninformed(
        cls,
        arms: list[ArmSpec],
        version: str = "prior",
        probe_tokens: int = 0,
    ) -> RouterModel:
        """A model that knows nothing: every arm equally likely to succeed (so the cheapest
        wins until evidence says otherwise), one bin. For backends no model was fit for."""
        bias = np.full(len(arms), _logit(UNINFORMED_P), dtype=np.float64)
        card = RouterModelCard(
            version=version,
            feature_names=list(FEATURE_NAMES),
            probe_tokens=probe_tokens,
            arms=arms,
            bin_edges=[],
        )
        return cls(card, np.zeros((len(arms), len(FEATURE_NAMES))), bias)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def bundled_router_path() -> Path:
    """Path of the router model shipped in the package (``difficulty/bundled/``)."""
    return Path(__file__).resolve().parent / "bundled" / "router-v1.skops"
