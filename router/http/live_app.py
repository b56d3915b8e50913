"""``LiveApp``: the ASGI app an ingress exposes, serving through whichever API app is current.

A live config reload builds a whole new FastAPI app (its request models carry the new
limits, its routes the new service) and ``swap``s it in: requests already inside the old
app finish there, under the old policy; the next request enters the new one. The lifespan
(the outcome log's start and final flush) belongs to the ingress, not to any one revision,
so ``LiveApp`` runs it itself.

It also counts the requests inside (a streamed answer until its last byte) and ``drain``s:
from then on every request but ``/healthz`` is refused with a 503 (``retry-after``) in
OpenAI's envelope, and ``drain`` returns once the requests inside have finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from router.http.errors import APIError

#: what a draining ingress still answers: liveness (the process is alive while it drains)
_WHILE_DRAINING = ("/healthz",)


class LiveApp:
    """An ASGI app forwarding each request to ``current``; ``swap`` replaces it."""

    def __init__(
        self,
        app: ASGIApp,
        lifespan: Callable[[], AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        self.current = app
        self._lifespan: Starlette = Starlette(
            lifespan=(lambda _: lifespan()) if lifespan is not None else None
        )
        #: HTTP requests inside now
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def swap(self, app: ASGIApp) -> None:
        """Serve the next request with ``app``."""
        self.current = app

    def __getattr__(self, name: str) -> Any:
        # ``openapi()``, ``routes`` and the like are the current app's.
        if name == "current":
            raise AttributeError(name)
        return getattr(self.current, name)

    async def drain(self, timeout_s: float) -> int:
        """Refuse new requests from now on and wait up to ``timeout_s`` for those inside to
        finish; returns how many are still inside (0: drained)."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            pass
        return self.in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if self.draining and scope.get("path") not in _WHILE_DRAINING:
            err = APIError(
                503,
                "the server is shutting down; retry (another replica, or this one restarted)",
                type="server_error",
                code="shutting_down",
                headers={"retry-after": "1"},
            )
            response = JSONResponse(err.envelope(), status_code=503, headers=err.headers)
            await response(scope, receive, send)
            return
        self.in_flight += 1
        self._idle.clear()
        try:
            await self.current(scope, receive, send)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()
