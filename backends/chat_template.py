"""A model's real chat template and tokenizer, read from a local tokenizer directory or GGUF.

The router uses it to talk to a raw-completions endpoint (``/v1/completions``) exactly as the
server's own chat endpoint would: ``render()`` turns chat messages into the prompt text the
model was trained on (so a partial answer can be appended and continued), and
``count_tokens()`` counts tokens with the model's own tokenizer (budgets, context limits).

Checked against llama-cpp-python's server with SmolLM2-135M-Instruct (GGUF): the rendered
prompt sent to ``/v1/completions`` gives the same ``usage.prompt_tokens``, token ids and greedy
text as the messages sent to ``/v1/chat/completions``.

transformers is a heavy, optional dependency: it is imported only inside ``from_path``.
Reading a ``.gguf`` file also needs the ``gguf`` package (``pip install 'gguf>=0.10'``) and
takes 7-17 s (the vocabulary is converted), so ``from_path`` keeps the converted tokenizer
in a cache folder (``$ACR_CACHE_DIR/tokenizers/<key>``, default ``~/.cache/acr/tokenizers``)
and loads it from there next time in under a second; ``save()`` writes such a directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
log = logging.getLogger("acr.chat_template")

VALID_PATHS = (
    "a local Hugging Face tokenizer directory (tokenizer.json or tokenizer.model, "
    "tokenizer_config.json, with a chat template) or a local .gguf file"
)


class ChatTemplate:
    """A chat template bound to the tokenizer it belongs to.

    Build one with ``ChatTemplate.from_path(path)``. ``source`` is the path it came from.
    """

    def __init__(self, tokenizer: Any, source: str) -> None:
        """Wrap a loaded transformers tokenizer that has a ``chat_template``.

        Prefer ``from_path``; this constructor exists for callers that already hold a
        tokenizer. Raises ``ValueError`` when the tokenizer has no chat template.
        """
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"{source}: the tokenizer has no chat template (tokenizer.chat_template is "
                f"empty); a chat template is needed to render messages. Valid: {VALID_PATHS}"
            )
        self._tokenizer = tokenizer
        self.source = source

    @classmethod
    def from_path(
        cls, path: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None
    ) -> ChatTemplate:
        """Load the tokenizer and chat template at ``path``, offline (``local_files_only``).

        ``path`` is a tokenizer directory or a ``.gguf`` file. Returns the ``ChatTemplate``.
        Converting a GGUF's vocabulary takes 7-17 s, so the converted tokenizer is saved under
        ``cache_dir`` (default ``tokenizer_cache_dir()``) in a folder keyed by the file's
        resolved path, size and mtime, and loaded from there next time (under a second); a
        cache that cannot be read or written is skipped. Raises ``ValueError`` naming the
        path, what was wrong and what is valid when the path does not exist, is neither
        kind, cannot be read as a tokenizer, or has no chat template; ``ImportError`` when
        transformers (or, for GGUF, ``gguf``) is missing.
        """
        target = Path(path).expanduser()
        is_gguf = _check_path(target)
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:  # pragma: no cover - transformers is a core dependency
            raise ImportError("ChatTemplate needs transformers (pip install transformers)") from exc
        if not is_gguf:
            return cls(_load_tokenizer(AutoTokenizer, target, str(target)), str(target))
        _require_gguf(target)
        cached = gguf_cache_path(target, cache_dir)
        tokenizer = _load_cached(AutoTokenizer, cached)
        if tokenizer is None:
            tokenizer = _load_tokenizer(
                AutoTokenizer, target, str(target.parent), gguf_file=target.name
            )
            _store_cached(tokenizer, cached)
        return cls(tokenizer, str(target))

    @property
    def template(self) -> str:
        """The Jinja source of the chat template (the default one if there are several)."""
        template = self._tokenizer.chat_template
        if isinstance(template, Mapping):
            return str(template.get("default") or next(iter(template.values())))
        return str(template)

    @property
    def tokenizer(self) -> Any:
        """The underlying transformers tokenizer (for callers that need token ids)."""
        return self._tokenizer

    @property
    def bos_token(self) -> str | None:
        """The beginning-of-sequence token's text (SmolLM2: ``<|im_start|>``), or None."""
        return _token_text(self._tokenizer.bos_token)

    @property
    def eos_token(self) -> str | None:
        """The end-of-sequence token's text (SmolLM2: ``<|im_end|>``), or None.

        A raw completion of a rendered prompt ends when the model emits it; use it as a stop
        string where a server does not stop on it by itself.
        """
        return _token_text(self._tokenizer.eos_token)

    @property
    def adds_bos(self) -> bool:
        """True when tokenizing plain text prepends a BOS token by itself.

        Servers built on the same tokenizer (llama.cpp's ``/v1/completions``) then add BOS
        to a raw prompt too, so a rendered prompt that already starts with ``bos_token``
        would carry it twice; strip it from the text before sending it in that case.
        """
        tok = self._tokenizer
        bos_id = tok.bos_token_id
        if bos_id is None:
            return False
        with_special = tok("a", add_special_tokens=True)["input_ids"]
        plain = tok("a", add_special_tokens=False)["input_ids"]
        return len(with_special) > len(plain) and with_special[0] == bos_id

    def render(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The prompt text for ``messages`` exactly as the chat template formats it.

        ``messages`` are OpenAI-style ``{"role": ..., "content": ...}`` mappings. With
        ``add_generation_prompt`` the text ends with the assistant turn's opening, so it can
        be sent to ``/v1/completions`` as is, or with a partial answer appended to continue
        it. Returns the text (special tokens written out, not token ids). Raises
        ``ValueError`` for a malformed message or when the template rejects the
        conversation (some templates demand alternating roles).
        """
        turns: list[dict[str, str]] = []
        for index, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if not isinstance(role, str) or not isinstance(content, str):
                raise ValueError(
                    f"message {index} needs string 'role' and 'content', got {dict(message)!r}"
                )
            turns.append({"role": role, "content": content})
        try:
            text = self._tokenizer.apply_chat_template(
                turns, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        except Exception as exc:  # jinja2 TemplateError or the template's raise_exception
            raise ValueError(
                f"the chat template of {self.source} rejected the messages: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(text, str):
            raise ValueError(f"the chat template of {self.source} did not render a string")
        return text

    def count_tokens(self, text: str, add_special_tokens: bool = True) -> int:
        """The number of tokens ``text`` is, with special-token text (``<|im_start|>``) parsed.

        With ``add_special_tokens`` (default) a BOS the tokenizer adds by itself is counted,
        as llama.cpp does for ``/extras/tokenize/count`` and a raw prompt's
        ``usage.prompt_tokens``. Returns the count.
        """
        return len(self._tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the tokenizer and chat template to ``directory``; returns its path.

        ``ChatTemplate.from_path(directory)`` then loads in well under a second, against
        several seconds for converting a GGUF's vocabulary each time.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self._tokenizer.save_pretrained(str(out))
        return out

    def __repr__(self) -> str:
        return f"ChatTemplate(source={self.source!r})"


def _token_text(token: Any) -> str | None:
    """A special token as plain text (``AddedToken`` or str), None when unset."""
    if token is None:
        return None
    return str(getattr(token, "content", token))


def _require_gguf(target: Path) -> None:
    """Raise ``ImportError`` with the fix when the ``gguf`` package is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            f"reading the chat template from {str(target)!r} needs the 'gguf' package "
            "(pip install 'gguf>=0.10'); or pass a tokenizer directory instead"
        )


