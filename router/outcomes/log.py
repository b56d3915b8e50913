"""The outcome stream: every served request's decision and result, appended to Redis.

``append`` never talks to Redis and never raises: it gives the outcome its own
``outcome_id``, writes it to the local spool (``router/outcomes/spool.py``; appends waiting
together share one fsync) and returns once the spool has it on disk. A background task
replays the spool into the stream, oldest first, and lets the spool forget what Redis
acknowledged; it backs off exponentially while Redis is unreachable or full. Each write is
idempotent by ``outcome_id`` (a Lua script sets ``<prefix>:outcome-seen:<outcome_id>``
with NX and a TTL and appends only if it was not set), so replaying after a crash between
the append and the acknowledgement writes nothing twice.

Nothing is trimmed unless ``maxlen`` is set (then Redis drops the oldest entries whether
or not anything read them). When Redis refuses writes for lack of memory (``maxmemory``
with ``noeviction``), outcomes stay in the spool, ``acr_redis_full`` is 1 and
``problems()`` (the readiness check) says so. Only if the spool itself cannot be written
(disk full, read-only) are outcomes held in a bounded memory queue, and past its bound
dropped, counted in ``acr_outcomes_dropped_total`` and logged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from policies.fail_open import raise_if_cancelled
from router.metrics import Metrics
from router.outcomes.spool import OutcomeSpool, Spooled

log = logging.getLogger("acr.outcomes")

#: outcomes written to Redis per pipeline round trip
BATCH = 256
#: seconds between looks for spools of dead processes to adopt
ADOPT_EVERY_S = 30.0

# SET seen-key NX EX ttl, then XADD only if it was not there: atomic, so a replayed outcome
# is written once. Under maxmemory the SET fails first (OOM) and nothing is written.
WRITE_ONCE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return false end
local args = {'XADD', KEYS[2]}
if ARGV[2] ~= '' then
  args[#args + 1] = 'MAXLEN'; args[#args + 1] = '~'; args[#args + 1] = ARGV[2]
end
args[#args + 1] = '*'
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
return redis.call(unpack(args))
"""


class RedisFullError(RedisError):
    """Redis refused a write because it reached ``maxmemory`` (policy ``noeviction``)."""


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    """Stream field values must be flat strings; nested values are stored as JSON."""
    out: dict[str, str] = {}
    for k, v in fields.items():
        if v is None:
            out[k] = ""
        elif isinstance(v, str):
            out[k] = v
        elif isinstance(v, bool | int | float):
            out[k] = json.dumps(v)
        else:
            out[k] = json.dumps(v, separators=(",", ":"), default=str)
    return out


def _is_oom(exc: BaseException) -> bool:
    return "OOM" in str(exc) or "maxmemory" in str(exc)


