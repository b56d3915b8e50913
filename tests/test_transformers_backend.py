"""The transformers backend against a tiny real checkpoint: batching must not change results."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.base import BackendError, ChatMessage, GenerationRequest
from backends.transformers_backend import TransformersBackend
from tests.tiny_model import build_tiny_checkpoint


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> TransformersBackend:
    path = build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))
    return TransformersBackend.from_pretrained(path, device="cpu")


def test_greedy_decode_matches_transformers_generate(backend: TransformersBackend) -> None:
    ids = backend.tokenizer("12+3=", return_tensors="pt")
    ref = backend.model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    expected = backend.tokenizer.decode(
        ref[0, ids["input_ids"].shape[1] :], skip_special_tokens=True
    )
    got = backend.generate_batch_sync([GenerationRequest(prompt="12+3=", max_tokens=12)])
    assert got[0].completions[0].text == expected


def test_batching_prompts_of_different_lengths_does_not_change_greedy_output(
    backend: TransformersBackend,
) -> None:
    reqs = [
        GenerationRequest(prompt="1+1=", max_tokens=16),
        GenerationRequest(prompt="a much longer prompt: 17*3-2=", max_tokens=16),
        GenerationRequest(prompt="9", max_tokens=5),
    ]
    alone = [backend.generate_batch_sync([r])[0].completions[0].text for r in reqs]
    together = [res.completions[0].text for res in backend.generate_batch_sync(reqs)]
    assert together == alone


def test_a_seed_reproduces_samples_whatever_shares_the_batch(backend: TransformersBackend) -> None:
    req = GenerationRequest(prompt="12+3=", n=4, max_tokens=20, temperature=1.0, seed=11)
    other = GenerationRequest(prompt="xyz", n=3, max_tokens=9, temperature=1.3, seed=5)
    first = [c.text for c in backend.generate_batch_sync([req])[0].completions]
    mixed = [c.text for c in backend.generate_batch_sync([other, req])[1].completions]
    assert first == mixed
    assert len(set(first)) > 1, "temperature 1 samples of a random model should differ"


def test_n_samples_share_one_prefill_and_count_their_tokens(backend: TransformersBackend) -> None:
    res = backend.generate_batch_sync(
        [GenerationRequest(prompt="12+3=", n=5, max_tokens=7, temperature=1.0, seed=1)]
    )[0]
    assert len(res.completions) == 5
    assert res.prompt_tokens == len(backend.tokenizer("12+3=")["input_ids"])
    assert all(1 <= c.tokens <= 7 for c in res.completions)
    assert res.completion_tokens == sum(c.tokens for c in res.completions)


def test_stop_strings_are_cut_from_text_but_their_tokens_are_counted(
    backend: TransformersBackend,
) -> None:
    base = backend.generate_batch_sync([GenerationRequest(prompt="5", max_tokens=30)])[0]
    text = base.completions[0].text
    assert len(text) >= 4
    stop = text[2]
    res = backend.generate_batch_sync([GenerationRequest(prompt="5", max_tokens=30, stop=[stop])])[
        0
    ].completions[0]
    assert res.text == text[: text.index(stop)]
    assert res.finish_reason == "stop"
    assert res.tokens == text.index(stop) + 1


def test_logprobs_and_entropies_are_returned_per_token_when_asked(
    backend: TransformersBackend,
) -> None:
    res = backend.generate_batch_sync([GenerationRequest(prompt="7", max_tokens=6, logprobs=True)])[
        0
    ].completions[0]
    assert res.token_logprobs is not None and res.token_entropies is not None
    assert len(res.token_logprobs) == len(res.token_entropies) == res.tokens
    assert all(lp <= 0 for lp in res.token_logprobs)
    assert all(e >= 0 for e in res.token_entropies)
    assert res.mean_entropy() is not None


def test_length_limit_sets_finish_reason_length(backend: TransformersBackend) -> None:
    res = backend.generate_batch_sync([GenerationRequest(prompt="8", max_tokens=3)])[0]
    c = res.completions[0]
    assert c.tokens <= 3
    if c.tokens == 3:
        assert c.finish_reason == "length"


async def test_chat_messages_are_rendered_with_the_checkpoint_template(
    backend: TransformersBackend,
) -> None:
    prompt = await backend.render_chat([ChatMessage(role="user", content="2+2")])
    assert prompt == "Q:2+2\nA:"
    by_chat = await backend.generate(
        GenerationRequest(messages=[ChatMessage(role="user", content="2+2")], max_tokens=8)
    )
    by_prompt = await backend.generate(GenerationRequest(prompt=prompt, max_tokens=8))
    assert by_chat.completions[0].text == by_prompt.completions[0].text


def test_a_prompt_longer_than_the_context_is_refused_without_retry(
    backend: TransformersBackend,
) -> None:
    with pytest.raises(BackendError) as err:
        backend.generate_batch_sync([GenerationRequest(prompt="1" * 400, max_tokens=2)])
    assert err.value.retryable is False
    assert "context" in str(err.value)


def test_rows_over_the_cap_are_split_into_several_passes(tmp_path: Path) -> None:
    path = build_tiny_checkpoint(tmp_path / "m")
    small = TransformersBackend.from_pretrained(path, device="cpu")
    small.max_rows = 3
    reqs = [
        GenerationRequest(prompt=str(i), n=2, max_tokens=4, seed=i, temperature=1.0)
        for i in range(4)
    ]
    split = small.generate_batch_sync(reqs)
    small.max_rows = 512
    whole = small.generate_batch_sync(reqs)
    assert [[c.text for c in r.completions] for r in split] == [
        [c.text for c in r.completions] for r in whole
    ]


def test_generation_stops_at_the_context_size_instead_of_crashing(
    backend: TransformersBackend,
) -> None:
    limit = backend.context_limit()
    assert limit is not None
    prompt = "1" * (limit - 3)
    res = backend.generate_batch_sync([GenerationRequest(prompt=prompt, max_tokens=50)])[0]
    assert res.completions[0].tokens <= 3


def _bundle(root: Path, routes: dict[str, str]) -> Path:
    import json

    build_tiny_checkpoint(root / "a", seed=0)
    build_tiny_checkpoint(root / "b", seed=1)
    (root / "bundle.json").write_text(json.dumps({"default": "a", "routes": routes}))
    return root


def test_a_bundle_sends_each_prompt_to_the_expert_its_first_token_names(
    tmp_path: Path,
) -> None:
    bundle = TransformersBackend.from_pretrained(_bundle(tmp_path, {"x": "b"}), device="cpu")
    alone = {
        name: TransformersBackend.from_pretrained(tmp_path / name, device="cpu")
        for name in ("a", "b")
    }
    reqs = [GenerationRequest(prompt=p, max_tokens=12) for p in ("x12+3=", "12+3=", "x9-4=")]
    mixed = bundle.generate_batch_sync(reqs)  # both experts in one batch
    want = ["b", "a", "b"]
    for req, res, name in zip(reqs, mixed, want, strict=True):
        ref = {n: b.generate_batch_sync([req])[0].completions[0].text for n, b in alone.items()}
        assert ref["a"] != ref["b"]  # the two experts are distinguishable on this prompt
        assert res.completions[0].text == ref[name]
    assert bundle.describe()["experts"] == 2


def test_a_bundle_that_routes_an_unknown_token_fails_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="not one token"):
        TransformersBackend.from_pretrained(_bundle(tmp_path, {"<nope>": "b"}), device="cpu")


async def test_continuing_a_cut_greedy_prefix_gives_the_full_greedy_answer(
    backend: TransformersBackend,
) -> None:
    from policies.base import Budget, Problem
    from policies.single_pass import SinglePass

    full = backend.generate_batch_sync([GenerationRequest(prompt="12+3=", max_tokens=40)])[0]
    probe = backend.generate_batch_sync([GenerationRequest(prompt="12+3=", max_tokens=15)])[0]
    assert probe.completions[0].finish_reason == "length"
    problem = Problem(
        text="12+3=",
        prompt="12+3=",
        prefix=probe.completions[0].text,
        prefix_tokens=probe.completions[0].tokens,
    )
    res = await SinglePass().run(
        problem, backend, Budget(max_tokens=40, temperature=0.0), deadline=1e12
    )
    assert res.text == full.completions[0].text
    assert res.completion_tokens == full.completions[0].tokens - 15


def test_margins_are_the_gap_between_the_two_best_log_probs_of_every_step(
    backend: TransformersBackend,
) -> None:
    import torch

    req = GenerationRequest(prompt="9", max_tokens=12, logprobs=True)
    comp = backend.generate_batch_sync([req])[0].completions[0]
    margins = comp.token_margins
    assert margins is not None and len(margins) == comp.tokens == 12
    assert all(m >= 0 for m in margins)
    # Recompute from one uncached forward pass over prompt + answer (greedy: no EOS, one
    # character token per character of the text).
    prompt = backend._prompt_ids(req)
    answer = backend.tokenizer(comp.text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logits = backend.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    top2 = logp.topk(2, dim=-1).values
    assert logits.argmax(-1).tolist() == answer
    assert margins == pytest.approx((top2[:, 0] - top2[:, 1]).tolist(), abs=1e-4)
    plain = backend.generate_batch_sync([GenerationRequest(prompt="9", max_tokens=12)])[0]
    assert plain.completions[0].token_margins is None
