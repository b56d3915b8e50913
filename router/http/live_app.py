"""``LiveApp``: the ASGI app an ingress exposes, serving through whichever API app is current.

A live config reload builds a whole new FastAPI app (its request models carry the new
limits, its routes the new service) and ``swap``s it in: requests already inside the old
app finish there, under the old policy; the next request enters the new one. The lifespan
(the outcome log's start and final flush) belongs to the ingress, not to any one revision,
so ``LiveApp`` runs it itself.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send


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

    def swap(self, app: ASGIApp) -> None:
        """Serve the next request with ``app``."""
        self.current = app

    def __getattr__(self, name: str) -> Any:
        # ``openapi()``, ``routes`` and the like are the current app's.
        if name == "current":
            raise AttributeError(name)
        return getattr(self.current, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        await self.current(scope, receive, send)
