"""The shipped model: loads offline like any checkpoint, solves easy items, trains end to end."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from backends.base import GenerationRequest
from backends.bundled.paths import bundled_model_path
from backends.bundled.tasks import arithmetic, game24
from backends.transformers_backend import TransformersBackend
from tasks.bundled import model_prompt
from tasks.numeric_checker import extract_answer

# Rows 0-99 of game24.csv (held out) that the shipped weights solve greedily; a regression
# check of the weights, not a claim about unseen puzzles (see MODEL_CARD.md for those).
EASY_PUZZLES = [
    (1, 1, 1, 11),
    (1, 1, 3, 9),
    (1, 1, 4, 7),
    (1, 1, 4, 8),
    (1, 1, 5, 5),
    (1, 1, 10, 12),
    (1, 1, 11, 12),
    (1, 1, 11, 13),
    (1, 1, 12, 12),
    (1, 2, 5, 12),
    (1, 4, 7, 12),
    (2, 2, 2, 12),
]


@pytest.fixture(scope="module")
def backend() -> TransformersBackend:
    return TransformersBackend.from_pretrained(bundled_model_path(), device="cpu")


@pytest.mark.parametrize("expert", ["game24", "arithmetic"])
def test_each_expert_loads_offline_through_the_auto_classes(
    monkeypatch: pytest.MonkeyPatch, expert: str
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = bundled_model_path() / expert
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
    assert (bundled_model_path() / "MODEL_CARD.md").is_file()


@pytest.mark.parametrize(
    ("expert", "prompt"), [("game24", "<24> 4 9 10 13\n"), ("arithmetic", "<calc> 52+69-7\n")]
)
def test_the_backend_sends_each_task_to_its_own_expert(
    backend: TransformersBackend, expert: str, prompt: str
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = bundled_model_path() / expert
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    ref = model.generate(**ids, max_new_tokens=40, do_sample=False, pad_token_id=0)
    expected = tok.decode(ref[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    got = backend.generate_batch_sync([GenerationRequest(prompt=prompt, max_tokens=40)])
    assert got[0].completions[0].text == expected[: len(got[0].completions[0].text)]
    assert got[0].completions[0].text.strip()


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
    assert sum(solved) >= 10, [r.completions[0].text for r in results]


def test_arithmetic_answers_follow_the_scratchpad_format(backend: TransformersBackend) -> None:
    qs = arithmetic.heldout_questions(3)
    reqs = [GenerationRequest(prompt=model_prompt(q.text()), max_tokens=180) for q in qs]
    results = backend.generate_batch_sync(reqs)
    well_formed = 0
    for r in results:
        text = r.completions[0].text
        ans = extract_answer(text)
        if ans is not None and ans.lstrip("-").isdigit() and "=" in text.split("\n")[0]:
            well_formed += 1
    assert well_formed >= len(qs) * 0.8, [r.completions[0].text for r in results]


def test_training_runs_end_to_end_on_a_tiny_config(tmp_path: Path, game24_csv: Path) -> None:
    from lab.bundled.train import EXPERTS, train_bundle

    metrics = train_bundle(tmp_path / "m", game24_csv, seed=1, tiny=True, progress=False)
    assert set(metrics["experts"]) == set(EXPERTS)
    assert all(m["steps"] == 4 for m in metrics["experts"].values())
    reloaded = TransformersBackend.from_pretrained(tmp_path / "m", device="cpu")
    assert reloaded.describe()["experts"] == len(EXPERTS)
    out = reloaded.generate_batch_sync(
        [
            GenerationRequest(prompt="<24> 1 2 3 4\n", max_tokens=5),
            GenerationRequest(prompt="<calc> 1+2\n", max_tokens=5),
        ]
    )
    assert all(o.completions[0].tokens >= 1 for o in out)
    assert (tmp_path / "m" / "MODEL_CARD.md").read_text().startswith("# acr-bundled")


def test_the_shipped_experts_have_the_shape_and_activation_of_the_current_recipe() -> None:
    # Serving reads the architecture from config.json; a recipe change that was not followed
    # by `python -m lab train-model` would ship weights the card does not describe.
    import json

    from lab.bundled.train import EXPERTS

    for name, (_, recipe) in EXPERTS.items():
        cfg = json.loads((bundled_model_path() / name / "config.json").read_text())
        shape = (cfg["n_layer"], cfg["n_embd"], cfg["n_head"], cfg["activation_function"])
        assert shape == (
            recipe.n_layer,
            recipe.n_embd,
            recipe.n_head,
            recipe.activation_function,
        ), name
        # Data settings (fold order, product paths) leave no trace in config.json.
        trained = json.loads((bundled_model_path() / name / "training.json").read_text())
        assert trained["recipe"] == dataclasses.asdict(recipe), name


def test_the_arithmetic_expert_writes_a_two_digit_product_as_parts_and_their_sum(
    backend: TransformersBackend,
) -> None:
    # The shipped recipe splits every two-digit product into units and tens parts on its
    # line (`3700*7=1200+0940=1150`); an expert trained on one-line products writes
    # `3700*7=1150`.
    q = arithmetic.parse_expression("52+73*7")
    assert q is not None
    req = GenerationRequest(prompt=model_prompt(q.text()), max_tokens=180)
    text = backend.generate_batch_sync([req])[0].completions[0].text
    products = [line for line in text.splitlines() if "*" in line]
    assert products and re.fullmatch(r"3700\*7=\d{4}\+\d{4}=\d{4}", products[0]), text


def test_training_takes_every_core_from_the_fixed_step_and_a_seed_reproduces_the_weights(
    tmp_path: Path, game24_csv: Path
) -> None:
    import os

    from lab.bundled.train import TINY, train_model

    runs = [
        train_model(
            tmp_path / name,
            game24_csv,
            seed=3,
            recipe=TINY,
            threads=1,
            all_cores_from_step=2,
            progress=False,
        )
        for name in ("a", "b")
    ]
    cores = os.cpu_count() or 1
    expected = [(0, 1), (2, cores)] if cores > 1 else [(0, 1)]
    assert runs[0]["thread_schedule"] == expected
    weights = [(tmp_path / name / "model.safetensors").read_bytes() for name in ("a", "b")]
    assert weights[0] == weights[1]


def test_arithmetic_samples_fold_the_terms_in_different_orders(
    backend: TransformersBackend,
) -> None:
    # The voting gain rests on samples taking different paths: the expert was trained on
    # scratchpads that start the fold from a random positive term. A model that always folds
    # left to right starts every sample from the first term.
    qs = [
        q
        for q in arithmetic.heldout_questions(10)
        if q.operands >= 4 and sum(op == "+" for op in q.ops) >= 2
    ][:3]
    assert qs
    for q in qs:
        req = GenerationRequest(
            prompt=model_prompt(q.text()), n=16, temperature=0.8, seed=3, max_tokens=180
        )
        texts = [c.text for c in backend.generate_batch_sync([req])[0].completions]
        starts = {_first_fold_start(t) for t in texts} - {None}
        assert len(starts) >= 2, (q.expression(), texts[:4])


def _first_fold_start(text: str) -> str | None:
    """The left operand of the first line that adds or subtracts (the fold's first term)."""
    for line in text.splitlines():
        if "*" not in line and ("+" in line or "-" in line) and "=" in line:
            return line.split("+")[0].split("-")[0]
    return None
