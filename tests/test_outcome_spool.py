"""The outcome spool: outcomes accepted while Redis is down survive a stop, a crash and a
kill -9 of the router process, and reach the stream exactly once, in order."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from policies.router_model import uninformed_model
from router.metrics import Metrics
from router.outcomes.log import OutcomeLog
from router.outcomes.spool import OutcomeSpool
from router.serving.embedded_redis import EmbeddedRedis, free_port

REPO = Path(__file__).resolve().parents[1]
STREAM = "acr:spool-test"


def _log(url: str, spool: OutcomeSpool, metrics: Metrics | None = None) -> OutcomeLog:
    client = Redis.from_url(url, socket_timeout=0.3, socket_connect_timeout=0.3)
    return OutcomeLog(
        client, stream=STREAM, spool=spool, metrics=metrics or Metrics(), backoff_max_s=0.1
    )


def _stream_ids(url: str, stream: str = STREAM) -> list[str]:
    client = sync_redis.Redis.from_url(url, decode_responses=True)
    try:
        return [f["id"] for _, f in client.xrange(stream)]
    finally:
        client.close()


async def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _close(log: OutcomeLog) -> None:
    await log.stop(flush_timeout_s=0.3)
    await log.client.aclose()


@pytest.mark.full
async def test_outcomes_appended_while_redis_is_down_reach_it_once_in_order_after_a_restart(
    tmp_path: Path,
) -> None:
    server = EmbeddedRedis(appendonly=True).start()
    try:
        first = _log(server.url, OutcomeSpool(tmp_path, "s"))
        await first.append({"id": "before"})
        await _until(lambda: first.pending == 0)
        server.kill()
        for i in range(5):
            await first.append({"id": f"down-{i}"})
        await _close(first)  # Redis still down: the spool keeps all five
        assert first.pending == 5
        server.start()  # the AOF brings "before" back
        second = _log(server.url, OutcomeSpool(tmp_path, "s"))
        second.start()
        await _until(
            lambda: _stream_ids(server.url) == ["before"] + [f"down-{i}" for i in range(5)]
        )
        await _until(lambda: second.pending == 0)
        assert second.duplicates == 0
        await _close(second)
        assert _stream_ids(server.url) == ["before"] + [f"down-{i}" for i in range(5)]
    finally:
        server.cleanup()


class CrashBeforeAck(OutcomeSpool):
    """A spool whose process dies after Redis took the outcomes, before it could forget
    them: ``ack`` fails."""

    def ack(self, end: int, count: int) -> None:
        raise OSError("simulated crash before the spool was cut")


async def test_a_replay_after_a_crash_between_stream_write_and_spool_cut_writes_nothing_twice(
    redis_url: str, tmp_path: Path
) -> None:
    crashing = _log(redis_url, CrashBeforeAck(tmp_path, "s"))
    ids = [f"r{i}" for i in range(4)]
    for rid in ids:
        await crashing.append({"id": rid})
    with pytest.raises(OSError, match="simulated crash"):
        await crashing.flush()
    assert _stream_ids(redis_url) == ids
    assert crashing.pending == 4, "the spool still holds what Redis acknowledged"
    # The crash: the flusher dies and the slot's lock goes with the process.
    assert crashing._task is not None
    crashing._task.cancel()
    crashing.spool.close()
    await crashing.client.aclose()

    metrics = Metrics()
    replay = _log(redis_url, OutcomeSpool(tmp_path, "s"), metrics)
    replay.start()
    await _until(lambda: replay.pending == 0 and replay.duplicates == 4)
    assert _stream_ids(redis_url) == ids
    assert metrics.outcomes_written._value.get() == 0
    assert metrics.outcomes_duplicates._value.get() == 4
    await _close(replay)


async def test_a_torn_last_line_is_dropped_and_a_corrupt_one_skipped(
    redis_url: str, tmp_path: Path
) -> None:
    down = _log(f"redis://127.0.0.1:{free_port()}/0", OutcomeSpool(tmp_path, "s"))
    for rid in ("a", "b"):
        await down.append({"id": rid})
    await _close(down)
    spool_file = down.spool.path
    with spool_file.open("ab") as f:  # a corrupt line between whole ones
        f.write(b'{"id": "garbage\n')
    later = _log(f"redis://127.0.0.1:{free_port()}/0", OutcomeSpool(tmp_path, "s"))
    await later.append({"id": "c"})
    await _close(later)
    with spool_file.open("ab") as f:  # the crash: a write cut short
        f.write(b'{"outcome_id":"torn","id":"to')
    size = spool_file.stat().st_size

    replay = _log(redis_url, OutcomeSpool(tmp_path, "s"))
    replay.start()
    await _until(lambda: _stream_ids(redis_url) == ["a", "b", "c"])
    await _until(lambda: replay.pending == 0)
    assert spool_file.stat().st_size < size
    assert b"torn" not in spool_file.read_bytes()
    await _close(replay)


async def test_appends_do_not_wait_for_a_redis_that_hangs(tmp_path: Path) -> None:
    # A listener that never accepts: connections open, commands never answer.
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)
    client = Redis(host="127.0.0.1", port=hang.getsockname()[1], socket_timeout=5)
    log = OutcomeLog(client, stream=STREAM, spool=OutcomeSpool(tmp_path, "s"), metrics=Metrics())
    try:
        await log.append({"id": "warm-up"})  # opens the spool and starts the flusher
        started = time.monotonic()
        for i in range(10):
            await log.append({"id": str(i)})
        assert time.monotonic() - started < 2.0, "appends waited for Redis"
        assert log.pending == 11
    finally:
        if log._task is not None:
            log._task.cancel()
        log.spool.close()
        hang.close()


async def test_concurrent_appends_share_one_fsync(tmp_path: Path) -> None:
    spool = OutcomeSpool(tmp_path, "s")
    calls = []
    real_append = spool.append

    def counting(entries: list[dict[str, str]]) -> None:
        calls.append(len(entries))
        real_append(entries)

    spool.append = counting  # type: ignore[method-assign]
    log = _log(f"redis://127.0.0.1:{free_port()}/0", spool)
    outcome_ids = await asyncio.gather(*(log.append({"id": str(i)}) for i in range(50)))
    assert len(set(outcome_ids)) == 50
    assert sum(calls) == 50 and len(calls) < 50, calls
    assert [s.fields["id"] for s in spool.read(100) if s.fields] == [str(i) for i in range(50)]
    await _close(log)


def test_replicas_sharing_a_directory_get_their_own_slots_and_adopt_a_dead_ones_outcomes(
    tmp_path: Path,
) -> None:
    a, b = OutcomeSpool(tmp_path, "s"), OutcomeSpool(tmp_path, "s")
    a.open()
    b.open()
    assert (a.slot, b.slot) == (0, 1)
    a.append([{"outcome_id": "1", "id": "x"}, {"outcome_id": "2", "id": "y"}])
    assert b.adopt() == 0, "a live replica's spool is its own"
    a.close()  # the replica dies; the kernel drops its lock
    assert b.adopt() == 2
    assert [s.fields for s in b.read(10)] == [
        {"outcome_id": "1", "id": "x"},
        {"outcome_id": "2", "id": "y"},
    ]
    assert not a.path.exists()
    b.close()


# --- kill -9 of a real router process ---------------------------------------------------


def _router(port: int, redis_url: str, tmp_path: Path, stream: str) -> subprocess.Popen[str]:
    """A router process that loads the model and waits for a line to start serving, with
    its outcome spool in ``tmp_path/spool``."""
    # An uninformed router model as JSON: the policy starts without importing scikit-learn.
    classifier = tmp_path / "router-model.json"
    if not classifier.exists():
        uninformed_model().save_json(classifier)
    cmd = [sys.executable, "-m", "tests.router_process", "--port", str(port), "--wait"]
    cmd += ["--redis-url", redis_url, "--spool-dir", str(tmp_path / "spool")]
    cmd += ["--stream", stream, "--classifier-path", str(classifier)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    return proc


def _serve(proc: subprocess.Popen[str], port: int, timeout_s: float = 120.0) -> None:
    """Let ``proc`` build its runtime and wait until it answers."""
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "loaded", "the router process failed to load"
    proc.stdin.write("go\n")
    proc.stdin.flush()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the router process exited"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("the router process did not answer")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.mark.full
def test_a_router_killed_with_outcomes_pending_during_a_redis_outage_loses_none(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    server = EmbeddedRedis(appendonly=True).start()
    stream = "acr:outcomes:kill"
    ports = [free_port(), free_port()]
    processes += [_router(port, server.url, tmp_path, stream) for port in ports]
    try:
        _serve(processes[0], ports[0])
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{ports[0]}/v1", api_key="unused", max_retries=0
        )

        def ask(i: int) -> str:
            raw = client.chat.completions.with_raw_response.create(
                model="acr-bundled",
                messages=[{"role": "user", "content": f"{i + 1} {i + 2} 3 4"}],
                max_tokens=16,
                extra_body={"acr": {"strategy": "single_pass"}},
            )
            assert raw.status_code == 200
            return raw.parse().id

        before = [ask(i) for i in range(2)]
        deadline = time.monotonic() + 10
        while set(_stream_ids(server.url, stream)) != set(before):
            assert time.monotonic() < deadline, "the outcomes did not reach Redis"
            time.sleep(0.05)
        server.kill()
        during = [ask(i) for i in range(12)]
        health = httpx.get(f"http://127.0.0.1:{ports[0]}/healthz").json()
        assert health["outcomes_buffered"] == 12, health
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait(timeout=10)

        server.start()  # the AOF keeps what was written before the outage
        _serve(processes[1], ports[1])  # the restart: same spool directory
        expected = before + during
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ids = _stream_ids(server.url, stream)
            if set(expected) <= set(ids):
                break
            time.sleep(0.1)
        counts = collections.Counter(_stream_ids(server.url, stream))
        assert {rid: counts[rid] for rid in expected} == {rid: 1 for rid in expected}
        assert list(counts) == expected, "the outcomes arrive in the order they were accepted"
    finally:
        server.cleanup()
