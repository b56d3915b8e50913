"""The decode primitives a causal LM backend and its continuous batcher share: one cached
forward pass, per-row sampling with per-request generators, stop handling and the
OpenAI-shaped completion of a finished row.

``Decoder`` holds what they need of the tokenizer (EOS, padding, decoding) and the device;
``TransformersBackend`` decodes static batches with it and ``ContinuousBatcher`` steps running
batches with it.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from backends.base import Completion, GenerationRequest

log = logging.getLogger("acr.decoding")


@dataclass
class DecodeRow:
    """Decode state of one sampled continuation: its tokens and, per token, the log-prob,
    entropy and top-1/top-2 margin of the model's own distribution (``append`` adds one)."""

    request: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    done: bool = False
    finish_reason: str = "length"
    text: str | None = None

    def append(self, token: int, logprob: float, entropy: float, margin: float) -> None:
        """Record one sampled token and its confidence signals."""
        self.tokens.append(token)
        self.logprobs.append(logprob)
        self.entropies.append(entropy)
        self.margins.append(margin)


#: the lowest temperature sampling divides by (logits / 1e-3 stay finite in float32)
MIN_SAMPLING_TEMPERATURE = 1e-3
#: what ``Decoder.sample`` returns: per live row the chosen token ids, their log-probs, the
#: entropies and the top-1 minus top-2 log-prob margins (all of the temperature-1 model)
Sampled = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class Decoder:
    """Decoding with ``tokenizer`` on ``device``; ``lock`` serialises forward passes (one
    decode loop at a time per model set)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, device: torch.device) -> None:
        self.tokenizer = tokenizer
        self.device = device
        self.eos_id: int | None = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else (self.eos_id or 0)
        self.lock = threading.Lock()

    def prefill_unique(
        self, model: torch.nn.Module, prompts: list[list[int]]
    ) -> tuple[dict[tuple[int, ...], int], Any, torch.Tensor, torch.Tensor]:
        """One left-padded prefill per distinct prompt (siblings: n samples, beam states with
        equal prefixes, share it). Returns (prompt -> row, forward output, attention mask,
        position ids)."""
        unique: dict[tuple[int, ...], int] = {}
        for p in prompts:
            unique.setdefault(tuple(p), len(unique))
        uniq = list(unique)
        width = max(len(u) for u in uniq)
        input_ids = torch.full((len(uniq), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(uniq), width), dtype=torch.long)
        for j, u in enumerate(uniq):
            input_ids[j, width - len(u) :] = torch.tensor(u)
            mask[j, width - len(u) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return unique, forward(model, input_ids, mask, positions, None), mask, positions

    def generator(self, req: GenerationRequest) -> torch.Generator:
        """A sampling generator for ``req``: seeded when it has a seed, else random."""
        device = self.device
        g = torch.Generator(device=device)
        if req.seed is not None:
            g.manual_seed(req.seed)
        else:
            g.seed()
        return g

    def sample(
        self,
        logits: torch.Tensor,
        temps: torch.Tensor,
        top_ps: torch.Tensor,
        owners: list[int],
        gens: Sequence[torch.Generator] | Mapping[int, torch.Generator],
    ) -> Sampled:
        """Pick one token per live row; returns ids, their log-probs, the entropies and the
        margins (log-prob of the best token minus the runner-up's, >= 0).

        ``owners[b]`` names the request of batch row ``b``, whose generator is
        ``gens[owners[b]]``.

        Log-probs, entropies and margins are of the model's own distribution (temperature
        1), which is what confidence signals are calibrated on, whatever temperature sampled
        the token.
        """
        logp_all = torch.log_softmax(logits, dim=-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        margin = _top2_margin(logp_all)
        greedy = logits.argmax(-1)
        chosen = greedy.clone()
        sampled_rows = (temps > 0).nonzero().flatten()
        if sampled_rows.numel():
            # A temperature near 0 (1e-40 is a float32 > 0) would scale logits to inf and
            # softmax to NaN; at the floor sampling is already as good as greedy.
            floor = temps[sampled_rows].clamp(min=MIN_SAMPLING_TEMPERATURE)
            scaled = logits[sampled_rows] / floor[:, None]
            probs = torch.softmax(scaled, dim=-1)
            probs = top_p_filter(probs, top_ps[sampled_rows])
            # Each request samples with its own generator so that a seed reproduces its
            # samples whatever else shares the batch.
            by_request: dict[int, list[int]] = {}
            for k, b in enumerate(sampled_rows.tolist()):
                by_request.setdefault(owners[b], []).append(k)
            for req_i, ks in by_request.items():
                sel = torch.tensor(ks, device=logits.device)
                draws = torch.multinomial(probs[sel], 1, generator=gens[req_i]).flatten()
                chosen[sampled_rows[sel]] = draws
        logp = logp_all.gather(-1, chosen.view(-1, 1)).flatten()
        return chosen, logp, entropy, margin

    def finished(self, row: DecodeRow, req: GenerationRequest) -> bool:
        """Whether ``row`` ended (EOS, a stop string, ``max_tokens``); sets its reason."""
        if self.eos_id is not None and row.tokens[-1] == self.eos_id:
            row.finish_reason = "stop"
            return True
        if req.stop:
            tail_chars = max(len(s) for s in req.stop)
            # Decoding only the last few tokens keeps stop checks O(1) per step.
            tail = self.tokenizer.decode(row.tokens[-(tail_chars + 2) :], skip_special_tokens=True)
            if any(s in tail for s in req.stop):
                row.finish_reason = "stop"
                return True
        if len(row.tokens) >= req.max_tokens:
            row.finish_reason = "length"
            return True
        return False

    def completion(self, row: DecodeRow, req: GenerationRequest) -> Completion:
        """The OpenAI-shaped completion of one finished row."""
        toks = row.tokens
        if self.eos_id is not None and toks and toks[-1] == self.eos_id:
            toks = toks[:-1]
        text = cut_at_stop(str(self.tokenizer.decode(toks, skip_special_tokens=True)), req.stop)
        return Completion(
            text=text,
            tokens=len(row.tokens),
            finish_reason="stop" if row.finish_reason == "stop" else "length",
            token_logprobs=row.logprobs if req.logprobs else None,
            token_entropies=row.entropies if req.logprobs else None,
            token_margins=row.margins if req.logprobs else None,
        )


def _top2_margin(logp_all: torch.Tensor) -> torch.Tensor:
    """Per row, the best log-prob minus the second best (0 for a one-token vocabulary)."""
    if logp_all.shape[-1] < 2:
        return torch.zeros(logp_all.shape[0], device=logp_all.device)
    top2 = logp_all.topk(2, dim=-1).values
    return top2[:, 0] - top2[:, 1]


def forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Any,
) -> Any:
    """One cached forward pass; ``cache`` is None for a prefill.

    transformers renamed the cache argument from ``past_key_values`` to ``cache`` (5.2x);
    the name is taken from the model's signature so both generations of the library work.
    """
    name = _CACHE_ARG.get(type(model))
    if name is None:
        params = inspect.signature(model.forward).parameters
        name = "cache" if "cache" in params else "past_key_values"
        _CACHE_ARG[type(model)] = name
    kwargs: dict[str, Any] = {name: cache} if cache is not None else {}
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        **kwargs,
    )


def output_cache(output: Any) -> Any:
    """The KV cache a forward pass returned, under either of its names."""
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else output.past_key_values


_CACHE_ARG: dict[type, str] = {}


def top_p_filter(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero the tail outside each row's nucleus ``top_p`` (the top token always stays)."""
    if bool((top_p >= 1.0).all()):
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p
    keep = before < top_p[:, None]
    keep[:, 0] = True  # also when top_p underflowed to 0 (else every row would be 0/0)
    sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return filtered / filtered.sum(-1, keepdim=True)


