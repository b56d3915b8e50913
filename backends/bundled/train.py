"""Train the bundled reasoning model from scratch (``acr train-model``).

A small GPT-2 learns both tasks from exact traces: Game of 24 (one of each puzzle's
solutions per example, so that sampling is diverse) and scratchpad arithmetic (with a
curriculum over the number of operands). The number of steps is fixed, so a seed
reproduces the weights; the default takes about 12 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backends.bundled.data import Mixture, game24_splits


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


TINY = Recipe(n_layer=1, n_embd=32, n_head=2, steps=4, batch_size=4, warmup_steps=1)


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
) -> dict[str, Any]:
    """Train, save (safetensors + tokenizer + chat template) and write ``MODEL_CARD.md``.

    Returns training metrics (steps, seconds, final loss, parameters).
    """
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    from transformers import GPT2Config, GPT2LMHeadModel

    from backends.bundled.tokenizer import build_tokenizer

    r = recipe or (TINY if tiny else Recipe())
    if steps is not None:
        r = Recipe(**{**asdict(r), "steps": steps})
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
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
    )
    model = GPT2LMHeadModel(cfg)
    params = sum(p.numel() for p in model.parameters())
    splits = game24_splits(data_csv)
    mix = Mixture(splits.train, seed=seed, p_game24=r.p_game24)
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
        TextColumn("[bold]train-model"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("train", total=r.steps, loss=float("nan"))
        for step in range(r.steps):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, r)
            pairs = mix.batch(step / max(1, r.steps), r.batch_size)
            ids, mask, labels = _batch(tokenizer, pairs, eos)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            bar.update(task, advance=1, loss=sum(losses[-20:]) / len(losses[-20:]))
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
        "torch_threads": torch.get_num_threads(),
    }
    (output_dir / "training.json").write_text(json.dumps(metrics, indent=2))
    from backends.bundled.model_card import write_model_card

    write_model_card(output_dir, metrics, None)
    return metrics


if __name__ == "__main__":  # pragma: no cover - manual entry point
    import sys

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/bundled-model")
    csv = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("../shared/data/game24.csv")
    print(train_model(out, csv))