class OutcomeLog:
    """Appends outcome records to the stream ``stream`` through the spool ``spool``.

    ``maxlen`` (None: never trim) caps the stream approximately; ``dedup_ttl_s`` is how long
    Redis remembers an outcome id; ``memory_max`` bounds the queue used only while the spool
    cannot be written. Call ``start`` from the event loop (``append`` also starts it) and
    ``stop`` at shutdown.
    """

    def __init__(
        self,
        client: Redis,
        *,
        stream: str,
        spool: OutcomeSpool,
        metrics: Metrics,
        key_prefix: str = "acr",
        maxlen: int | None = None,
        dedup_ttl_s: int = 86_400,
        memory_max: int = 10_000,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.client = client
        self.stream = stream
        self.spool = spool
        self.metrics = metrics
        self.key_prefix = key_prefix
        self.maxlen = maxlen
        self.dedup_ttl_s = dedup_ttl_s
        self.memory: collections.deque[dict[str, str]] = collections.deque()
        self.memory_max = memory_max
        self.backoff_max_s = backoff_max_s
        self.dropped = 0
        self.duplicates = 0
        self.full_reason: str | None = None
        self.spool_error: str | None = None
        self._script = client.register_script(WRITE_ONCE)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._opening: asyncio.Task[None] | None = None
        self._to_spool: list[tuple[dict[str, str], asyncio.Future[None]]] = []

    @property
    def pending(self) -> int:
        """Outcomes not yet in Redis (in the spool, or in memory when it failed)."""
        return self.spool.pending + len(self.memory)

    def start(self) -> None:
        """Open the spool (in a thread) and start the flusher; call from a running loop."""
        loop = asyncio.get_running_loop()
        if self._opening is None:
            self._opening = loop.create_task(self._open())
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._flush_loop())

    async def _open(self) -> None:
        try:
            await asyncio.to_thread(self.spool.open)
            if self.spool_error is not None:
                log.warning("outcome spool in %s usable again", self.spool.directory)
            self.spool_error = None
        except Exception as exc:  # noqa: BLE001 - appends wait on this: it must not die
            error = f"outcome spool in {self.spool.directory} unusable: {exc}"
            if error != self.spool_error:
                log.error("%s; outcomes wait in memory only", error)
            self.spool_error = error
        self._gauge()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The log started for the block (its spool replayed) and stopped after it, its
        outcomes flushed: what an app's lifespan runs."""
        self.start()
        try:
            yield
        finally:
            await self.stop()

    async def stop(self, flush_timeout_s: float = 2.0) -> None:
        """Finish spool writes, try to write what waits to Redis, stop the flusher and
        close the spool; what is not written stays in the spool for the next start."""
        try:
            if self._writer is not None:
                await asyncio.wait_for(asyncio.shield(self._writer), timeout=flush_timeout_s)
            await asyncio.wait_for(self.flush(), timeout=flush_timeout_s)
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning(
                "stopping with %d outcomes not in redis (%s); the spool keeps them",
                self.pending,
                type(exc).__name__,
            )
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self.spool.close)
        self._opening = None

    async def ping(self) -> bool:
        """Whether Redis answers and takes writes now (see ``problems``)."""
        return not await self.problems()

    async def problems(self) -> dict[str, str]:
        """What keeps outcomes from reaching Redis, by part (empty: ready)."""
        out: dict[str, str] = {}
        if self.spool_error is not None:
            out["outcome_spool"] = self.spool_error
        try:
            await self.client.ping()
        except (RedisError, OSError):
            out["redis"] = "unreachable"
            return out
        if self.full_reason is not None:
            out["redis"] = (
                f"full, refusing writes ({self.full_reason}); "
                f"{self.pending} outcomes wait in the spool"
            )
        return out

    async def append(self, fields: dict[str, Any]) -> str:
        """Record one outcome; returns its ``outcome_id`` once it is on disk (or, if the
        spool cannot be written, in memory). Never raises for Redis or disk failures."""
        entry = _encode(fields)
        if not entry.get("outcome_id"):
            entry["outcome_id"] = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        self.start()
        done: asyncio.Future[None] = loop.create_future()
        self._to_spool.append((entry, done))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_spool())
        # A cancelled request still gets its outcome written: the writer owns it now.
        await asyncio.shield(done)
        return entry["outcome_id"]

    async def _write_spool(self) -> None:
        """Group commit: every append that arrived while one fsync ran shares the next."""
        assert self._opening is not None
        await self._opening
        while self._to_spool:
            batch, self._to_spool = self._to_spool, []
            entries = [e for e, _ in batch]
            try:
                if self.spool_error is not None:
                    raise OSError(self.spool_error)
                await asyncio.to_thread(self.spool.append, entries)
            except Exception as exc:  # noqa: BLE001 - an outcome must not vanish with a bug
                if not isinstance(exc, OSError):
                    log.exception("outcome spool write failed")
                self._hold_in_memory(entries, exc)
            finally:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
            self._gauge()
            self._wake.set()

    def _hold_in_memory(self, entries: list[dict[str, str]], exc: BaseException) -> None:
        log.error("outcome spool write failed (%s); %d outcomes held in memory", exc, len(entries))
        for entry in entries:
            if len(self.memory) >= self.memory_max:
                lost = self.memory.popleft()
                self.dropped += 1
                self.metrics.outcomes_dropped.inc()
                log.error(
                    "outcome memory queue full (%d); dropped outcome %s (response id=%s)",
                    self.memory_max,
                    lost.get("outcome_id"),
                    lost.get("id"),
                )
            self.memory.append(entry)

    def _gauge(self) -> None:
        self.metrics.outcomes_buffered.set(self.pending)

    async def flush(self) -> int:
        """Write everything waiting to Redis in order; returns how many new entries the
        stream got. Raises the Redis error (``RedisFullError`` when Redis is out of
        memory) with the rest still waiting."""
        if self._opening is not None:
            await self._opening
        written = 0
        async with self._lock:
            while self.memory:
                applied, new, error = await self._write(list(itertools.islice(self.memory, BATCH)))
                for _ in range(applied):
                    self.memory.popleft()
                written += new
                if error is not None:
                    raise error
            while lines := await asyncio.to_thread(self.spool.read, BATCH):
                written += await self._write_spooled(lines)
        self._gauge()
        return written

    async def _write_spooled(self, lines: list[Spooled]) -> int:
        """Write spooled ``lines`` and let the spool forget those Redis has (a corrupt line
        goes with the entries around it); returns how many were new."""
        entries = [s.fields for s in lines if s.fields is not None]
        applied, new, error = await self._write(entries)
        upto = seen = 0
        for i, line in enumerate(lines):
            if line.fields is not None:
                if seen == applied:
                    break
                seen += 1
            upto = i + 1
        if upto:
            await asyncio.to_thread(self.spool.ack, lines[upto - 1].end, upto)
        self._gauge()
        if error is not None:
            raise error
        return new

    async def _write(
        self, entries: list[dict[str, str]]
    ) -> tuple[int, int, RedisError | OSError | None]:
        """Write ``entries`` in one pipeline, each at most once ever; returns how many
        Redis has now (a prefix), how many of them are new, and the error that stopped
        the rest (None when all went in)."""
        if not entries:
            return 0, 0, None
        maxlen = str(self.maxlen) if self.maxlen else ""
        async with self.client.pipeline(transaction=False) as pipe:
            for entry in entries:
                args: list[str] = [str(self.dedup_ttl_s), maxlen]
                for k, v in entry.items():
                    args += [k, v]
                keys = [f"{self.key_prefix}:outcome-seen:{entry['outcome_id']}", self.stream]
                await self._script(keys=keys, args=args, client=pipe)
            try:
                results = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as exc:
                return 0, 0, RedisFullError(str(exc)) if _is_oom(exc) else exc
        self.metrics.redis_up.set(1)
        applied = new = 0
        error: RedisError | OSError | None = None
        for result in results:
            if isinstance(result, Exception):
                error = RedisFullError(str(result)) if _is_oom(result) else RedisError(str(result))
                break
            applied += 1
            new += result is not None
        self._account(new, applied - new)
        return applied, new, error

    def _account(self, new: int, duplicates: int) -> None:
        self.metrics.outcomes_written.inc(new)
        self.metrics.outcomes_duplicates.inc(duplicates)
        self.duplicates += duplicates
        if new or duplicates:
            self.metrics.redis_full.set(0)
            if self.full_reason is not None:
                log.warning("redis takes outcome writes again")
            self.full_reason = None

    async def _flush_loop(self) -> None:
        delay = 0.05
        adopt_at = asyncio.get_running_loop().time() + ADOPT_EVERY_S
        while True:
            # A cancellation that a library turned into an error (and the handlers below
            # caught) still ends the loop: otherwise it outlives its event loop's shutdown.
            raise_if_cancelled()
            self._wake.clear()
            if not self.pending:
                if await self._woken(1.0):
                    continue
                adopt = asyncio.get_running_loop().time() >= adopt_at
                if adopt:
                    adopt_at += ADOPT_EVERY_S
                await self._idle_chores(adopt)
                continue
            before = self.pending
            try:
                n = await self.flush()
                if n:
                    log.info("wrote %d outcomes to redis", n)
                delay = 0.05
                if not n and self.pending >= before:  # nothing went: do not spin
                    await asyncio.sleep(delay)
            except RedisFullError as exc:
                self._refused(str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
            except (RedisError, OSError) as exc:
                self.metrics.redis_up.set(0)
                log.debug("outcome flush failed (%s); %d waiting", exc, self.pending)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
            except Exception:  # noqa: BLE001 - the flusher must outlive a bug
                log.exception("outcome flusher failed; retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)

    async def _woken(self, timeout_s: float) -> bool:
        """Whether an append woke the flusher within ``timeout_s``.

        ``asyncio.wait`` never swallows a cancellation of this task: on Python 3.11 both
        ``wait_for`` and ``asyncio.timeout`` can, when it arrives as the timeout fires, and
        this loop then outlived its event loop's shutdown (hung test teardowns)."""
        waiter = asyncio.ensure_future(self._wake.wait())
        try:
            done, _ = await asyncio.wait({waiter}, timeout=timeout_s)
        finally:
            waiter.cancel()
        return bool(done)

    async def _idle_chores(self, adopt: bool) -> None:
        """With nothing to write: retry a spool that failed to open, make the spool's
        offset durable and (every ``ADOPT_EVERY_S``) adopt the spools of dead processes."""
        if self.spool_error is not None:
            await self._open()
            return
        try:
            await asyncio.to_thread(self.spool.checkpoint)
            if adopt and await asyncio.to_thread(self.spool.adopt) > 0:
                self._gauge()
        except OSError as exc:
            log.warning("outcome spool upkeep failed: %s", exc)

    def _refused(self, reason: str) -> None:
        self.metrics.redis_up.set(1)
        self.metrics.redis_full.set(1)
        if self.full_reason is None:
            log.error(
                "redis refuses outcome writes (%s); %d outcomes wait in the spool",
                reason,
                self.pending,
            )
        self.full_reason = reason.splitlines()[0][:200]
