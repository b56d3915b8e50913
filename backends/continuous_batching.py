"""Continuous batching for ``TransformersBackend``: rows join and leave between decode steps.

A static batch runs until its longest row ends, and a request that arrives meanwhile waits
for all of it before its own batch starts; under load that wait is most of a short
request's latency. Here one worker thread owns a running batch per model (per expert of a
bundle). Between two decode steps it prefills whatever requests arrived, left-pads their
KV caches to the running batch's length and appends them as new rows; a row that ends
(EOS, a stop string, ``max_tokens``) leaves at once, and a request whose rows have all
ended gets its result then, not when the batch drains. A request whose caller gave up (its
future was cancelled, e.g. by a deadline) leaves too, so abandoned work stops costing steps.
A request submitted with ``on_token`` (one row, ``n`` = 1) has every sampled token handed to
that callback right after its step, which is how ``TransformersBackend.stream`` streams.

The experts of a bundle take turns one step at a time, so a Game-of-24 prompt is never
queued behind a whole arithmetic decode. Sampling, stop handling and accounting are the
decoder's own (``backends.decoding.Decoder``): a seeded request draws from its
own generator, so its samples do not depend on what else shares the batch.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import torch

from backends.base import Completion, GenerationRequest, GenerationResult
from backends.decoding import Decoder, DecodeRow, forward, output_cache

#: called from the worker thread with each token sampled for a streamed request's one row
TokenCallback = Callable[[int], None]


# eq=False: jobs and batches are found and removed by identity; field equality would
# compare tensors (ambiguous) and futures.
@dataclass(eq=False)
class _Job:
    """One request from submission to its result."""

    prompt: list[int]
    request: GenerationRequest
    model: torch.nn.Module
    future: Future[GenerationResult]
    submitted: float
    generator: torch.Generator | None = None
    on_token: TokenCallback | None = None
    rows: list[DecodeRow] = field(default_factory=list)
    open_rows: int = 0
    admitted: float = 0.0
    prefill_ms: float = 0.0


@dataclass(eq=False)
class _Running:
    """A running batch (cohort) of one model: one entry per live row, tensors in order."""

    model: torch.nn.Module
    cache: Any
    attn: torch.Tensor  # [rows, cache length] 1 where the key is real, 0 for left padding
    pos: torch.Tensor  # [rows] position id of each row's last token
    logits: torch.Tensor  # [rows, vocab] next-token logits
    temps: torch.Tensor
    top_ps: torch.Tensor
    owners: list[_Job]
    rows: list[DecodeRow]


class ContinuousBatcher:
    """Serves ``submit`` calls from a worker thread that steps every running batch in turn.

    Newly admitted rows join a model's youngest cohort when the left padding that adds
    (rows times padded positions, which every later step pays for in attention and cache
    copies) stays within ``max_pad_row_tokens``; otherwise they start a cohort of their own,
    which costs one more forward call per step instead. On CPU one call of the bundled
    model costs about as much as 1,500 padded row-positions (3.1 ms for 16 rows at 40
    positions, 28 ms for 100 rows at 160); on a GPU a call costs far more than padding, so
    the default there merges nearly always. ``max_cohorts`` bounds the calls per step.

    ``max_rows`` caps the live rows of one model; a request that would exceed it waits for
    rows to leave (a request bigger than the cap runs alone). The thread starts on the first
    ``submit`` and stops on ``close``.
    """

    def __init__(
        self,
        decoder: Decoder,
        model_name: str,
        *,
        max_rows: int = 512,
        max_pad_row_tokens: int | None = None,
        max_cohorts: int = 8,
    ) -> None:
        self.decoder = decoder
        self.model_name = model_name
        self.max_rows = max_rows
        if max_pad_row_tokens is None:
            max_pad_row_tokens = 1_000_000 if decoder.device.type == "cuda" else 1_500
        self.max_pad_row_tokens = max_pad_row_tokens
        self.max_cohorts = max_cohorts
        self._cv = threading.Condition()
        self._pending: list[_Job] = []
        self._running: list[_Running] = []
        self._thread: threading.Thread | None = None
        self._stopped = False
        # OpenMP thread counts are per thread: the worker must be told the count its
        # creator was configured with, or it runs with the library default.
        self._threads = torch.get_num_threads()
        self.steps = 0  # decode steps taken, all models together (for tests and metrics)

    def submit(
        self,
        prompt: list[int],
        request: GenerationRequest,
        model: torch.nn.Module,
        on_token: TokenCallback | None = None,
    ) -> Future[GenerationResult]:
        """Queue one request (prompt ids already checked and ``max_tokens`` already capped);
        returns a future that the worker completes. Cancelling it drops the request's rows.

        ``on_token`` (only for ``request.n == 1``) is called from the worker thread with each
        token of the row as soon as it is sampled, before the future completes; it must be
        quick and must not block (hand the token to another thread). If it raises, the
        request is cancelled.
        """
        if on_token is not None and request.n != 1:
            raise ValueError("a token callback needs a request with n == 1")
        fut: Future[GenerationResult] = Future()
        job = _Job(prompt, request, model, fut, time.perf_counter(), on_token=on_token)
        with self._cv:
            if self._stopped:
                raise RuntimeError("the continuous batcher is closed")
            self._pending.append(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="acr-continuous-batching", daemon=True
                )
                self._thread.start()
            self._cv.notify()
        return fut

    def close(self) -> None:
        """Stop the worker; requests still queued or running fail with ``RuntimeError``."""
        with self._cv:
            self._stopped = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def live_rows(self) -> int:
        """Rows decoding right now, all models together."""
        return sum(len(r.rows) for r in self._running)

    def cohorts(self) -> int:
        """Running batches right now, all models together."""
        return len(self._running)

    # -- the worker ------------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_num_threads(self._threads)
        while True:
            with self._cv:
                while not self._stopped and not self._pending and not self._running:
                    self._cv.wait()
                if self._stopped:
                    self._fail_all(RuntimeError("the continuous batcher was closed"))
                    return
                pending, self._pending = self._pending, []
            waiting = self._admit(pending)
            if waiting:
                with self._cv:
                    self._pending[:0] = waiting
            for run in list(self._running):
                self._guarded_step(run)

    def _guarded_step(self, run: _Running) -> None:
        """Step ``run``; on an exception fail every request in it and drop it, so one bad
        step cannot stall the other requests or kill the worker."""
        try:
            with self.decoder.lock:
                self._step(run)
        except Exception as exc:  # noqa: BLE001 - handed to every waiter of this batch
            if run in self._running:
                self._running.remove(run)
            for job in {id(j): j for j in run.owners}.values():
                _fail(job, exc)

    def _fail_all(self, exc: Exception) -> None:
        jobs = list(self._pending)
        for running in self._running:
            jobs.extend(running.owners)
        self._pending, self._running = [], []
        for job in {id(j): j for j in jobs}.values():
            _fail(job, exc)

    def _admit(self, pending: list[_Job]) -> list[_Job]:
        """Prefill and append the jobs that fit; returns those that must wait."""
        waiting: list[_Job] = []
        by_model: dict[torch.nn.Module, list[_Job]] = {}
        for job in pending:
            if job.future.cancelled():
                continue
            by_model.setdefault(job.model, []).append(job)
        for model, jobs in by_model.items():
            live = sum(len(r.rows) for r in self._running if r.model is model)
            take: list[_Job] = []
            for job in jobs:
                if live and live + job.request.n > self.max_rows:
                    waiting.append(job)
                    continue
                take.append(job)
                live += job.request.n
            if take:
                self._guarded_admit(model, take)
        return waiting

    def _guarded_admit(self, model: torch.nn.Module, jobs: list[_Job]) -> None:
        try:
            with self.decoder.lock:
                self._prefill(model, jobs)
        except Exception as exc:  # noqa: BLE001 - only these jobs fail; the batch goes on
            for job in jobs:
                _fail(job, exc)

    @torch.inference_mode()
    def _prefill(self, model: torch.nn.Module, jobs: list[_Job]) -> None:
        dec = self.decoder
        device = dec.device
        t0 = time.perf_counter()
        unique, out, mask, positions = dec.prefill_unique(model, [j.prompt for j in jobs])
        src_list: list[int] = []
        owners: list[_Job] = []
        rows: list[DecodeRow] = []
        for job in jobs:
            job.generator = dec.generator(job.request)
            for _ in range(job.request.n):
                row = DecodeRow(request=0)
                job.rows.append(row)
                rows.append(row)
                owners.append(job)
                src_list.append(unique[tuple(job.prompt)])
            job.open_rows = job.request.n
        src = torch.tensor(src_list, device=device)
        cache = output_cache(out)
        cache.reorder_cache(src)
        new = _Running(
            model=model,
            cache=cache,
            attn=mask.index_select(0, src),
            pos=positions[:, -1].index_select(0, src),
            logits=out.logits[:, -1, :].float().index_select(0, src),
            temps=torch.tensor([j.request.temperature for j in owners], device=device),
            top_ps=torch.tensor([j.request.top_p for j in owners], device=device),
            owners=owners,
            rows=rows,
        )
        t1 = time.perf_counter()
        for job in jobs:
            job.admitted, job.prefill_ms = t1, (t1 - t0) * 1000
        cohorts = [i for i, r in enumerate(self._running) if r.model is model]
        if cohorts:
            young = self._running[cohorts[-1]]
            if (
                len(cohorts) >= self.max_cohorts
                or _merged_padding(young, new) <= self.max_pad_row_tokens
            ):
                self._running[cohorts[-1]] = _merge(young, new)
                return
        self._running.append(new)

    @torch.inference_mode()
    def _step(self, run: _Running) -> None:
        """Sample one token for every live row, retire finished rows and finished requests,
        then run one forward pass for the rows that go on."""
        model = run.model
        dec = self.decoder
        owner_ids = [id(j) for j in run.owners]
        gens = {id(j): j.generator for j in run.owners if j.generator is not None}
        next_ids, logp, ent, margin = dec.sample(run.logits, run.temps, run.top_ps, owner_ids, gens)
        keep: list[int] = []
        for b, (job, row) in enumerate(zip(run.owners, run.rows, strict=True)):
            if job.future.done():  # cancelled by its caller, or failed
                continue
            row.append(int(next_ids[b]), float(logp[b]), float(ent[b]), float(margin[b]))
            if job.on_token is not None and not _notify(job, row.tokens[-1]):
                continue  # its consumer is gone: the row leaves like a cancelled one
            if dec.finished(row, job.request):
                row.done = True
                job.open_rows -= 1
                if job.open_rows == 0:
                    self._finish(job)
            else:
                keep.append(b)
        self.steps += 1
        if not keep:
            self._running.remove(run)
            return
        if len(keep) < len(run.rows):
            idx = torch.tensor(keep, device=dec.device)
            run.cache.reorder_cache(idx)
            run.attn, run.pos, next_ids = run.attn[idx], run.pos[idx], next_ids[idx]
            run.temps, run.top_ps = run.temps[idx], run.top_ps[idx]
            run.owners = [run.owners[b] for b in keep]
            run.rows = [run.rows[b] for b in keep]
        _trim_left(run)
        run.attn = torch.cat([run.attn, run.attn.new_ones((len(run.rows), 1))], dim=1)
        run.pos = run.pos + 1
        out = forward(model, next_ids.view(-1, 1), run.attn, run.pos.view(-1, 1), run.cache)
        run.cache = output_cache(out)
        run.logits = out.logits[:, -1, :].float()

    def _finish(self, job: _Job) -> None:
        now = time.perf_counter()
        completions: list[Completion] = [
            self.decoder.completion(row, job.request) for row in job.rows
        ]
        result = GenerationResult(
            completions=completions,
            prompt_tokens=len(job.prompt),
            model=self.model_name,
            timings_ms={
                "queue_ms": (job.admitted - job.submitted) * 1000 - job.prefill_ms,
                "prefill_ms": job.prefill_ms,
                "decode_ms": (now - job.admitted) * 1000,
            },
        )
        # The caller may cancel between any check and this call (another thread): ignore.
        with contextlib.suppress(InvalidStateError):
            job.future.set_result(result)


def _notify(job: _Job, token: int) -> bool:
    """Hand ``token`` to ``job``'s callback; False (and the job cancelled) if it raised."""
    assert job.on_token is not None
    try:
        job.on_token(token)
    except Exception:  # noqa: BLE001 - e.g. the consumer's event loop closed
        job.future.cancel()
        return False
    return True


