"""``acr calibrate``: labels through the serving code, fits, reports, resumes after a kill."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backends.bundled.tasks import arithmetic
from difficulty.model import RouterModel
from policies.router_model import cost_weight
from router.commands.calibrate import CalibrationPlan, arms_from_specs, calibrate, choose_lambda
from router.commands.calibration_data import (
    CalibrationDataError,
    LabelFile,
    RunManifest,
    load_items,
)
from router.commands.calibration_report import wilson
from router.config import AppConfig

ARMS = ["single_pass", "self_consistency:samples=4,batch_size=4"]


def write_questions(path: Path, per_count: int, seed: int = 5) -> list[str]:
    """Arithmetic questions outside the held-out pool, as a GSM8K-style JSONL file."""
    rng = random.Random(seed)
    pool = {q.expression() for q in arithmetic.heldout_questions(arithmetic.HELDOUT_POOL_SIZE)}
    lines, texts = [], []
    for k in range(2, 9):
        made = 0
        while made < per_count:
            q = arithmetic.random_question(rng, k)
            if q.expression() in pool:
                continue
            made += 1
            texts.append(q.text())
            lines.append(json.dumps({"question": q.text(), "answer": f"work\n#### {q.answer()}"}))
    path.write_text("\n".join(lines) + "\n")
    return texts


def test_items_split_the_same_way_every_time_and_a_question_is_never_on_both_sides(
    tmp_path: Path,
) -> None:
    data = tmp_path / "q.jsonl"
    write_questions(data, 20)
    a, hash_a = load_items(data, eval_percent=30)
    b, hash_b = load_items(data, eval_percent=30)
    assert [(i.id, i.split) for i in a] == [(i.id, i.split) for i in b] and hash_a == hash_b
    assert {i.split for i in a} == {"fit", "eval"}
    assert 0.15 < sum(i.split == "eval" for i in a) / len(a) < 0.45
    assert all(i.reference and "####" not in i.reference for i in a)


def test_unreadable_calibration_data_is_refused_with_the_line_and_the_field(
    tmp_path: Path,
) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text('{"question": "What is 2+3?", "answer": "5"}\n{"prompt": "x"}\n')
    with pytest.raises(CalibrationDataError, match=r"q.jsonl:2 has no text field 'question'"):
        load_items(data)
    data.write_text("not json\n")
    with pytest.raises(CalibrationDataError, match=r"q.jsonl:1 is not a JSON object"):
        load_items(data)


def test_a_resumed_run_with_other_settings_is_refused(tmp_path: Path) -> None:
    manifest = RunManifest(tmp_path / "run.json")
    assert manifest.check_or_write({"data_hash": "a", "profile": None}) is False
    assert manifest.check_or_write({"data_hash": "a", "profile": None}) is True
    with pytest.raises(CalibrationDataError, match="data_hash"):
        manifest.check_or_write({"data_hash": "b", "profile": None})


def test_a_label_line_torn_by_a_kill_is_dropped_and_the_next_record_stays_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text('{"id": "a", "arms": {}}\n{"id": "b", "ar')
    labels = LabelFile(path)
    assert set(labels.load()) == {"a"}
    labels.append({"id": "c", "arms": {}})
    assert set(labels.load()) == {"a", "c"}


def test_lambda_is_the_largest_within_one_point_of_the_best_accuracy() -> None:
    sweep = [
        {"lambda": 0.0, "accuracy": 0.70},
        {"lambda": 0.1, "accuracy": 0.695},
        {"lambda": 0.5, "accuracy": 0.60},
    ]
    assert choose_lambda(sweep) == 0.1


def test_wilson_interval_brackets_the_rate_and_narrows_with_more_trials() -> None:
    lo, hi = wilson(5, 10)
    lo2, hi2 = wilson(50, 100)
    assert lo < 0.5 < hi and lo2 < 0.5 < hi2 and hi2 - lo2 < hi - lo


def test_arm_specs_are_named_as_serving_names_them() -> None:
    arms = arms_from_specs(ARMS, AppConfig())
    assert [a.name for a in arms] == ["single_pass", "self_consistency@4"]
    assert arms[1].budget == {"samples": 4.0}  # batch_size 4 is the configured default
    with pytest.raises(ValueError, match="both 'single_pass'"):
        arms_from_specs(["single_pass", "single_pass:max_tokens=64"], AppConfig())


async def test_calibration_on_the_bundled_model_fits_a_router_for_it_and_reports_every_row(
    tmp_path: Path,
) -> None:
    data = tmp_path / "q.jsonl"
    write_questions(data, 3)
    config = AppConfig()
    plan = CalibrationPlan(
        data=data,
        out_dir=tmp_path / "out",
        arms=arms_from_specs(ARMS, config),
        progress=False,
        timeout_s=60,
    )
    report = await calibrate(plan, config)

    model = RouterModel.load(tmp_path / "out" / "router.skops")
    assert model.card.backend_model == "acr-bundled"
    assert model.card.training["data_hash"] == report["settings"]["data_hash"]
    assert model.card.lambda_per_1k_tokens == report["lambda_per_1k_tokens"]
    assert cost_weight(None, model) == report["lambda_per_1k_tokens"]
    labels = [json.loads(line) for line in (tmp_path / "out" / "labels.jsonl").open()]
    assert len(labels) == 21 and all(set(r["arms"]) == {a.name for a in plan.arms} for r in labels)
    fit_n = sum(r["split"] == "fit" for r in labels)
    assert model.card.training["prompts"] == fit_n  # fit on the fit part only
    rows = [s["row"] for s in report["summary"]]
    assert rows == ["single_pass", "self_consistency@4", "auto", "oracle"]
    eval_n = report["items"]["eval"]
    assert all(s["items"] == eval_n for s in report["summary"])
    assert len(report["auto_runs"]) == eval_n
    for name in ("report.md", "report.json", "pareto.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "classifier_path" in (tmp_path / "out" / "report.md").read_text()


def test_a_killed_calibration_resumes_without_relabelling_what_it_finished(
    tmp_path: Path,
) -> None:
    data = tmp_path / "q.jsonl"
    write_questions(data, 4)
    out = tmp_path / "out"
    labels = out / "labels.jsonl"
    cmd = [sys.executable, "-m", "router", "calibrate", "--data", str(data), "--out", str(out)]
    cmd += ["--concurrency", "1", *[x for a in ARMS for x in ("--arm", a)]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if labels.exists() and len(labels.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = labels.read_text()
    finished_before = [json.loads(x)["id"] for x in before.splitlines() if x.endswith("}")]
    assert 3 <= len(finished_before) < 28

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    after = labels.read_text()
    assert after.startswith(before[: before.rfind("\n") + 1])  # nothing finished is redone
    ids = [json.loads(x)["id"] for x in after.splitlines() if x.strip()]
    assert sorted(set(ids)) == sorted(ids) and len(ids) == 28  # each item labelled once
    assert "classifier_path" in done.stdout


async def test_an_item_the_backend_keeps_failing_is_left_out_and_the_run_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import router.commands.calibrate as cal
    from router.errors import BackendUnavailable

    data = tmp_path / "q.jsonl"
    texts = write_questions(data, 2)
    bad = texts[0]
    real_label = cal.Labeler.label
    tries: list[str] = []

    async def flaky(self: cal.Labeler, item: cal.CalibrationItem) -> dict[str, object]:
        if item.text == bad:
            tries.append(item.id)
            raise BackendUnavailable("the model backend is unavailable")
        return await real_label(self, item)

    monkeypatch.setattr(cal.Labeler, "label", flaky)
    monkeypatch.setattr(cal, "RETRY_WAIT_S", 0.0)
    config = AppConfig()
    plan = CalibrationPlan(
        data=data,
        out_dir=tmp_path / "out",
        arms=arms_from_specs(["single_pass", "best_of_n:samples=2"], config),
        progress=False,
        timeout_s=60,
    )
    report = await calibrate(plan, config)
    assert len(tries) == cal.ITEM_TRIES
    assert report["items"]["failed"] == 1
    assert report["items"]["fit"] + report["items"]["eval"] == len(texts) - 1
    labels = (tmp_path / "out" / "labels.jsonl").read_text()
    assert bad not in labels, "a failed item is not recorded, so a resumed run tries it again"
    assert "1 left out" in (tmp_path / "out" / "report.md").read_text()


def pool_yaml(path: Path) -> Path:
    """A pool of the bundled model and an OpenAI-compatible server nobody runs."""
    path.write_text(
        "backends:\n"
        "  - {name: acr-bundled, kind: transformers, profiles: [arithmetic, game24]}\n"
        "  - {name: remote, kind: openai, base_url: 'http://127.0.0.1:9/v1'}\n"
    )
    return path


def test_calibrating_one_backend_of_a_pool_fits_a_router_for_that_backend(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from router.commands.cli import app

    data = tmp_path / "q.jsonl"
    write_questions(data, 1)
    out = tmp_path / "out"
    args = ["calibrate", "--config", str(pool_yaml(tmp_path / "pool.yaml")), "--data", str(data)]
    run = CliRunner().invoke(
        app, [*args, "--backend", "acr-bundled", "--out", str(out), "--arm", "single_pass"]
    )
    assert run.exit_code == 0, run.output
    assert RouterModel.load(out / "router.skops").card.backend_model == "acr-bundled"
    report = (out / "report.md").read_text()
    assert "- name: acr-bundled" in report and "router_model_path:" in report
    unknown = CliRunner().invoke(app, [*args, "--backend", "gpt-9", "--out", str(out)])
    assert unknown.exit_code == 2
    assert "'gpt-9' is not in the config; its backends: acr-bundled, remote" in unknown.output
