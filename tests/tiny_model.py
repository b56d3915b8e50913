"""A tiny randomly initialised GPT-2 with a character tokenizer, saved like a checkpoint.

Backend tests use it so they exercise the real transformers loading and decode path in
milliseconds, independent of the bundled model's training.
"""

from __future__ import annotations

from pathlib import Path

CHARS = list("0123456789+-*/=() :\nabcdefghijklmnopqrstuvwxyzAWQ?")


def build_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a ~50k-parameter GPT-2 and its tokenizer to ``path``; returns ``path``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1}
    for c in CHARS:
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    from tokenizers import decoders

    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}Q:{{ m['content'] }}\n"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
    )
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(vocab),
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def build_tiny_reward_model(path: Path, seed: int = 0) -> Path:
    """Write a tiny randomly initialised GPT-2 sequence classifier (one logit: a reward
    model's shape) with the same character tokenizer; returns ``path``."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    build_tiny_checkpoint(path, seed)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    torch.manual_seed(seed + 1)
    cfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    GPT2ForSequenceClassification(cfg).save_pretrained(path)
    return path