def _fail(job: _Job, exc: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):
        job.future.set_exception(exc)


def _layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer, each ``[rows, heads, length, head_dim]``."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))  # transformers 4.x


def _set_layers(cache: Any, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    if hasattr(cache, "layers"):
        for layer, (k, v) in zip(cache.layers, kv, strict=True):
            layer.keys, layer.values = k, v
    else:  # transformers 4.x
        cache.key_cache = [k for k, _ in kv]
        cache.value_cache = [v for _, v in kv]


def _pad_left(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _merge(old: _Running, new: _Running) -> _Running:
    """One batch holding ``old``'s rows then ``new``'s; the shorter side is left-padded
    (masked keys) to the longer one's cache length."""
    length = max(old.attn.shape[1], new.attn.shape[1])
    kv = [
        (
            torch.cat([_pad_left(ko, length, 2), _pad_left(kn, length, 2)], dim=0),
            torch.cat([_pad_left(vo, length, 2), _pad_left(vn, length, 2)], dim=0),
        )
        for (ko, vo), (kn, vn) in zip(_layers(old.cache), _layers(new.cache), strict=True)
    ]
    cache = copy.copy(old.cache)
    if hasattr(cache, "layers"):
        cache.layers = [copy.copy(layer) for layer in cache.layers]
    _set_layers(cache, kv)
    return _Running(
        model=old.model,
        cache=cache,
        attn=torch.cat([_pad_left(old.attn, length, 1), _pad_left(new.attn, length, 1)], dim=0),
        pos=torch.cat([old.pos, new.pos]),
        logits=torch.cat([old.logits, new.logits]),
        temps=torch.cat([old.temps, new.temps]),
        top_ps=torch.cat([old.top_ps, new.top_ps]),
        owners=old.owners + new.owners,
        rows=old.rows + new.rows,
    )


def _merged_padding(old: _Running, new: _Running) -> int:
    """Padded (masked) row-positions ``_merge(old, new)`` would hold, without merging."""
    length = max(old.attn.shape[1], new.attn.shape[1])
    real = int(old.attn.sum()) + int(new.attn.sum())
    return length * (old.attn.shape[0] + new.attn.shape[0]) - real


def _trim_left(run: _Running) -> None:
    """Drop cache columns that no live row attends to (padding left by rows that ended), so
    the cache is as long as the longest live row rather than growing for ever."""
    used = run.attn.any(dim=0).nonzero()
    lead = int(used[0]) if used.numel() else 0
    if lead == 0:
        return
    run.attn = run.attn[:, lead:]
    _set_layers(run.cache, [(k[:, :, lead:, :], v[:, :, lead:, :]) for k, v in _layers(run.cache)])
