"""The request body size limit, on the bytes actually received.

A ``Content-Length`` header can be absent (``Transfer-Encoding: chunked``) or lie, so the
limit is enforced while the body arrives: ``BodyLimit`` reads it (at most ``max_bytes``),
answers 413 in OpenAI's error envelope past the limit, and hands the app the buffered body.
The routes parse whole JSON bodies anyway, so buffering them first costs nothing extra.
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.http.errors import APIError

#: a Content-Length value: ASCII digits only (``str.isdigit`` also passes "²"), bounded
_LENGTH = re.compile(r"[0-9]{1,18}")


def too_large(limit: int) -> APIError:
    """The 413 for a body past ``limit`` bytes."""
    return APIError(
        413,
        f"request body is larger than the limit of {limit} bytes",
        code="body_too_large",
    )


class BodyLimit:
    """ASGI middleware: a request body longer than ``max_bytes`` (declared or received) is
    answered 413 without reaching the app; an unreadable ``Content-Length`` is a 400."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            if not _LENGTH.fullmatch(length):
                error = APIError(
                    400,
                    "content-length must be a number of bytes",
                    param="content-length",
                    code="invalid_header",
                )
                await _answer(error, scope, receive, send)
                return
            if int(length) > self.max_bytes:
                await _answer(too_large(self.max_bytes), scope, receive, send)
                return
        body = await self._read(receive)
        if body is None:
            await _answer(too_large(self.max_bytes), scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | list[Message] | None:
        """The whole body, or None once it passes ``max_bytes``; a client that left midway
        gives the messages received so far (the app sees the disconnect)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return [message]
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes | list[Message], receive: Receive) -> Receive:
    """A ``receive`` that first gives the buffered body (or the messages read), then defers
    to the client's own (a streaming response listens there for the disconnect)."""
    pending: list[Message] = (
        [{"type": "http.request", "body": body, "more_body": False}]
        if isinstance(body, bytes)
        else list(body)
    )

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _answer(error: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse(error.envelope(), status_code=error.status, headers=error.headers)
    await response(scope, receive, send)
