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
Reading checkpoints and bundles from disk is ``backends.checkpoint_loading``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from backends.base import (
    Backend,
    BackendError,
    ChatMessage,
    Completion,
    GenerationRequest,
    GenerationResult,
    StreamDelta,
)
from backends.checkpoint_loading import (
    BUNDLE_FILE,
    load_bundle,
    load_directory,
    load_gguf,
    resolve_device,
)
from backends.continuous_batching import ContinuousBatcher
from backends.decoding import Decoder, DecodeRow, TextStream, forward, output_cache

BATCHING_MODES = ("continuous", "static")


class TransformersBackend(Backend):
    """Runs any ``AutoModelForCausalLM`` checkpoint; the bundled model is the default.

    Use ``from_pretrained(path)``; ``generate`` is async (it runs the decode loop in a worker
    thread so the event loop stays free), ``stream`` yields one completion's text token by
    token (with continuous batching), and ``generate_batch_sync`` serves a whole batch of
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
        self.decoder = Decoder(tokenizer, self.device)
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

        ``path`` is a checkpoint directory, a bundle of experts (``bundle.json``), or a
        ``.gguf`` file (dequantized by transformers' GGUF loader; needs the ``gguf``
        package). ``batching`` is how concurrent ``generate`` calls share forward passes:
        ``continuous`` (rows join and leave between decode steps) or ``static`` (each call
        decodes on its own; callers batch with ``generate_batch_sync``).
        """
        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        hf_logging.disable_progress_bar()
        dev = resolve_device(device)
        p = Path(path)
        if p.is_file() and p.suffix == ".gguf":
            model, tokenizer = load_gguf(p, dev, dtype)
            backend = cls(model, tokenizer, name=name or p.stem)
        elif not p.is_dir():
            raise BackendError(
                f"model path {str(p)!r} is neither a checkpoint directory nor a .gguf file",
                retryable=False,
            )
        elif (p / BUNDLE_FILE).is_file():
            model, tokenizer, experts = load_bundle(p, dev, dtype)
            backend = cls(model, tokenizer, name=name or p.name, experts=experts)
        else:
            model, tokenizer = load_directory(p, dev, dtype)
            backend = cls(model, tokenizer, name=name or p.name)
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

    # -- Backend interface -------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Serve one request. With continuous batching it joins the running batch at the
        next decode step and returns as soon as its own rows end; with static batching it
        decodes alone in a worker thread (see ``generate_batch_sync``)."""
        if self.batching == "static":
            results = await asyncio.to_thread(self.generate_batch_sync, [request])
            return results[0]
        prompt = self._prompt_ids(request)
        capped = self._capped(request, prompt)
        fut = self._batcher().submit(prompt, capped, self._model_for(prompt))
        return await asyncio.wrap_future(fut)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """Serve one completion (``request.n`` must be 1) as it is decoded: text deltas as
        tokens become stable text, then a last delta with the same ``Completion`` (and
        ``prompt_tokens``) that ``generate`` gives; the deltas' texts concatenate to its
        ``text``. Closing the generator early cancels the request, so its row leaves the
        running batch at the next step. With static batching the completion is generated
        whole and sent as one delta (the base class behaviour)."""
        if request.n != 1:
            raise BackendError("streaming serves exactly one completion (n=1)", retryable=False)
        if self.batching == "static":
            async for delta in super().stream(request):
                yield delta
            return
        prompt = self._prompt_ids(request)
        capped = self._capped(request, prompt)
        loop = asyncio.get_running_loop()
        # The worker thread hands tokens over (None: the future completed); the callback is
        # called before the future completes, so every token precedes the end marker.
        queue: asyncio.Queue[int | None] = asyncio.Queue()

        def hand_over(item: int | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        fut = self._batcher().submit(prompt, capped, self._model_for(prompt), on_token=hand_over)
        fut.add_done_callback(lambda _f: _quietly(hand_over, None))
        deltas = _deltas(queue, fut, TextStream(self.tokenizer, capped.stop))
        try:
            async for delta in deltas:
                yield delta
        finally:
            fut.cancel()  # a no-op once it completed; else its row stops costing steps
            await deltas.aclose()

    def _batcher(self) -> ContinuousBatcher:
        """The continuous batcher, started on first use."""
        if self._continuous is None:
            self._continuous = ContinuousBatcher(self.decoder, self.name, max_rows=self.max_rows)
        return self._continuous

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
            return "\n".join(m.text for m in messages) + "\n"
        rendered = self.tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.text} for m in messages],
            tokenize=False,
            add_generation_prompt=True,
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
            with self.decoder.lock:
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
            dec = self.decoder
            ids = [dec.eos_id if dec.eos_id is not None else dec.pad_id]
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
        dec = self.decoder
        unique, pre, mask, positions = dec.prefill_unique(model, prompts)
        t_prefill = time.perf_counter()

        # Row r samples from prompt row_src[r]; copy the cache rows accordingly.
        row_src: list[int] = []
        rows: list[DecodeRow] = []
        for ri, (req, p) in enumerate(zip(requests, prompts, strict=True)):
            for _ in range(req.n):
                row_src.append(unique[tuple(p)])
                rows.append(DecodeRow(request=ri))
        src = torch.tensor(row_src, device=device)
        cache = output_cache(pre)
        cache.reorder_cache(src)
        logits = pre.logits[:, -1, :].float().index_select(0, src)
        attn = mask.index_select(0, src)
        pos = positions[:, -1].index_select(0, src)

        gens = [dec.generator(req) for req in requests]
        temps = torch.tensor([requests[r.request].temperature for r in rows], device=device)
        top_ps = torch.tensor([requests[r.request].top_p for r in rows], device=device)
        max_new = max(req.max_tokens for req in requests)
        active = list(range(len(rows)))  # row index of each live batch position

        for _step in range(max_new):
            owners = [rows[i].request for i in active]
            next_ids, logp, ent, margin = dec.sample(logits, temps, top_ps, owners, gens)
            keep: list[int] = []
            for b, row_i in enumerate(active):
                row = rows[row_i]
                row.append(int(next_ids[b]), float(logp[b]), float(ent[b]), float(margin[b]))
                if dec.finished(row, requests[row.request]):
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

    def _results(
        self,
        prompts: list[list[int]],
        requests: list[GenerationRequest],
        rows: list[DecodeRow],
        t0: float,
        t_prefill: float,
        t_end: float,
    ) -> list[GenerationResult]:
        per_req: list[list[Completion]] = [[] for _ in requests]
        for row in rows:
            per_req[row.request].append(self.decoder.completion(row, requests[row.request]))
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


async def _deltas(
    queue: asyncio.Queue[int | None], fut: Future[GenerationResult], text: TextStream
) -> AsyncGenerator[StreamDelta, None]:
    """Text deltas from the tokens arriving on ``queue`` until its end marker, then the rest
    of the final text and the completion itself; raises what the request failed with."""
    while True:
        item = await queue.get()
        tokens: list[int] = []
        ended = item is None
        if item is not None:
            tokens.append(item)
        # Several tokens may be waiting (a slow consumer): decode them in one go.
        while not ended and not queue.empty():
            nxt = queue.get_nowait()
            ended = nxt is None
            if nxt is not None:
                tokens.append(nxt)
        piece = text.push(tokens) if tokens else ""
        if piece:
            yield StreamDelta(text=piece)
        if ended:
            break
    result = fut.result()  # raises the request's error, or CancelledError if cancelled
    comp = result.completions[0]
    rest = text.finish(comp.text)
    if rest:
        yield StreamDelta(text=rest)
    yield StreamDelta(completion=comp, prompt_tokens=result.prompt_tokens)


def _quietly(hand_over: Callable[[int | None], None], item: int | None) -> None:
    """Hand ``item`` over unless the consumer's event loop has closed meanwhile."""
    with contextlib.suppress(RuntimeError):
        hand_over(item)


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
