"""A per-call deadline that works in any thread (used around math-verify calls).

math-verify's own signal-based timeouts are switched off: they fail outside the main thread and
would cancel the process's other ``SIGALRM`` timers.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class DeadlineExceeded(Exception):
    """A math-verify call ran past ``LATEX_DEADLINE_S`` and was interrupted."""


class _Interrupt(BaseException):
    """Raised asynchronously into a thread whose call ran past its deadline.

    A ``BaseException`` so that the ``except Exception`` handlers inside math-verify and sympy
    do not swallow it.
    """


class _Watchdog:
    """Interrupts the thread that created it once, ``seconds`` later, unless stopped first.

    Works in any thread, unlike ``signal.alarm``: the interrupt is an asynchronous exception
    (``PyThreadState_SetAsyncExc``), delivered between bytecodes. It injects at most once, so
    an interrupt can only land inside the guarded call or ``stop`` (see ``_with_deadline``).
    """

    def __init__(self, seconds: float) -> None:
        self._thread_id = threading.get_ident()
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if not self._done:
                self._done = True
                _set_async_exc(self._thread_id, _Interrupt)

    def stop(self) -> None:
        """Disarms the watchdog and discards an interrupt fired but not yet delivered."""
        with self._lock:
            if self._done:
                _set_async_exc(self._thread_id, None)
            self._done = True
        self._timer.cancel()


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    """Schedules ``exc`` in thread ``thread_id`` (None clears a scheduled one)."""
    api = getattr(ctypes, "pythonapi", None)
    if api is not None:
        api.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None
        )


def _with_deadline(call: Callable[[], T], seconds: float) -> T:
    """``call()`` in this thread, interrupted after ``seconds`` (raises ``DeadlineExceeded``).

    Only pure-Python work is interruptible (ANTLR and sympy are); a single long C operation,
    such as a huge integer power, is not, which is why expressions are screened first.
    """
    try:
        watchdog = _Watchdog(seconds)
        try:
            return call()
        finally:
            watchdog.stop()
    except _Interrupt:
        raise DeadlineExceeded(f"math-verify call exceeded {seconds:g} s") from None
