"""The outcome spool: a local append-only file holding every outcome until Redis has it.

One ``OutcomeSpool`` belongs to one process and one outcome stream. Its files live in
``directory`` and are named ``<stream>.<slot>``, where the slot is the first of
``.0.lock``, ``.1.lock``, ... this process can ``flock``; so replicas sharing a directory
never write each other's file, and a restarted process takes the slot (and the outcomes)
its killed predecessor left (the kernel drops a dead process's lock):

- ``<name>.spool``: a header line ``#acr-outcome-spool v1 <epoch>``, then one JSON object
  per line, appended and fsynced before ``append`` returns;
- ``<name>.offset``: ``<epoch> <byte offset>``, how far Redis has acknowledged the
  spool (replaced atomically by rename after each acknowledgement, fsynced only once the
  flusher is idle: a stale or lost offset only replays outcomes Redis already has, which
  the idempotent write skips);
- ``<name>.lock``: the slot's lock, never deleted.

When Redis has acknowledged everything and the file passed 1 MiB, it is cut back to a
fresh header with a new epoch (which invalidates the old offset); a long acknowledged
prefix under unacknowledged lines is dropped by rewriting the rest. A line torn by a crash
(no newline at the end) is cut off at open; a line that is not valid JSON is skipped and
logged. Spools of slots no live process holds are adopted: their unacknowledged lines are
copied into this spool, then removed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import threading
import weakref
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("acr.outcomes")

HEADER_PREFIX = b"#acr-outcome-spool v1 "
#: most spool slots in one directory (replicas of one stream on one machine or pod)
MAX_SLOTS = 64
#: a fully acknowledged file longer than this is cut back (shorter: only the offset moves,
#: which costs no fsync)
TRUNCATE_BYTES = 1024 * 1024
#: an acknowledged prefix longer than this (and than the rest) is dropped by a rewrite
COMPACT_BYTES = 64 * 1024 * 1024
#: the most bytes one ``read`` returns (at least one whole line)
READ_MAX_BYTES = 4 * 1024 * 1024
_BLOCK = 64 * 1024


def default_spool_dir() -> Path:
    """``$ACR_CACHE_DIR/outcomes`` when the variable is set, else ``~/.cache/acr/outcomes``."""
    root = os.environ.get("ACR_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "acr") / "outcomes"


def spool_name(stream: str) -> str:
    """A file-name-safe stem for ``stream`` (distinct streams get distinct stems)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stream)[:100]
    return safe if safe == stream else f"{safe}-{zlib.crc32(stream.encode()):08x}"


@dataclass(frozen=True)
class Spooled:
    """One spooled line: ``fields`` (None for a corrupt line) and the logical offset just
    past it, which ``ack`` takes."""

    end: int
    fields: dict[str, str] | None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def _set_fd(fds: dict[str, int], role: str, fd: int | None) -> None:
    old = fds.pop(role, None)
    if old is not None and old != fd:
        os.close(old)
    if fd is not None:
        fds[role] = fd


def _close_all(fds: dict[str, int]) -> None:
    for role in list(fds):
        _set_fd(fds, role, None)


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive ``flock`` on ``path``, or None when another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _complete_lines(data: bytes) -> list[bytes]:
    """The newline-terminated lines of ``data`` (a torn last line is left out)."""
    cut = data.rfind(b"\n")
    return [line + b"\n" for line in data[:cut].split(b"\n")] if cut >= 0 else []


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_offset(path: Path, epoch: bytes) -> int:
    """The acknowledged offset stored for ``epoch`` (0 when missing, stale or unreadable)."""
    try:
        stored_epoch, offset = path.read_bytes().split()
        return int(offset) if stored_epoch == epoch else 0
    except (OSError, ValueError):
        return 0


