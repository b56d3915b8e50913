"""Difficulty features, the probe, router-model training, metrics and persistence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from backends.base import Backend, ChatMessage, Completion, GenerationRequest, GenerationResult
from backends.verifiers.base import Verifier
from difficulty.features import FEATURE_NAMES, feature_vector, prompt_features
from difficulty.model import RouterModel, RouterModelError, bundled_router_path
from difficulty.probe import ProbeSummary, run_probe
from difficulty.train import fit_router_model, load_rows, train_router
from lab.synthetic import synthetic_items
from policies.registry import default_arms
from tasks.answers import get_format
from tasks.profiles import TaskProfiles
from tasks.task import OPEN_TASK, Task

PROFILES = TaskProfiles()


def detect_kind(text: str) -> str:
    """The task kind serving would detect (the built-in profiles)."""
    return PROFILES.match(text).kind


class ScriptedBackend(Backend):
    """Returns one canned completion with given entropies; records the requests."""

    name = "scripted"

    def __init__(self, text: str, entropies: list[float], finish: str = "stop") -> None:
        self.text, self.entropies, self.finish = text, entropies, finish
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        c = Completion(
            text=self.text,
            tokens=len(self.entropies),
            finish_reason=self.finish,  # type: ignore[arg-type]
            token_logprobs=[-e / 2 for e in self.entropies] if request.logprobs else None,
            token_entropies=list(self.entropies) if request.logprobs else None,
        )
        return GenerationResult(completions=[c] * request.n, prompt_tokens=7)

    async def render_chat(self, messages: list[ChatMessage]) -> str:
        return messages[-1].content


class Is24(Verifier):
    exact = True

    def score(self, problem: str, candidate: str, reference: str | None = None) -> float:
        return 1.0 if candidate.strip().endswith("= 24") else 0.0


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "items.jsonl"
    path.write_text("\n".join(json.dumps(i) for i in synthetic_items(300, seed=3)))
    return path


@pytest.fixture(scope="module")
def trained(labels: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("model") / "router.skops"
    metrics = train_router([labels], out, arms=default_arms(), version="test-1", probe_tokens=64)
    return out, metrics


def test_task_kinds_are_detected_from_the_prompt_shape() -> None:
    assert detect_kind("4 9 10 13") == "game24"
    assert detect_kind("What is 52+69-70*3?") == "arithmetic"
    assert detect_kind("Why is the sky blue?") == "open"
    assert detect_kind("") == "open"


@pytest.mark.parametrize(
    "text",
    ["", "Why is the sky blue?", "ünïcödé ✓ 🚀 " * 50, "1 2", "x" * 100_000, "\n\n\n", "-3.5e9"],
)
def test_features_have_the_schema_length_and_are_finite_for_any_text(text: str) -> None:
    row = feature_vector(text, None, PROFILES.match(text))
    assert row.shape == (len(FEATURE_NAMES),)
    assert np.isfinite(row).all()


def test_arithmetic_with_more_operands_has_more_operator_features() -> None:
    names = list(FEATURE_NAMES)
    short = prompt_features("What is 2+3?", PROFILES.match("What is 2+3?"))
    long = prompt_features("What is 52+69-70*3+8*7-1?", PROFILES.match("What is 52+69-70*3+8*7-1?"))
    i = names.index("n_operators")
    assert long[i] > short[i]
    assert long[names.index("n_mul_div")] == 2


async def test_the_probe_is_one_greedy_decode_with_logprobs_and_a_verdict() -> None:
    backend = ScriptedBackend("4*6 = 24", [0.2, 0.4, 0.6])
    probe = await run_probe(
        backend,
        problem_text="4 6 1 1",
        prompt="4 6 1 1",
        messages=None,
        max_tokens=64,
        task=Task("game24", Is24(), get_format("answer_line")),
    )
    req = backend.requests[0]
    assert req.temperature == 0.0 and req.logprobs and req.n == 1 and req.max_tokens == 64
    assert probe.tokens == 3
    assert probe.mean_entropy == pytest.approx(0.4)
    assert probe.max_entropy == pytest.approx(0.6)
    assert probe.mean_nll == pytest.approx(0.2)
    assert probe.verifier_score == 1.0
    assert probe.reusable


async def test_a_probe_cut_by_its_token_limit_is_not_reusable_as_an_answer() -> None:
    backend = ScriptedBackend("4*6", [0.2] * 8, finish="length")
    probe = await run_probe(
        backend, problem_text="4 6 1 1", prompt=None, messages=None, max_tokens=8, task=OPEN_TASK
    )
    assert not probe.reusable
    assert probe.verifier_score is None


def test_training_on_labelled_items_gives_useful_auroc_and_beats_base_rate_brier(
    trained: tuple[Path, dict],
) -> None:
    _, metrics = trained
    pooled = metrics["pooled_with_probe"]
    assert pooled["auroc"] > 0.8
    for arm in ("single_pass", "self_consistency@8"):
        m = metrics["arms"][arm]["with_probe"]
        assert m["brier"] < m["brier_base_rate"]
    # Without the probe the prompt alone still carries signal, but less.
    sp = metrics["arms"]["single_pass"]
    assert sp["no_probe"]["auroc"] < sp["with_probe"]["auroc"]


def test_a_saved_model_loads_with_its_schema_and_predicts_the_same(
    trained: tuple[Path, dict],
) -> None:
    path, _ = trained
    model = RouterModel.load(path)
    assert model.version == "test-1"
    assert model.card.feature_names == list(FEATURE_NAMES)
    assert model.card.probe_tokens == 64
    probe = ProbeSummary(tokens=50, mean_entropy=0.1, verifier_score=0.0, has_answer=True)
    row = feature_vector("4 9 10 13", probe, PROFILES.match("4 9 10 13"))
    again = RouterModel.load(path)
    assert np.allclose(model.predict(row), again.predict(row))
    # The folded linear weights reproduce scikit-learn's own predict_proba.
    pipe = model.estimators["self_consistency@8"]
    i = model.arm_names.index("self_consistency@8")
    clipped = np.clip(row, model._lo, model._hi)  # type: ignore[arg-type]
    assert model.predict(row)[i] == pytest.approx(pipe.predict_proba(clipped[None])[0, 1])


def test_harder_prompts_land_in_higher_difficulty_bins(trained: tuple[Path, dict]) -> None:
    model = RouterModel.load(trained[0])
    easy = ProbeSummary(tokens=50, mean_entropy=0.05, verifier_score=1.0, has_answer=True)
    hard = ProbeSummary(tokens=50, mean_entropy=1.5, verifier_score=0.0, has_answer=True)
    d_easy = model.difficulty(
        model.predict(feature_vector("What is 2+3?", easy, PROFILES.match("What is 2+3?")))
    )
    d_hard = model.difficulty(
        model.predict(
            feature_vector(
                "What is 2+3*4-5+6*7-8+9?", hard, PROFILES.match("What is 2+3*4-5+6*7-8+9?")
            )
        )
    )
    assert model.bin_of(d_easy) < model.bin_of(d_hard)


def test_a_model_with_another_feature_schema_is_refused(
    trained: tuple[Path, dict], tmp_path: Path
) -> None:
    model = RouterModel.load(trained[0])
    model.card.feature_names = model.card.feature_names[:-1]
    with pytest.raises(RouterModelError, match="features"):
        RouterModel(model.card, model.weights, model.bias)
    with pytest.raises(RouterModelError, match="does not exist"):
        RouterModel.load(tmp_path / "missing.skops")
    junk = tmp_path / "junk.skops"
    junk.write_bytes(b"not a zip")
    with pytest.raises(RouterModelError, match="cannot read"):
        RouterModel.load(junk)


def test_outcome_log_records_and_bench_results_are_training_sources(tmp_path: Path) -> None:
    items = synthetic_items(120, seed=5)
    log = tmp_path / "outcomes.jsonl"
    bench = tmp_path / "bench.json"
    with log.open("w") as fh:
        for it in items:
            feats = dict(
                zip(
                    FEATURE_NAMES,
                    feature_vector(it["text"], None, PROFILES.match(it["text"])),
                    strict=True,
                )
            )
            ok = it["arms"]["self_consistency@8"]["correct"]
            fh.write(
                json.dumps(
                    {
                        "status": "ok",
                        "strategy": "self_consistency",
                        "budget": {"samples": 8},
                        "features": feats,
                        "verifier_score": 1.0 if ok else 0.0,
                        "completion_tokens": 400,
                        "latency_ms": 300,
                        "prompt_hash": str(it["id"]),
                    }
                )
                + "\n"
            )
        fh.write("not json\n")
    bench.write_text(
        json.dumps(
            {
                "items": [
                    {
                        "text": it["text"],
                        "strategy": "single_pass",
                        "correct": bool(c),
                        "tokens": 50,
                    }
                    for it in items
                    for c in [it["arms"]["single_pass"]["correct"]]
                ]
            }
        )
    )
    rows = load_rows([log, bench])
    # One row per logged outcome, one per distinct bench prompt (bench rows group by text).
    assert len(rows) == len(items) + len({it["text"] for it in items})
    model = fit_router_model(rows, version="mixed", probe_tokens=0, arms=default_arms())
    assert set(model.arm_names) == {"single_pass", "self_consistency@8"}


def test_the_bundled_router_model_loads_when_shipped() -> None:
    path = bundled_router_path()
    if not path.is_file():
        pytest.skip("no bundled router model in this checkout yet")
    model = RouterModel.load(path)
    assert model.card.feature_names == list(FEATURE_NAMES)
    assert model.card.metrics


def test_client_feedback_in_the_log_relabels_the_served_request(tmp_path: Path) -> None:
    feats = dict(
        zip(
            FEATURE_NAMES,
            feature_vector("4 9 10 13", None, PROFILES.match("4 9 10 13")),
            strict=True,
        )
    )
    served = {
        "id": "r1",
        "status": "ok",
        "strategy": "single_pass",
        "features": feats,
        "verifier_score": None,
        "completion_tokens": 60,
        "latency_ms": 80,
    }
    log = tmp_path / "log.jsonl"
    log.write_text(
        json.dumps(served) + "\n" + json.dumps({"id": "r1", "status": "feedback", "reward": 1.0})
    )
    rows = load_rows([log])
    assert len(rows) == 1 and rows[0].outcomes["single_pass"][0] == 1.0
    log.write_text(json.dumps(served) + "\n")
    assert load_rows([log]) == []  # no verdict and no feedback: nothing to learn


def test_the_json_export_loads_without_scikit_learn_and_predicts_the_same(
    trained: tuple[Path, dict], tmp_path: Path
) -> None:
    model = RouterModel.load(trained[0])
    model.save_json(tmp_path / "router.json")
    again = RouterModel.load(tmp_path / "router.json")
    row = feature_vector("What is 2+3*4?", None, PROFILES.match("What is 2+3*4?"))
    assert np.allclose(model.predict(row), again.predict(row))
    assert again.card.bin_stats == model.card.bin_stats
    assert again.card.kind_bin_stats == model.card.kind_bin_stats


def test_training_priors_are_kept_per_task_kind_and_fall_back_to_the_pooled_ones(
    trained: tuple[Path, dict], labels: Path
) -> None:
    from difficulty.model import MIN_KIND_TRIALS

    model = RouterModel.load(trained[0])
    assert set(model.card.kind_bin_stats) == {"game24", "arithmetic"}
    items = [json.loads(line) for line in labels.read_text().splitlines()]
    arm = "beam_search"
    for kind in ("game24", "arithmetic"):
        # Two rows per item (with and without the probe), as in training.
        labelled = [i for i in items if i["kind"] == kind and arm in i["arms"]]
        trials = sum(model.bin_stat(arm, b, kind).trials for b in range(model.n_bins))
        assert trials == 2 * len(labelled)
    b = next(
        b
        for b in range(model.n_bins)
        if model.card.kind_bin_stats["game24"][arm][b].trials >= MIN_KIND_TRIALS
        and model.card.kind_bin_stats["arithmetic"][arm][b].trials > 0
    )
    g24, pooled = model.bin_stat(arm, b, "game24"), model.bin_stat(arm, b)
    assert g24.trials < pooled.trials
    assert model.bin_stat(arm, b, "open") == pooled  # a kind training never saw