def tokenizer_cache_dir() -> Path:
    """Where converted GGUF tokenizers are kept: ``$ACR_CACHE_DIR/tokenizers`` when the
    variable is set, else ``~/.cache/acr/tokenizers``."""
    root = os.environ.get("ACR_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "acr") / "tokenizers"


def gguf_cache_path(gguf: Path, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder for ``gguf``'s converted tokenizer: a hash of its resolved path,
    size, mtime and the transformers version (a changed file or library misses the cache)."""
    import transformers

    resolved = gguf.resolve()
    stat = resolved.stat()
    key = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    folder = Path(cache_dir).expanduser() if cache_dir is not None else tokenizer_cache_dir()
    return folder / hashlib.sha256(key.encode()).hexdigest()[:32]


def _check_path(target: Path) -> bool:
    """Validate a ``from_path`` argument; returns True for a .gguf file, False for a
    tokenizer directory; raises ``ValueError`` (what is wrong, what is valid) otherwise."""
    if not target.exists():
        raise ValueError(f"chat template path {str(target)!r} does not exist; valid: {VALID_PATHS}")
    is_gguf = target.is_file() and target.suffix.lower() == ".gguf"
    if not (target.is_dir() or is_gguf):
        raise ValueError(
            f"chat template path {str(target)!r} is a file but not a .gguf "
            f"file; valid: {VALID_PATHS}"
        )
    if target.is_dir() and not any((target / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(
            f"chat template path {str(target)!r} is a directory without tokenizer files "
            f"(none of {', '.join(TOKENIZER_FILES)}); valid: {VALID_PATHS}"
        )
    return is_gguf


def _load_tokenizer(auto: Any, target: Path, location: str, **kwargs: str) -> Any:
    """``auto.from_pretrained(location, **kwargs)`` offline; a ``ValueError`` naming
    ``target`` when it cannot be loaded."""
    try:
        return auto.from_pretrained(location, local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        kind = "GGUF file" if kwargs.get("gguf_file") else "tokenizer directory"
        raise ValueError(
            f"chat template path {str(target)!r} could not be loaded as a {kind}: "
            f"{type(exc).__name__}: {exc}; valid: {VALID_PATHS}"
        ) from exc


def _load_cached(auto: Any, cached: Path) -> Any | None:
    """The tokenizer saved in ``cached``, or None when there is none (or it is unusable,
    e.g. written by an interrupted run: then it is converted again)."""
    if not (cached / "tokenizer_config.json").is_file():
        return None
    try:
        tokenizer = auto.from_pretrained(str(cached), local_files_only=True)
    except Exception as exc:  # any unreadable cache just means converting again
        log.warning("ignoring unreadable tokenizer cache %s: %s", cached, exc)
        return None
    return tokenizer if getattr(tokenizer, "chat_template", None) else None


def _store_cached(tokenizer: Any, cached: Path) -> None:
    """Save ``tokenizer`` to ``cached`` atomically (a temporary folder renamed into place,
    so a concurrent reader never sees half a cache); failures only cost the speed-up."""
    temp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temp, ignore_errors=True)
        tokenizer.save_pretrained(str(temp))
        if cached.exists():  # a stale or concurrent copy: replace it
            shutil.rmtree(cached, ignore_errors=True)
        os.replace(temp, cached)
    except OSError as exc:
        log.warning("could not cache the converted tokenizer in %s: %s", cached, exc)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
