"""The shipped model: loads offline like any checkpoint, solves easy items, trains end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.base import GenerationRequest
from backends.bundled.paths import bundled_model_path
from backends.bundled.tasks import arithmetic, game24
from backends.bundled.tasks.detect import model_prompt
from backends.transformers_backend import TransformersBackend
from backends.verifiers.numeric import extract_answer

EASY_PUZZLES = [(1, 1, 4, 6), (1, 1, 3, 8), (2, 3, 4, 4), (1, 2, 3, 4), (3, 3, 8, 8), (4, 4, 6, 6)]


@pytest.fixture(scope="module")
def backend() -> TransformersBackend:
    return TransformersBackend.from_pretrained(bundled_model_path(), device="cpu")


def test_the_checkpoint_loads_offline_through_the_auto_classes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = bundled_model_path()
    assert (path / "model.safetensors").is_file()
    assert (path / "model.safetensors").stat().st_size < 20_000_000
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "gpt2"
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Use 4 9 10 13 to make 24"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt == "<24> 4 9 10 13\n"
    assert (path / "MODEL_CARD.md").is_file()


def test_easy_puzzles_are_mostly_solved_greedily(backend: TransformersBackend) -> None:
    reqs = [
        GenerationRequest(prompt=model_prompt(game24.puzzle_text(p)), max_tokens=128)
        for p in EASY_PUZZLES
    ]
    results = backend.generate_batch_sync(reqs)
    solved = [
        game24.check_answer(p, r.completions[0].text)
        for p, r in zip(EASY_PUZZLES, results, strict=True)
    ]
    assert sum(solved) >= 3, [r.completions[0].text for r in results]


def test_two_operand_arithmetic_is_mostly_right_greedily(backend: TransformersBackend) -> None:
    qs = [q for q in arithmetic.heldout_questions(12) if q.operands == 2]
    reqs = [GenerationRequest(prompt=model_prompt(q.text()), max_tokens=64) for q in qs]
    results = backend.generate_batch_sync(reqs)
    right = [
        extract_answer(r.completions[0].text) == str(q.answer())
        for q, r in zip(qs, results, strict=True)
    ]
    assert sum(right) >= len(qs) // 2, [r.completions[0].text for r in results]


def test_training_runs_end_to_end_on_a_tiny_config(tmp_path: Path, game24_csv: Path) -> None:
    from backends.bundled.train import train_model

    metrics = train_model(tmp_path / "m", game24_csv, seed=1, tiny=True, progress=False)
    assert metrics["steps"] == 4
    reloaded = TransformersBackend.from_pretrained(tmp_path / "m", device="cpu")
    out = reloaded.generate_batch_sync([GenerationRequest(prompt="<24> 1 2 3 4\n", max_tokens=5)])
    assert out[0].completions[0].tokens >= 1
    assert (tmp_path / "m" / "MODEL_CARD.md").read_text().startswith("# acr-bundled")