class OutcomeSpool:
    """The spool of stream ``name`` in ``directory``; thread-safe, called through
    ``asyncio.to_thread`` by ``OutcomeLog``. ``open`` before use, ``close`` at the end."""

    def __init__(
        self,
        directory: Path,
        name: str,
        *,
        truncate_bytes: int = TRUNCATE_BYTES,
        compact_bytes: int = COMPACT_BYTES,
    ) -> None:
        self.directory = directory
        self.name = name
        self.truncate_bytes = truncate_bytes
        self.compact_bytes = compact_bytes
        self.slot: int | None = None
        self._lock = threading.Lock()
        # The open fds by role; a spool dropped without close still releases its slot.
        self._fds: dict[str, int] = {}
        weakref.finalize(self, _close_all, self._fds)
        self._offset_dirty = False
        self._epoch = b""
        self._header = 0  # bytes of the header line
        self._size = 0  # bytes in the file
        self._committed = 0  # bytes Redis has acknowledged (the header counts as done)
        self._base = 0  # logical offset of byte 0 of the current file
        self._pending = 0

    @property
    def _fd(self) -> int | None:
        return self._fds.get("data")

    @_fd.setter
    def _fd(self, fd: int | None) -> None:
        _set_fd(self._fds, "data", fd)

    @property
    def _lock_fd(self) -> int | None:
        return self._fds.get("lock")

    @_lock_fd.setter
    def _lock_fd(self, fd: int | None) -> None:
        _set_fd(self._fds, "lock", fd)

    @property
    def pending(self) -> int:
        """Spooled outcomes Redis has not acknowledged yet."""
        return self._pending

    @property
    def path(self) -> Path:
        """The spool file of this process's slot."""
        return self._file(self.slot if self.slot is not None else 0, "spool")

    def _file(self, slot: int, kind: str) -> Path:
        return self.directory / f"{self.name}.{slot}.{kind}"

    def open(self) -> int:
        """Take a slot, cut a torn last line, adopt orphaned slots; returns how many
        outcomes wait in the spool (they are replayed by ``read``)."""
        with self._lock:
            if self._fd is not None:
                return self._pending
            self.directory.mkdir(parents=True, exist_ok=True)
            for slot in range(MAX_SLOTS):
                fd = _try_lock(self._file(slot, "lock"))
                if fd is not None:
                    self.slot, self._lock_fd = slot, fd
                    break
            else:
                raise OSError(f"all {MAX_SLOTS} outcome spool slots in {self.directory} are held")
            try:
                self._open_file()
            except OSError:
                self._fd = self._lock_fd = None  # give the slot back for the next try
                raise
            self._adopt_locked()
            if self._pending:
                log.warning(
                    "outcome spool %s holds %d outcomes to replay", self.path, self._pending
                )
            return self._pending

    def _open_file(self) -> None:
        path = self.path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        size = os.fstat(self._fd).st_size
        end = self._last_line_end(size)
        if end < size:
            log.warning("outcome spool %s: dropping a torn last line (%d bytes)", path, size - end)
            os.ftruncate(self._fd, end)
            _sync(self._fd)
        first = os.pread(self._fd, 200, 0).split(b"\n", 1)[0] if end else b""
        if not first.startswith(HEADER_PREFIX):
            if end:
                log.error("outcome spool %s has no header; replaying it all", path)
                self._rewrite(os.pread(self._fd, end, 0))
            else:
                self._restart_file()
            _fsync_dir(self.directory)
            return
        self._epoch = first[len(HEADER_PREFIX) :]
        self._header = len(first) + 1
        self._size = end
        done = _read_offset(self._file(self.slot or 0, "offset"), self._epoch)
        self._committed = done if self._header <= done <= end else self._header
        self._pending = self._count_lines(self._committed, end)

    def _last_line_end(self, size: int) -> int:
        """Offset just past the last newline of the file (0 when there is none)."""
        assert self._fd is not None
        pos = size
        while pos > 0:
            start = max(0, pos - _BLOCK)
            cut = os.pread(self._fd, pos - start, start).rfind(b"\n")
            if cut >= 0:
                return start + cut + 1
            pos = start
        return 0

    def _count_lines(self, start: int, end: int) -> int:
        assert self._fd is not None
        count = 0
        while start < end:
            chunk = os.pread(self._fd, min(_BLOCK * 16, end - start), start)
            count += chunk.count(b"\n")
            start += len(chunk)
        return count

    def _new_header(self) -> bytes:
        self._epoch = secrets.token_hex(8).encode()
        return HEADER_PREFIX + self._epoch + b"\n"

    def _restart_file(self) -> None:
        """Cut the file back to a fresh header (everything in it was acknowledged)."""
        assert self._fd is not None
        header = self._new_header()
        os.ftruncate(self._fd, 0)
        _write_all(self._fd, header)
        _sync(self._fd)
        self._base += self._size
        self._header = self._size = self._committed = len(header)
        self._pending = 0
        self._offset_dirty = False  # the stored offset names the old epoch: ignored

    def _rewrite(self, lines: bytes) -> None:
        """Replace the file by a fresh header and ``lines`` (whole lines), atomically."""
        assert self._fd is not None
        header = self._new_header()
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, header + lines)
            _sync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.directory)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        self._base += self._size
        self._header = self._committed = len(header)
        self._size = len(header) + len(lines)
        self._pending = lines.count(b"\n")
        self._offset_dirty = False  # the stored offset names the old epoch: ignored

    def append(self, entries: Sequence[dict[str, str]]) -> None:
        """Write ``entries`` (one line each) and fsync; raises OSError when the disk refuses
        (the file is cut back, so a half-written line never joins the next one)."""
        if not entries:
            return
        data = b"".join(
            json.dumps(e, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
            for e in entries
        )
        with self._lock:
            if self._fd is None:
                raise OSError("the outcome spool is not open")
            try:
                _write_all(self._fd, data)
                _sync(self._fd)
            except OSError:
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError:
                    log.exception("could not cut a failed append off the outcome spool")
                raise
            self._size += len(data)
            self._pending += len(entries)

    def read(self, limit: int) -> list[Spooled]:
        """Up to ``limit`` unacknowledged lines, oldest first (about 4 MiB at most, at least
        one whole line)."""
        with self._lock:
            if self._fd is None:
                return []
            pos, out = self._committed, list[Spooled]()
            while pos < self._size and len(out) < limit and pos - self._committed < READ_MAX_BYTES:
                want = _BLOCK
                lines = _complete_lines(os.pread(self._fd, min(self._size - pos, want), pos))
                while not lines and want < self._size - pos:  # a line longer than a block
                    want *= 4
                    lines = _complete_lines(os.pread(self._fd, min(self._size - pos, want), pos))
                if not lines:
                    break
                for line in lines[: limit - len(out)]:
                    pos += len(line)
                    out.append(Spooled(self._base + pos, self._parse(line)))
            return out

    def _parse(self, line: bytes) -> dict[str, str] | None:
        try:
            fields = json.loads(line)
        except ValueError:
            fields = None
        if not isinstance(fields, dict) or not fields.get("outcome_id"):
            log.error("outcome spool %s: skipping a corrupt line (%d bytes)", self.path, len(line))
            return None
        return {str(k): str(v) for k, v in fields.items()}

    def ack(self, end: int, count: int) -> None:
        """Redis has the ``count`` lines up to logical offset ``end``: forget them."""
        with self._lock:
            if self._fd is None:
                return
            done = end - self._base
            if done <= self._committed:
                return
            self._committed = min(done, self._size)
            self._pending = max(0, self._pending - count)
            if self._committed >= self._size and self._committed >= self.truncate_bytes:
                self._restart_file()
            elif self._committed >= self.compact_bytes and (
                self._size - self._committed <= self._committed
            ):
                tail = os.pread(self._fd, self._size - self._committed, self._committed)
                self._rewrite(tail)
            else:
                self._store_offset()

    def _store_offset(self, durable: bool = False) -> None:
        path = self._file(self.slot or 0, "offset")
        tmp = path.with_suffix(".offset-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, self._epoch + b" " + str(self._committed).encode())
            if durable:
                _sync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if durable:
            _fsync_dir(self.directory)
        self._offset_dirty = not durable

    def adopt(self) -> int:
        """Copy the unacknowledged lines of slots no live process holds into this spool and
        remove theirs; returns how many lines were adopted."""
        with self._lock:
            return self._adopt_locked() if self._fd is not None else 0

    def _adopt_locked(self) -> int:
        adopted = 0
        for path in sorted(self.directory.glob(f"{glob_escape(self.name)}.*.lock")):
            slot_text = path.name[len(self.name) + 1 : -len(".lock")]
            if not slot_text.isdigit() or int(slot_text) == self.slot:
                continue
            slot = int(slot_text)
            fd = _try_lock(path)
            if fd is None:
                continue
            try:
                adopted += self._take_over(slot)
            except OSError as exc:
                log.warning("could not adopt outcome spool slot %d: %s", slot, exc)
            finally:
                os.close(fd)
        return adopted

    def _take_over(self, slot: int) -> int:
        """Move slot ``slot``'s unacknowledged lines here (its lock is held); returns how
        many. On a failed write ours is cut back and theirs kept for a later try."""
        assert self._fd is not None
        spool = self._file(slot, "spool")
        try:
            f = spool.open("rb")
        except FileNotFoundError:
            return 0
        size_before, count = self._size, 0
        with f:
            first = f.readline()
            start = 0
            if first.startswith(HEADER_PREFIX) and first.endswith(b"\n"):
                epoch = first[len(HEADER_PREFIX) : -1]
                start = max(len(first), _read_offset(self._file(slot, "offset"), epoch))
            f.seek(start)
            carry = b""
            try:
                while chunk := f.read(_BLOCK * 16):
                    data = carry + chunk
                    cut = data.rfind(b"\n") + 1  # a torn last line stays behind
                    _write_all(self._fd, data[:cut])
                    self._size += cut
                    count += data.count(b"\n", 0, cut)
                    carry = data[cut:]
                _sync(self._fd)
            except OSError:
                os.ftruncate(self._fd, size_before)
                self._size = size_before
                raise
        self._pending += count
        if count:
            log.warning("adopted %d outcomes from orphaned spool %s", count, spool)
        # Ours are fsynced first: a crash in between replays them twice, which Redis skips.
        spool.unlink()
        self._file(slot, "offset").unlink(missing_ok=True)
        return count

    def checkpoint(self) -> None:
        """Make the last acknowledged offset durable (the flusher calls it when idle), so
        that even a power loss replays only outcomes acknowledged in the last moments."""
        with self._lock:
            if self._offset_dirty and self._fd is not None:
                self._store_offset(durable=True)

    def close(self) -> None:
        """Close the file and give the slot up (what is pending stays for the next start)."""
        with self._lock:
            if self._offset_dirty and self._fd is not None:
                self._store_offset(durable=True)
            self._fd = self._lock_fd = None


def glob_escape(text: str) -> str:
    """``text`` with glob metacharacters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", text)
