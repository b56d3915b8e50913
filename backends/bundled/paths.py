"""Where the shipped checkpoint lives inside the package."""

from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent / "model"


def bundled_model_path() -> Path:
    """Directory of the shipped bundle (``bundle.json`` and one checkpoint per expert)."""
    if not (MODEL_DIR / "bundle.json").is_file():
        raise FileNotFoundError(
            f"the bundled model is missing at {MODEL_DIR}; run `python -m lab train-model "
            f"--output-dir {MODEL_DIR}` to build it"
        )
    return MODEL_DIR
