"""Loading a local transformers checkpoint onto a device, for ``TransformersBackend``.

Three kinds of checkpoint load here, without hub access: a checkpoint directory
(``load_directory``), a bundle of experts that share one tokenizer (``load_bundle``; its
``bundle.json`` names a default sub-directory and maps task tokens to sub-directories), and a
``.gguf`` file (``load_gguf``, dequantized by transformers' GGUF loader). ``resolve_device``
and ``resolve_dtype`` read the ``model.device`` and ``model.dtype`` settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from backends.base import BackendError

#: the file that makes a checkpoint directory a bundle of experts
BUNDLE_FILE = "bundle.json"


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


def load_directory(
    p: Path, dev: torch.device, dtype: str
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """(model on ``dev``, tokenizer) of the checkpoint directory ``p``."""
    tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
    return load_model(p, dev, dtype), tokenizer


def load_gguf(
    p: Path, dev: torch.device, dtype: str
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """(model on ``dev``, tokenizer) of the ``.gguf`` file ``p``; raises ``BackendError``
    (not retryable) when it cannot be read, e.g. without the ``gguf`` package."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        model = AutoModelForCausalLM.from_pretrained(
            p.parent, gguf_file=p.name, dtype=resolve_dtype(dtype, dev)
        )
    except (ImportError, OSError, ValueError) as exc:
        raise BackendError(
            f"cannot load the GGUF checkpoint {p.name!r}: {exc} (it needs the 'gguf' "
            "package: pip install 'adaptive-compute-router[gguf]')",
            retryable=False,
        ) from exc
    return model.to(dev), tokenizer  # type: ignore[arg-type]


def load_bundle(
    p: Path, dev: torch.device, dtype: str
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, dict[int, torch.nn.Module]]:
    """(default model, the shared tokenizer, experts by the id of the task token that routes
    to them) of the bundle directory ``p``; a sub-directory routed to by several tokens is
    loaded once. Raises ``BackendError`` (not retryable) for a malformed ``bundle.json``."""
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
    loaded = {default: load_model(p / default, dev, dtype)}
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
            loaded[sub] = load_model(p / sub, dev, dtype)
        experts[token_id] = loaded[sub]
    return loaded[default], tokenizer, experts


def load_model(path: Path, dev: torch.device, dtype: str) -> torch.nn.Module:
    """The causal LM of the checkpoint directory ``path``, in ``dtype``, on ``dev``."""
    model = AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, dtype=resolve_dtype(dtype, dev)
    )
    return model.to(dev)  # type: ignore[arg-type]
