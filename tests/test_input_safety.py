"""Each class of hostile input fixed at its source, unit by unit: task parsers and checkers
that read digits, seeds derived from the largest seed, and error texts redacted before a
client reads them. ``tests/test_hostile_inputs.py`` sends the same inputs through the real
service; ``tests/test_api_guards.py`` covers the HTTP layer's guards."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, Field, ValidationError

from backends.bundled.tokenizer import build_tokenizer
from backends.redaction import redact
from difficulty.features import prompt_features
from policies.base import SEED_MODULUS, Problem, offset_seed
from policies.budget import Budget
from policies.registry import STRATEGY_NAMES, strategy_class
from router.http.errors import APIError, validation_error_to_api
from router.serving.handle import invalid_request, replica_failure
from tasks.bundled import model_prompt, parse_task
from tasks.game24_checker import Game24Verifier
from tasks.numeric_checker import NumericAnswerVerifier, answers_match, normalize_answer
from tasks.profiles import MatchRule, TaskProfiles
from tests.fakes import FakeBackend

MAX_SEED = 2**63 - 1

# Digits str.isdigit() accepts but int() refuses, and digit runs int() refuses by length.
NOT_NUMBERS = [
    "² ³ ¹ ⁴",
    "Use ² ³ ¹ ⁴ to make 24",
    "4 9 10 ²",
    "① ② ③ ④",
    "1" * 5000 + " 2 3 4",
    "Use 4 9 10 " + "1" * 5000 + " to make 24",
    "What is ²+³?",
    "9" * 5000,
]


@pytest.mark.parametrize("text", NOT_NUMBERS)
def test_task_parsers_read_digits_int_refuses_as_no_puzzle(text: str) -> None:
    assert parse_task(text).kind != "game24"
    assert model_prompt(text).startswith("<calc> ")
    # The matcher used to raise here (TaskProfiles.match hid it by not matching).
    assert MatchRule(bundled="game24").matcher()(text) is False
    task = TaskProfiles().match(text)
    assert len(prompt_features(text, task)) > 0


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("٤ ٩ ١٠ ١٣", (4, 9, 10, 13)),
        ("４ ９ １０ １３", (4, 9, 10, 13)),
        ("01 02 003 13", (1, 2, 3, 13)),
    ],
)
def test_other_scripts_digits_are_read_as_int_reads_them(
    text: str, numbers: tuple[int, ...]
) -> None:
    task = parse_task(text)
    assert task.kind == "game24" and task.numbers == numbers
    assert Game24Verifier().score(text, "Answer: (4+9) * 1") == 0.0


@pytest.mark.parametrize("text", [*NOT_NUMBERS, "٤ ٩ ١٠ ١٣", "４ ９ １０ １３", "0013 4 5 6"])
def test_the_chat_template_and_python_agree_on_hostile_digits(text: str) -> None:
    tok = build_tokenizer()
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == model_prompt(text)


@pytest.mark.parametrize(
    "answer", ["1e99999999", "1E+0000012345", "٣", "²", "9" * 5000, "1/" + "0" * 5000]
)
def test_numeric_answers_past_any_real_answer_are_compared_as_text(answer: str) -> None:
    started = time.perf_counter()
    key = normalize_answer(answer)
    assert key is not None and answers_match(answer, answer)
    assert not answers_match(answer, "3")
    verifier = NumericAnswerVerifier(solve_arithmetic=True)
    assert verifier.score("What is 1+2?", f"Answer: {answer}") == 0.0
    assert time.perf_counter() - started < 1.0


def test_numeric_answers_still_compare_numbers() -> None:
    assert answers_match("1,234.50", "1234.5") and answers_match("\\frac{1}{2}", "0.5")
    assert answers_match("2e3", "2000")


def test_seed_offsets_wrap_into_the_seed_range() -> None:
    assert offset_seed(None, 5) is None
    assert offset_seed(MAX_SEED, 1) == 0
    assert offset_seed(MAX_SEED, 104_729 * 3 + 2) == 104_729 * 3 + 1
    assert offset_seed(7, 3) == 10
    copy = Problem(text="x", prompt="x", seed=MAX_SEED).copy(2)
    assert copy.seed == 1 and 0 <= copy.seed < SEED_MODULUS


def _small_budget() -> Budget:
    return Budget(max_tokens=8, samples=4, batch_size=2, beam_width=2, expansions=2, max_steps=2)


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_every_strategy_sends_valid_seeds_from_the_largest_seed(strategy: str) -> None:
    backend = FakeBackend(lambda prompt, i, req: f"{i}+1={i + 1}\nAnswer: {i + 1}")
    problem = Problem(text="What is 2+3?", prompt="What is 2+3?\n", seed=MAX_SEED)
    runner = strategy_class(strategy)()
    deadline = time.monotonic() + 10
    results = asyncio.run(runner.run_copies(problem, backend, _small_budget(), deadline, 3))
    assert len(results) == 3
    seeds = [r.seed for r in backend.calls]
    assert seeds and all(s is not None and 0 <= s < SEED_MODULUS for s in seeds)


LEAKY = [
    ("request to http://10.1.2.3:8000/v1/chat failed", "http://", "10.1.2.3"),
    ("connect to vllm-0.vllm.svc.cluster.local:8000 refused", "svc.cluster", ":8000"),
    ("no route to inference-7.gpu.internal", "gpu.internal", "inference-7"),
    ("peer [fe80::1]:8080 reset", "fe80", ":8080"),
    ("weights /srv/models/llama/model.safetensors missing", "/srv/models", "safetensors"),
    ('File "/usr/lib/python3.11/site-packages/vllm/engine.py", line 3', "engine.py", "/usr/"),
    ("raised ValueError('shape mismatch') in step", "ValueError(", "shape mismatch"),
    ("engine <vllm.engine.LLMEngine object at 0x7f3a2c1d9e50> died", "0x7f3a", "LLMEngine"),
    ("Traceback (most recent call last):\n  boom", "Traceback", "boom"),
    ("redis://:hunter2@redis:6379/0 down", "hunter2", "redis:6379"),
    ("see https://errors.pydantic.dev/2.14/v/int_parsing", "pydantic.dev", "https"),
]


@pytest.mark.parametrize(("text", "first", "second"), LEAKY)
def test_redaction_removes_addresses_paths_and_reprs(text: str, first: str, second: str) -> None:
    out = redact(text)
    assert first not in out and second not in out, out


@pytest.mark.parametrize(
    "message",
    [
        "n must be between 1 and 16, got 17",
        "acr.budget.beam_width x expansions must be at most 64 on this server, got 96",
        "messages.0.content: String should have at most 32000 characters",
        "request body is not valid JSON: Expecting value: line 1 column 1 (char 0)",
        "model 'gpt-9' does not exist; available: acr-bundled",
        "x-acr-latency-budget-ms must be an integer from 1 to 3600000",
        "prompt is 5003 tokens; this model's context is 192 tokens",
        "the model server refused the request (400): max_tokens must be <= 4096",
    ],
)
def test_redaction_keeps_the_service_s_own_messages(message: str) -> None:
    assert redact(message) == message


def test_redaction_replaces_the_configured_upstream_by_name() -> None:
    out = redact("llama at gpu-box:8080 failed", ["gpu-box:8080", "gpu-box"])
    assert out == "llama at <model server> failed"


def test_api_errors_show_clients_the_redacted_message_and_keep_the_detail() -> None:
    err = APIError(503, "the model backend is unavailable: http://10.0.0.5:8000/v1 refused")
    assert "10.0.0.5" not in err.envelope()["error"]["message"]
    assert "10.0.0.5" in err.detail


class _Strict(BaseModel):
    seed: int = Field(ge=0)


def test_a_replica_s_validation_error_names_the_field_without_value_or_link() -> None:
    with pytest.raises(ValidationError) as info:
        _Strict(seed=-(2**70))
    out = invalid_request(info.value)
    assert out["retryable"] is False
    assert "seed" in out["error"] and "pydantic.dev" not in out["error"]
    assert str(2**70) not in out["error"]


def test_a_dead_replica_is_named_by_its_error_type_only() -> None:
    exc = RuntimeError("actor died on node 10.2.3.4:6380, see /tmp/ray/session_x/logs/raylet.out")
    err = replica_failure(exc)
    assert err.retryable and str(err) == "model replica failed (RuntimeError)"


def test_a_union_field_error_names_the_field_and_what_was_wrong() -> None:
    errors: list[dict[str, Any]] = [
        {"type": "string_type", "loc": ("body", "stop", "constrained-str"), "msg": "bad str"},
        {"type": "too_long", "loc": ("body", "stop", "list[constrained-str]"), "msg": "at most 4"},
    ]
    err = validation_error_to_api(errors)
    assert err.param == "stop" and "at most 4" in err.message and err.code == "too_long"


async def test_the_openai_backend_passes_on_no_upstream_internals() -> None:
    from backends.base import BackendError, ChatMessage, GenerationRequest
    from backends.openai_http import OpenAIHTTPBackend
    from tests.leaky_upstream import LEAKS, LEAKY_TEXT

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": LEAKY_TEXT}})

    declared: dict[str, bool | int] = {"native_n": True, "logprobs": False, "completions": False}
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    backend = OpenAIHTTPBackend("http://gpu-box:8000/v1", "m", client=client, declared=declared)
    req = GenerationRequest(messages=[ChatMessage(role="user", content="hi")])
    with pytest.raises(BackendError) as info:
        await backend.generate(req)
    message = str(info.value)
    assert message.startswith("the model server refused the request (400)")
    assert not [leak for leak in LEAKS if leak in message], message


@pytest.mark.parametrize(("temperature", "top_p"), [(1e-40, 1.0), (1e-300, 1.0), (0.7, 1e-300)])
def test_sampling_at_a_vanishing_temperature_or_nucleus_is_as_good_as_greedy(
    temperature: float, top_p: float
) -> None:
    import torch

    from backends.decoding import top_p_filter

    logits = torch.tensor([[2.0, 9.0, -3.0], [0.5, 0.1, 4.0]])
    probs = torch.softmax(logits / max(temperature, 1e-3), dim=-1)
    kept = top_p_filter(probs, torch.tensor([top_p, top_p], dtype=torch.float32))
    assert bool(torch.isfinite(kept).all()) and kept.argmax(-1).tolist() == [1, 2]


@pytest.mark.parametrize(("temperature", "top_p"), [(1e-40, 1.0), (0.9, 1e-300)])
async def test_the_bundled_model_samples_at_a_vanishing_temperature_or_nucleus(
    temperature: float, top_p: float
) -> None:
    from backends.base import GenerationRequest
    from backends.bundled.paths import bundled_model_path
    from backends.transformers_backend import TransformersBackend

    backend = TransformersBackend.from_pretrained(str(bundled_model_path()), device="cpu")
    req = GenerationRequest(
        prompt="<calc> 2+3\n",
        n=2,
        max_tokens=8,
        temperature=temperature,
        top_p=top_p,
        seed=MAX_SEED,
    )
    result = await backend.generate(req)
    greedy = await backend.generate(req.model_copy(update={"temperature": 0.0, "n": 1}))
    assert [c.text for c in result.completions] == [greedy.completions[0].text] * 2
