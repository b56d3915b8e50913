"""Train the bundled reasoning model from scratch (``python -m lab train-model``).

The bundle is two small GPT-2 experts that share one tokenizer and chat template: one
learns Game of 24 from exact traces (one of each puzzle's solutions per example, so that
sampling is diverse), the other scratchpad arithmetic (with a curriculum over the number of
operands). ``TransformersBackend`` sends each prompt to the expert its task token names.
Two experts, because one model trained on the mix was far worse at Game of 24 than one
trained on it alone for the same steps (best-of-32 on rows 900-999: 0.51 against 0.88).
The experts train side by side, one process and half the cores each, until the longer one
takes every core at a fixed step; steps and thread schedule are fixed, so a seed reproduces
the weights on the same machine type.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from backends.bundled.tokenizer import build_tokenizer
from lab.bundled.data import Mixture, game24_splits
from lab.bundled.model_card import write_model_card


@dataclass(frozen=True)
class Recipe:
    """Model shape and optimisation settings (the model card records them)."""

    n_layer: int = 4
    n_embd: int = 192
    n_head: int = 6
    n_positions: int = 192
    steps: int = 1500
    batch_size: int = 48
    lr: float = 2e-3
    warmup_steps: int = 30
    weight_decay: float = 0.1
    min_lr_fraction: float = 0.05
    p_game24: float = 0.75
    # Training progress by which the arithmetic operand-count mix is uniform (None: it keeps
    # favouring few operands to the end).
    arithmetic_uniform_from: float | None = 0.5
    # Scratchpads fold the terms in a random order (diverse paths for majority voting).
    arithmetic_random_order: bool = False
    # The chance that a two-digit product is written as tens and units (needs random order):
    # a one-line product repeats its slip in every sample. ``arithmetic_inline_split`` writes
    # the parts and their sum on the product's own line.
    arithmetic_split_products: float = 0.0
    arithmetic_inline_split: bool = False
    # bf16 autocast halves step time on CPUs with AVX512-BF16/AMX; weights stay float32.
    bf16_autocast: bool = True
    # Attention kernel for training only (serving picks its own). PyTorch's CPU
    # flash-attention backward (SDPA) took half of every step; with eager attention a step
    # alone on one thread fell from 1.24 to 0.63 s (Game of 24) and 0.58 to 0.35 s
    # (arithmetic, late operand mix).
    attn_implementation: str = "eager"
    # The MLP activation, saved in config.json (serving uses it too). GPT-2's default
    # "gelu_new" is a chain of Python-level muls, pow, tanh and adds, each a pass over the
    # widest activations: with it a step alone on one thread took 0.33-0.37 s (arithmetic) and
    # 0.63 s (Game of 24); PyTorch's fused exact GELU took 0.21 and 0.43 s.
    activation_function: str = "gelu"


TINY = Recipe(n_layer=1, n_embd=32, n_head=2, steps=4, batch_size=4, warmup_steps=1)

# Expert name -> (task token its prompts start with, recipe). Steps and batch sizes were
# chosen from GPU sweeps: Game of 24 reaches best-of-32 0.88-0.90 on rows 900-999 at 800
# steps of 64 (0.67 at 600); the arithmetic format only "clicks" after ~2,000 small steps.
# Arithmetic folds its terms in a random order per example: left-to-right only, samples
# repeated the same carry slip and majority voting gained nothing; with random orders and
# 3,500 steps (`python -m lab trial-recipe`), greedy rose at 3-6 operands and voting gained
# ~9 points.
# Every two-digit product is written as units and tens parts and their sum on its line: as
# one line (`3700*7=1150`) greedy got 0.76 of two-operand products right and every sample
# repeated the slip; split, greedy gets 0.98 of them, at 6% more tokens per scratchpad.
EXPERTS: dict[str, tuple[str, Recipe]] = {
    "game24": ("<24>", Recipe(steps=800, batch_size=64, p_game24=1.0)),
    "arithmetic": (
        "<calc>",
        Recipe(
            steps=3500,
            batch_size=32,
            p_game24=0.0,
            arithmetic_random_order=True,
            arithmetic_split_products=1.0,
            arithmetic_inline_split=True,
        ),
    ),
}
DEFAULT_EXPERT = "game24"

# Side by side on 2 cores Game of 24 ends first; the expert named here then takes every core
# from this step on. The step is fixed, not "when the other ends", because the thread count
# changes how floats are summed: a fixed step keeps the weights a function of the seed.
# Measured with `python -m lab train-model` on 2 cores (GELU activation): with one-line
# products Game of 24 ended after 324 s, near arithmetic step 1,800; with split products
# (slower steps) it ends after 302-323 s, near step 1,500, so one core idles for about 40 s
# before the handoff.
# Moving the step changes the weights, so it is changed only with a retraining.
ALL_CORES_FROM_STEP: dict[str, int] = {"arithmetic": 1700}


def _lr_at(step: int, r: Recipe) -> float:
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    t = (step - r.warmup_steps) / max(1, r.steps - r.warmup_steps)
    return r.lr * (r.min_lr_fraction + (1 - r.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t)))


def _batch(tokenizer: Any, pairs: list[tuple[str, str]], eos: int) -> tuple[Any, Any, Any]:
    import torch

    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    replies = tokenizer([r for _, r in pairs], add_special_tokens=False)["input_ids"]
    seqs = [p + r + [eos] for p, r in zip(prompts, replies, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (s, p) in enumerate(zip(seqs, prompts, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        # Loss only on the response (and its end-of-sequence token), never the prompt.
        labels[i, len(p) : len(s)] = torch.tensor(s[len(p) :])
    return ids, mask, labels


def train_model(
    output_dir: Path,
    data_csv: Path,
    seed: int = 0,
    steps: int | None = None,
    tiny: bool = False,
    progress: bool = True,
    recipe: Recipe | None = None,
    device: str = "cpu",
    threads: int = 0,
    all_cores_from_step: int | None = None,
    label: str = "train-model",
    plain_progress: bool = False,
) -> dict[str, Any]:
    """Train one checkpoint and save it (safetensors + tokenizer + chat template).

    Returns training metrics (steps, seconds, final loss, parameters) and writes them to
    ``training.json``. ``device`` may be ``cuda`` for recipe sweeps; the shipped weights
    are trained on CPU. ``threads`` 0 means all cores; ``all_cores_from_step`` switches to
    all cores at that step (when another job sharing the machine will have ended).
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    r = recipe or (TINY if tiny else Recipe())
    if steps is not None:
        r = Recipe(**{**asdict(r), "steps": steps})
    torch.manual_seed(seed)
    all_cores = max(1, os.cpu_count() or 1)
    torch.set_num_threads(threads if threads > 0 else all_cores)
    # (first step, threads) for each change of thread count; the card records it.
    thread_schedule = [(0, torch.get_num_threads())]
    tokenizer = build_tokenizer()
    eos = int(tokenizer.eos_token_id)
    cfg = GPT2Config(
        vocab_size=len(tokenizer.get_vocab()),
        n_positions=r.n_positions,
        n_embd=r.n_embd,
        n_layer=r.n_layer,
        n_head=r.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=int(tokenizer.pad_token_id),
        activation_function=r.activation_function,
    )
    model = GPT2LMHeadModel._from_config(cfg, attn_implementation=r.attn_implementation)
    model.to(torch.device(device))  # type: ignore[arg-type]  # transformers stubs
    params = sum(p.numel() for p in model.parameters())
    splits = game24_splits(data_csv)
    mix = Mixture(
        splits.train,
        seed=seed,
        p_game24=r.p_game24,
        uniform_from=r.arithmetic_uniform_from,
        random_fold_order=r.arithmetic_random_order,
        split_products=r.arithmetic_split_products,
        inline_split=r.arithmetic_inline_split,
    )
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": r.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=r.lr,
        betas=(0.9, 0.98),
    )
    losses: list[float] = []
    t0 = time.time()
    model.train()
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress or plain_progress) as bar:
        # A bar only redraws on a terminal; under nohup or CI, print a line every 5%.
        plain = progress and (plain_progress or not bar.console.is_terminal)
        task = bar.add_task("train", total=r.steps, loss=float("nan"))
        for step in range(r.steps):
            if step == all_cores_from_step and torch.get_num_threads() != all_cores:
                torch.set_num_threads(all_cores)
                thread_schedule.append((step, all_cores))
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, r)
            pairs = mix.batch(step / max(1, r.steps), r.batch_size)
            ids, mask, labels = _batch(tokenizer, pairs, eos)
            with torch.autocast(
                torch.device(device).type, dtype=torch.bfloat16, enabled=r.bf16_autocast
            ):
                loss = model(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    labels=labels.to(device),
                ).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            recent = sum(losses[-20:]) / len(losses[-20:])
            bar.update(task, advance=1, loss=recent)
            if plain and (step + 1) % max(1, r.steps // 20) == 0:
                print(
                    f"{label}: step {step + 1}/{r.steps} loss {recent:.3f} "
                    f"{time.time() - t0:.0f} s",
                    flush=True,
                )
    seconds = time.time() - t0
    model.eval()
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    metrics = {
        "seed": seed,
        "steps": r.steps,
        "train_seconds": round(seconds, 1),
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "parameters": params,
        "train_puzzles": len(splits.train),
        "heldout_puzzles": len(splits.heldout),
        "recipe": asdict(r),
        "torch_threads": thread_schedule[0][1],
        "thread_schedule": thread_schedule,
    }
    (output_dir / "training.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _train_expert(args: dict[str, Any]) -> dict[str, Any]:
    # Top-level so that a spawned worker process can import it.
    return train_model(**args)


def train_bundle(
    output_dir: Path,
    data_csv: Path,
    seed: int = 0,
    tiny: bool = False,
    progress: bool = True,
    device: str = "cpu",
    parallel: bool | None = None,
) -> dict[str, Any]:
    """Train every expert into ``output_dir/<name>``, write ``bundle.json`` and the card.

    ``parallel`` (default: on CPU with at least 2 cores) trains the experts at once in
    spawned processes with half the cores each: on 2 cores that finished sooner than one
    after the other, since small matrices use two threads poorly; once the shorter expert has
    ended, the longer one takes every core (``ALL_CORES_FROM_STEP``). Returns the metrics.
    """
    cores = os.cpu_count() or 1
    if parallel is None:
        parallel = device == "cpu" and cores >= 2
    jobs = []
    for name, (_, recipe) in EXPERTS.items():
        r = replace(TINY, p_game24=recipe.p_game24) if tiny else recipe
        jobs.append(
            {
                "output_dir": output_dir / name,
                "data_csv": data_csv,
                "seed": seed,
                "recipe": r,
                "device": device,
                "label": name,
                "threads": max(1, cores // len(EXPERTS)) if parallel else 0,
                "all_cores_from_step": None if tiny else ALL_CORES_FROM_STEP.get(name),
                "progress": progress,
                # Two rich bars from two processes would garble each other: print lines.
                "plain_progress": parallel,
            }
        )
    t0 = time.time()
    if parallel:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=len(jobs), mp_context=ctx) as pool:
            results = list(pool.map(_train_expert, jobs))
    else:
        results = [_train_expert(j) for j in jobs]
    wall = time.time() - t0
    bundle = {
        "default": DEFAULT_EXPERT,
        "routes": {token: name for name, (token, _) in EXPERTS.items()},
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    from backends.transformers_backend import BUNDLE_FILE  # torch: imported only here

    (output_dir / BUNDLE_FILE).write_text(json.dumps(bundle, indent=2))
    metrics = {
        "seed": seed,
        "wall_seconds": round(wall, 1),
        "parallel": parallel,
        "cpu_cores": cores,
        "experts": dict(zip(EXPERTS, results, strict=True)),
    }
    (output_dir / "training.json").write_text(json.dumps(metrics, indent=2))
    write_model_card(output_dir, metrics, None)
    return metrics


if __name__ == "__main__":  # pragma: no cover - manual entry point
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/bundled-model")
    csv = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("../shared/data/game24.csv")
    print(train_bundle(out, csv))
