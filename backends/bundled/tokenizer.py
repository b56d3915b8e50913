"""The bundled model's tokenizer: characters, plus four multi-character tokens.

It is a ``tokenizers`` WordLevel model wrapped in ``PreTrainedTokenizerFast`` so it saves
and loads through ``AutoTokenizer`` like any checkpoint's. The chat template (Jinja, stored
in the tokenizer config) turns a user message into the model's prompt with the same logic
as ``tasks.detect.model_prompt``.
"""

from __future__ import annotations

from typing import Any

SPECIALS = ["<pad>", "<eos>", "<unk>"]
MERGED = ["<24>", "<calc>", "(left: ", "Answer: "]
CHARS = list("0123456789+-*/=() \n")

# Mirrors tasks.detect.model_prompt; str methods are what Jinja's sandbox allows.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(t='') -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}"
    "{%- set ns.t = m['content'] | trim -%}{%- endif -%}{%- endfor -%}"
    "{%- set t = ns.t -%}"
    "{%- set low = t.lower().rstrip('.') -%}"
    "{%- if low.startswith('use ') and low.endswith(' to make 24') -%}"
    "{%- set body = t[4:(low | length) - 11] -%}{%- else -%}{%- set body = t -%}{%- endif -%}"
    "{%- set parts = body.split() -%}"
    "{%- set ns.ok = (parts | length) == 4 -%}"
    "{%- for p in parts -%}{%- if not p.isdigit() or (p | int) < 1 or (p | int) > 13 -%}"
    "{%- set ns.ok = false -%}{%- endif -%}{%- endfor -%}"
    "{%- if ns.ok -%}"
    "<24> {{ parts | map('int') | sort | join(' ') }}{{ '\\n' }}"
    "{%- else -%}"
    "{%- if t.lower().startswith('what is ') -%}{%- set c = t[8:] -%}{%- else -%}"
    "{%- set c = t -%}{%- endif -%}"
    "{%- set c = c.rstrip('?').replace(' ', '') -%}"
    "{%- if c.replace('+', '').replace('-', '').replace('*', '').isdigit() -%}"
    "<calc> {{ c }}{{ '\\n' }}"
    "{%- else -%}"
    "<calc> {{ t }}{{ '\\n' }}"
    "{%- endif -%}{%- endif -%}"
)


def vocab() -> dict[str, int]:
    """Token -> id; specials first so ``<pad>`` is 0 and ``<eos>`` is 1."""
    tokens = SPECIALS + MERGED + CHARS
    return {t: i for i, t in enumerate(tokens)}


def build_tokenizer() -> Any:
    """A fresh ``PreTrainedTokenizerFast`` with the chat template set."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=vocab(), unk_token="<unk>"))
    merged = "|".join(m.replace("(", r"\(") for m in MERGED)
    # Every merged token, else every single character (newline included), is one piece.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"{merged}|[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 192
    return fast