def cut_at_stop(text: str, stops: list[str]) -> str:
    """Text up to (not including) the earliest stop string, as OpenAI's API returns it."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


class TextStream:
    """Turns one row's growing token list into text deltas whose concatenation is exactly
    the ``Completion.text`` that ``Decoder.completion`` gives at the end.

    ``push`` takes newly sampled tokens and returns the text that became stable (possibly
    ""): it decodes every token so far, as the final text is decoded, and holds back what a
    later token may still change or cut: a trailing U+FFFD (a partial UTF-8 sequence), a
    suffix that may be the start of a stop string, and, for tokenizers that clean up
    spaces before punctuation, the last few characters. Nothing past a stop string is ever
    emitted. ``finish`` returns the rest of the final text.
    """

    #: longest pattern minus one of transformers' ``clean_up_tokenization`` (" n't")
    _CLEANUP_HOLD = 4

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.tokens: list[int] = []
        self.emitted = ""
        cleanup = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
        self._hold = self._CLEANUP_HOLD if cleanup else 0

    def push(self, tokens: Sequence[int]) -> str:
        """Add ``tokens``; returns the newly stable text (not yet returned before)."""
        self.tokens.extend(tokens)
        text = str(self.tokenizer.decode(self.tokens, skip_special_tokens=True))
        stable = self._stable(text)
        # Decoding is prefix-stable once the held-back tail is excluded; if a tokenizer
        # ever rewrites text already sent, wait rather than send something inconsistent.
        if len(stable) <= len(self.emitted) or not stable.startswith(self.emitted):
            return ""
        delta = stable[len(self.emitted) :]
        self.emitted = stable
        return delta

    def finish(self, final_text: str) -> str:
        """The part of ``final_text`` (the completion's text) not yet returned."""
        if not final_text.startswith(self.emitted):
            # Cannot happen with the hold-backs above; sent text cannot be taken back.
            log.warning("streamed text diverged from the final completion text")
            return ""
        rest = final_text[len(self.emitted) :]
        self.emitted = final_text
        return rest

    def _stable(self, text: str) -> str:
        """The prefix of ``text`` no later token can change: cut at a stop string, minus
        the held-back tail."""
        cut = cut_at_stop(text, self.stops)
        hold = self._hold
        if len(cut) == len(text):  # no stop string yet: one may be starting at the end
            hold = max([hold, *(_stop_prefix_len(text, s) for s in self.stops)])
        stable = cut[: len(cut) - hold] if hold else cut
        return stable.rstrip("\ufffd")


def _stop_prefix_len(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
