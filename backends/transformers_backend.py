"""A local transformers/torch causal LM as a ``Backend``.

The decode loop is written here (not ``model.generate``) because the router needs three
things ``generate`` does not give together: ``n`` samples of one prompt from one shared
prefill (the prompt's KV cache is computed once and copied to its ``n`` rows), several
requests with different sampling parameters, seeds and stop strings in one batch, and the
entropy of every sampled position (the difficulty probe's signal).

A checkpoint directory may also be a bundle of experts that share one tokenizer:
``bundle.json`` names a default sub-directory and maps task tokens to sub-directories
(``{"default": "game24", "routes": {"<24>": "game24", "<calc>": "arithmetic"}}``), and each
prompt goes to the expert its first token names. The bundled model is such a bundle.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

if TYPE_CHECKING:
    from backends.continuous_batching import ContinuousBatcher

from backends.base import (
    Backend,
    BackendError,
    ChatMessage,
    Completion,
    GenerationRequest,
    GenerationResult,
)

BUNDLE_FILE = "bundle.json"
BATCHING_MODES = ("continuous", "static")


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when a GPU is visible, else CPU; explicit ``cuda`` without one fails."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError("model.device is 'cuda' but no CUDA device is visible", retryable=False)
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA (half the memory, tensor cores) and float32 on CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


@dataclass
class _Row:
    """Decode state of one sampled continuation."""

    request: int
    tokens: list[int]
    logprobs: list[float]
    entropies: list[float]
    done: bool = False
    finish_reason: str = "length"
    text: str | None = None


class TransformersBackend(Backend):
    """Runs any ``AutoModelForCausalLM`` checkpoint; the bundled model is the default.

    Use ``from_pretrained(path)``; ``generate`` is async (it runs the decode loop in a worker
    thread so the event loop stays free) and ``generate_batch_sync`` serves a whole batch of
    requests, which is what the Ray Serve replica's ``@serve.batch`` method calls.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str = "model",
        max_rows: int = 512,
        experts: dict[int, torch.nn.Module] | None = None,
        batching: str = "continuous",
    ) -> None:
        self.model = model.eval()
        # First prompt token id -> the model that serves such prompts; others get ``model``.
        self.experts = {k: m.eval() for k, m in (experts or {}).items()}
        self.tokenizer = tokenizer
        self.name = name
        self.max_rows = max_rows
        self.device = next(model.parameters()).device
        self.eos_id: int | None = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else (self.eos_id or 0)
        self._lock = threading.Lock()
        self.batching = _checked_mode(batching)
        self._continuous: ContinuousBatcher | None = None

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        torch_threads: int = 0,
        name: str | None = None,
        batching: str = "continuous",
    ) -> TransformersBackend:
        """Load a local checkpoint (no hub access) and return a ready backend.

        ``batching`` is how concurrent ``generate`` calls share forward passes:
        ``continuous`` (rows join and leave between decode steps) or ``static`` (each call
        decodes on its own; callers batch with ``generate_batch_sync``).
        """
        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        hf_logging.disable_progress_bar()
        dev = resolve_device(device)
        p = Path(path)
        if not p.is_dir():
            raise BackendError(f"model path {str(p)!r} is not a directory", retryable=False)
        if (p / BUNDLE_FILE).is_file():
            backend = cls._from_bundle(p, dev, dtype, name or p.name)
        else:
            tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
            backend = cls(_load_model(p, dev, dtype), tokenizer, name=name or p.name)
        backend.set_batching(batching)
        return backend

    def set_batching(self, batching: str) -> None:
        """Choose ``continuous`` or ``static`` batching for ``generate`` (see
        ``from_pretrained``); a model whose KV cache cannot be padded and trimmed (sliding
        window layers) stays ``static``."""
        batching = _checked_mode(batching)
        if batching == "continuous" and not all(
            _plain_cache(m, self.device) for m in {id(m): m for m in self._models()}.values()
        ):
            batching = "static"
        self.batching = batching

    def _models(self) -> list[torch.nn.Module]:
        return [self.model, *self.experts.values()]

    @classmethod
    def _from_bundle(cls, p: Path, dev: torch.device, dtype: str, name: str) -> TransformersBackend:
        try:
            spec = json.loads((p / BUNDLE_FILE).read_text())
            default, routes = str(spec["default"]), dict(spec["routes"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(
                f"{p / BUNDLE_FILE} must be JSON with 'default' (a sub-directory) and "
                f"'routes' (task token -> sub-directory): {exc}",
                retryable=False,
            ) from exc
        tokenizer = AutoTokenizer.from_pretrained(p / default, local_files_only=True)
        loaded = {default: _load_model(p / default, dev, dtype)}
        experts: dict[int, torch.nn.Module] = {}
        for token, sub in routes.items():
            token_id = tokenizer.convert_tokens_to_ids(token)
            if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
                raise BackendError(
                    f"{p / BUNDLE_FILE} routes {token!r}, which is not one token of the "
                    "bundle's tokenizer",
                    retryable=False,
                )
            if sub not in loaded:
                loaded[sub] = _load_model(p / sub, dev, dtype)
            experts[token_id] = loaded[sub]
        return cls(loaded[default], tokenizer, name=name, experts=experts)

    # -- Backend interface -------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Serve one request. With continuous batching it joins the running batch at the
        next decode step and returns as soon as its own rows end; with static batching it
        decodes alone in a worker thread (see ``generate_batch_sync``)."""
        if self.batching == "static":
            results = await asyncio.to_thread(self.generate_batch_sync, [request])
            return results[0]
        prompt = self._prompt_ids(request)
        if self._continuous is None:
            from backends.continuous_batching import ContinuousBatcher

            self._continuous = ContinuousBatcher(self, max_rows=self.max_rows)
        capped = self._capped(request, prompt)
        fut = self._continuous.submit(prompt, capped, self._model_for(prompt))
        return await asyncio.wrap_future(fut)

    async def close(self) -> None:
        """Stop the continuous batching worker, if one was started."""
        if self._continuous is not None:
            await asyncio.to_thread(self._continuous.close)
            self._continuous = None

    async def render_chat(self, messages: list[ChatMessage]) -> str:
        """The checkpoint's chat template applied to ``messages`` with a generation prompt."""
        return self.render_chat_sync(messages)

    def render_chat_sync(self, messages: list[ChatMessage]) -> str:
        """Synchronous ``render_chat``; raises ``BackendError`` if there is no template."""
        if not getattr(self.tokenizer, "chat_template", None):
            # A base model without a template: plain concatenation is the honest fallback.
            return "\n".join(m.content for m in messages) + "\n"
        rendered = self.tokenizer.apply_chat_template(
            [m.model_dump() for m in messages], tokenize=False, add_generation_prompt=True
        )
        return str(rendered)

    # -- batching ----------------------------------------------------------------------------

    def generate_batch_sync(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Serve several requests in as few forward passes as possible.

        Requests are grouped so that no forward pass holds more than ``max_rows`` sampled
        rows; within a group every distinct prompt is prefilled once and its KV cache is
        copied to the rows that sample from it. Returns one result per request, in order.
        """
        out: list[GenerationResult | None] = [None] * len(requests)
        group: list[int] = []
        rows = 0
        for i, req in enumerate(requests):
            if group and rows + req.n > self.max_rows:
                self._serve_group(requests, group, out)
                group, rows = [], 0
            group.append(i)
            rows += req.n
        if group:
            self._serve_group(requests, group, out)
        return [r for r in out if r is not None]

    def _serve_group(
        self,
        requests: list[GenerationRequest],
        indices: list[int],
        out: list[GenerationResult | None],
    ) -> None:
        prompts = [self._prompt_ids(requests[i]) for i in indices]
        group = [self._capped(requests[i], p) for i, p in zip(indices, prompts, strict=True)]
        # Each expert decodes its own prompts; a plain checkpoint has one part.
        parts: dict[torch.nn.Module, list[int]] = {}
        for j, p in enumerate(prompts):
            parts.setdefault(self._model_for(p), []).append(j)
        for model, js in parts.items():
            sub_prompts, sub_group = [prompts[j] for j in js], [group[j] for j in js]
            with self._lock:
                try:
                    results = self._decode(sub_prompts, sub_group, model)
                except torch.cuda.OutOfMemoryError as exc:  # pragma: no cover - GPU only
                    raise BackendError(f"out of GPU memory for {len(js)} requests") from exc
            for j, res in zip(js, results, strict=True):
                out[indices[j]] = res

    def _capped(self, request: GenerationRequest, prompt_ids: list[int]) -> GenerationRequest:
        """``request`` with ``max_tokens`` cut so that prompt plus output fit the context."""
        limit = self.context_limit()
        if limit is None or len(prompt_ids) + request.max_tokens <= limit:
            return request
        # Absolute position embeddings end at the context size: cap generation there.
        return request.model_copy(update={"max_tokens": max(1, limit - len(prompt_ids))})

    def _model_for(self, prompt_ids: list[int]) -> torch.nn.Module:
        return self.experts.get(prompt_ids[0], self.model) if prompt_ids else self.model

    def context_limit(self) -> int | None:
        """The model's context size in tokens, when its config declares one."""
        cfg = self.model.config
        limit = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        return int(limit) if limit else None

    def check_request(self, request: GenerationRequest) -> int:
        """Prompt length in tokens; raises ``BackendError`` (not retryable) if it cannot fit.

        The Serve replica calls this before batching so one bad request cannot fail a batch.
        """
        return len(self._prompt_ids(request))

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.messages is not None:
            text = self.render_chat_sync(request.messages)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(request.prompt or "")["input_ids"]
        if not ids:
            ids = [self.eos_id if self.eos_id is not None else self.pad_id]
        limit = self.context_limit()
        if limit is not None and len(ids) + 1 > limit:
            raise BackendError(
                f"prompt is {len(ids)} tokens; this model's context is {limit} tokens",
                retryable=False,
            )
        return list(ids)

    # -- the decode loop -----------------------------------------------------------------------

    @torch.inference_mode()
    def _decode(
        self, prompts: list[list[int]], requests: list[GenerationRequest], model: torch.nn.Module
    ) -> list[GenerationResult]:
        t0 = time.perf_counter()
        device = self.device
        unique, pre, mask, positions = self._prefill_unique(model, prompts)
        t_prefill = time.perf_counter()

        # Row r samples from prompt row_src[r]; copy the cache rows accordingly.
        row_src: list[int] = []
        rows: list[_Row] = []
        for ri, (req, p) in enumerate(zip(requests, prompts, strict=True)):
            for _ in range(req.n):
                row_src.append(unique[tuple(p)])
                rows.append(_Row(request=ri, tokens=[], logprobs=[], entropies=[]))
        src = torch.tensor(row_src, device=device)
        cache = output_cache(pre)
        cache.reorder_cache(src)
        logits = pre.logits[:, -1, :].float().index_select(0, src)
        attn = mask.index_select(0, src)
        pos = positions[:, -1].index_select(0, src)

        gens = [self._generator(req, device) for req in requests]
        temps = torch.tensor([requests[r.request].temperature for r in rows], device=device)
        top_ps = torch.tensor([requests[r.request].top_p for r in rows], device=device)
        max_new = max(req.max_tokens for req in requests)
        active = list(range(len(rows)))  # row index of each live batch position

        for _step in range(max_new):
            owners = [rows[i].request for i in active]
            next_ids, logp, ent = self._sample(logits, temps, top_ps, owners, gens)
            keep: list[int] = []
            for b, row_i in enumerate(active):
                row = rows[row_i]
                tok = int(next_ids[b])
                row.tokens.append(tok)
                row.logprobs.append(float(logp[b]))
                row.entropies.append(float(ent[b]))
                if self._finished(row, requests[row.request]):
                    row.done = True
                else:
                    keep.append(b)
            if not keep:
                break
            if len(keep) < len(active):
                idx = torch.tensor(keep, device=device)
                cache.reorder_cache(idx)
                attn, pos, next_ids = attn[idx], pos[idx], next_ids[idx]
                temps, top_ps = temps[idx], top_ps[idx]
                active = [active[b] for b in keep]
            attn = torch.cat([attn, attn.new_ones((len(active), 1))], dim=1)
            pos = pos + 1
            step = forward(model, next_ids.view(-1, 1), attn, pos.view(-1, 1), cache)
            cache = output_cache(step)
            logits = step.logits[:, -1, :].float()
        t_end = time.perf_counter()
        return self._results(prompts, requests, rows, t0, t_prefill, t_end)

    def _prefill_unique(
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

    def _generator(self, req: GenerationRequest, device: torch.device) -> torch.Generator:
        g = torch.Generator(device=device)
        if req.seed is not None:
            g.manual_seed(req.seed)
        else:
            g.seed()
        return g

    def _sample(
        self,
        logits: torch.Tensor,
        temps: torch.Tensor,
        top_ps: torch.Tensor,
        owners: list[int],
        gens: Sequence[torch.Generator] | Mapping[int, torch.Generator],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pick one token per live row; returns ids, their log-probs and the entropies.

        ``owners[b]`` names the request of batch row ``b``, whose generator is
        ``gens[owners[b]]``.

        Log-probs and entropies are of the model's own distribution (temperature 1), which
        is what confidence signals are calibrated on, whatever temperature sampled the token.
        """
        logp_all = torch.log_softmax(logits, dim=-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        greedy = logits.argmax(-1)
        chosen = greedy.clone()
        sampled_rows = (temps > 0).nonzero().flatten()
        if sampled_rows.numel():
            scaled = logits[sampled_rows] / temps[sampled_rows, None]
            probs = torch.softmax(scaled, dim=-1)
            probs = _top_p_filter(probs, top_ps[sampled_rows])
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
        return chosen, logp, entropy

    def _finished(self, row: _Row, req: GenerationRequest) -> bool:
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

    def _results(
        self,
        prompts: list[list[int]],
        requests: list[GenerationRequest],
        rows: list[_Row],
        t0: float,
        t_prefill: float,
        t_end: float,
    ) -> list[GenerationResult]:
        per_req: list[list[Completion]] = [[] for _ in requests]
        for row in rows:
            per_req[row.request].append(self._completion(row, requests[row.request]))
        timings = {
            "prefill_ms": (t_prefill - t0) * 1000,
            "decode_ms": (t_end - t_prefill) * 1000,
        }
        return [
            GenerationResult(
                completions=comps, prompt_tokens=len(p), model=self.name, timings_ms=timings
            )
            for comps, p in zip(per_req, prompts, strict=True)
        ]

    def _completion(self, row: _Row, req: GenerationRequest) -> Completion:
        """The OpenAI-shaped completion of one finished row."""
        toks = row.tokens
        if self.eos_id is not None and toks and toks[-1] == self.eos_id:
            toks = toks[:-1]
        text = _cut_at_stop(str(self.tokenizer.decode(toks, skip_special_tokens=True)), req.stop)
        return Completion(
            text=text,
            tokens=len(row.tokens),
            finish_reason="stop" if row.finish_reason == "stop" else "length",
            token_logprobs=row.logprobs if req.logprobs else None,
            token_entropies=row.entropies if req.logprobs else None,
        )

    def describe(self) -> dict[str, Any]:
        """Device, dtype and size, for logs and ``/v1/models``."""
        models = {id(m): m for m in self._models()}
        params = sum(p.numel() for m in models.values() for p in m.parameters())
        dtype = next(self.model.parameters()).dtype
        return {
            "device": str(self.device),
            "dtype": str(dtype),
            "parameters": params,
            "experts": len(models),
            "batching": self.batching,
        }


def _load_model(path: Path, dev: torch.device, dtype: str) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, dtype=resolve_dtype(dtype, dev)
    )
    return model.to(dev)  # type: ignore[arg-type]


def _checked_mode(batching: str) -> str:
    if batching not in BATCHING_MODES:
        raise BackendError(
            f"batching must be one of {', '.join(BATCHING_MODES)}, got {batching!r}",
            retryable=False,
        )
    return batching


@torch.inference_mode()
def _plain_cache(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether ``model``'s KV cache is one full-length tensor pair per layer, which is what
    continuous batching pads, concatenates and trims (sliding-window layers are not)."""
    ids = torch.zeros((1, 1), dtype=torch.long, device=device)
    cache = output_cache(forward(model, ids, torch.ones_like(ids), torch.zeros_like(ids), None))
    if hasattr(cache, "layers"):
        return all(type(layer).__name__ == "DynamicLayer" for layer in cache.layers)
    return hasattr(cache, "key_cache")


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


def _top_p_filter(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero the tail outside each row's nucleus ``top_p`` (the top token always stays)."""
    if bool((top_p >= 1.0).all()):
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p
    sorted_p = torch.where(before < top_p[:, None], sorted_p, torch.zeros_like(sorted_p))
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return filtered / filtered.sum(-1, keepdim=True)


def _cut_at_stop(text: str, stops: list[str]) -> str:
    """Text up to (not including) the earliest stop string, as OpenAI's API returns it."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def tokens_per_second(result: GenerationResult) -> float:
    """Generated tokens per second of decode time (0 when nothing was timed)."""
    ms = result.timings_ms.get("prefill_ms", 0.0) + result.timings_ms.get("decode_ms", 0.0)
    return result.completion_tokens / (ms / 1000) if ms > 0 else math.inf
