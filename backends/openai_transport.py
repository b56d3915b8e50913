"""HTTP calls to one OpenAI-compatible server, with client-safe errors and breaker records.

``Transport`` is the only place ``OpenAIHTTPBackend`` touches the network for generation:
it maps every failure to a ``BackendError`` whose message never contains the server's
address (a security requirement: upstream URLs must not reach API clients), and records
each call's outcome on the circuit breaker:

* no answer (connection refused or dropped, timeout), overload (502, 503, 504), an
  unreadable body: retryable, and a breaker failure;
* 408/409/429: retryable with the server's ``Retry-After``, not a failure (it is alive);
* any other 4xx, and a 5xx whose body says the request failed validation (llama-cpp-python
  answers some valid OpenAI requests so): not retryable (the request itself was refused),
  not a failure: one caller's rejected requests never open the breaker for the others;
* any other 5xx: the server failed on this request (it answered, so it is alive): not
  retried and not a breaker failure; the client is told the upstream failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from backends.base import BackendError, StreamDelta
from backends.breaker import CircuitBreaker
from backends.openai_parse import MAX_ERROR_CHARS, refusal_message, scrub
from backends.openai_stream import StreamAccumulator, StreamError, sse_events

#: 4xx statuses that mean "not now" rather than "never"
RETRYABLE_4XX = frozenset({408, 409, 429})
#: 5xx statuses that mean the server (or the proxy before it) is down or overloaded
OVERLOAD_5XX = frozenset({502, 503, 504})
#: what the body of a 5xx says when the server refused the request itself (lowercased)
VALIDATION_MARKERS = (
    "validation",
    "input should be",
    "field required",
    "is not supported",
    "unsupported",
    "invalid",
    "unexpected keyword",
    "must be",
)
#: a successful call this recent proves readiness without asking a busy server again
RECENT_OK_S = 5.0


class Transport:
    """POSTs (plain and streaming) and the readiness check for one server.

    ``secrets`` are strings scrubbed from any server text passed on (base URL, host:port,
    API key). ``last_outcome`` is (ok, breaker clock time) of the latest call.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        headers: dict[str, str],
        secrets: list[str],
        timeout_s: float,
        breaker: CircuitBreaker,
    ) -> None:
        self.client = client
        self.base_url = base_url
        self.headers = headers
        self.secrets = secrets
        self.timeout_s = timeout_s
        self.breaker = breaker
        self.last_outcome: tuple[bool, float] | None = None

    async def post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` and return the JSON object of a 200 answer; raises a client-safe
        ``BackendError`` for anything else (see the module docstring)."""
        try:
            resp = await self.client.post(
                url, json=body, headers=self.headers, timeout=self.timeout_s
            )
        except httpx.TransportError as exc:
            raise self.transport_error(exc) from exc
        if resp.status_code >= 400:
            raise self.status_error(resp.status_code, resp.text, resp.headers)
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self.record(False)
            raise BackendError("the model server sent an unreadable answer")
        self.record(True)
        return data

    async def stream_deltas(
        self, url: str, body: dict[str, Any], acc: StreamAccumulator
    ) -> AsyncIterator[StreamDelta]:
        """POST a streaming request and yield what each SSE event adds (text, tool-call
        deltas, logprobs) as it arrives (every event is fed to ``acc``). A stream cut off
        midway raises a retryable error."""
        try:
            async with self.client.stream(
                "POST", url, json=body, headers=self.headers, timeout=self.timeout_s
            ) as resp:
                if resp.status_code >= 400:
                    text = (await resp.aread()).decode(errors="replace")
                    raise self.status_error(resp.status_code, text, resp.headers)
                async for event in sse_events(resp):
                    piece = acc.feed(event)
                    if piece is not None:
                        yield piece
        except httpx.TransportError as exc:
            raise self.transport_error(exc) from exc
        except StreamError as exc:
            self.record(False)
            detail = scrub(str(exc), self.secrets)[:MAX_ERROR_CHARS]
            raise BackendError(f"the model server failed mid-stream: {detail}") from exc
        self.record(True)

    def record(self, ok: bool) -> None:
        """Tell the breaker, and remember the outcome for ``ready``."""
        self.breaker.record(ok)
        self.last_outcome = (ok, self.breaker.clock())

    def transport_error(self, exc: httpx.TransportError) -> BackendError:
        """The retryable error for a call the server never answered (a breaker failure).
        Only the exception's type is named: httpx messages can carry the URL."""
        self.record(False)
        if isinstance(exc, httpx.TimeoutException):
            return BackendError(f"the model server did not answer within {self.timeout_s:g} s")
        return BackendError(f"the model server is unreachable ({type(exc).__name__})")

    def status_error(self, status: int, text: str, headers: httpx.Headers) -> BackendError:
        """The error for an HTTP error ``status`` with body ``text`` (see the module
        docstring for which are retryable and which count as breaker failures)."""
        refused = status < 500 or refused_request(text)
        message = refusal_message(status, text, self.secrets, refused=refused)
        if status in OVERLOAD_5XX:
            self.record(False)
            return BackendError(message, retryable=True, status=status)
        self.record(True)
        if status in RETRYABLE_4XX:
            return BackendError(
                message, retryable=True, retry_after_s=_retry_after(headers), status=status
            )
        # A refusal is reported as the client's (a 4xx status), a failure as the server's.
        return BackendError(message, retryable=False, status=400 if refused else status)

    async def ready(self, timeout_s: float) -> str | None:
        """None when the server can serve now, else a short reason (never its address).

        An open breaker is "not ready" until its cooldown ends; a call that succeeded in the
        last ``RECENT_OK_S`` is proof enough (a serializing server such as llama-cpp-python
        would make a health check wait behind the generation in progress); otherwise
        ``GET /models`` must answer 200 within ``timeout_s``.
        """
        if self.breaker.state == "open":
            return (
                f"model server failing ({self.breaker.failures} consecutive errors); "
                f"retrying in {self.breaker.retry_after_s()} s"
            )
        if self.last_outcome is not None:
            ok, at = self.last_outcome
            if ok and self.breaker.clock() - at < RECENT_OK_S:
                return None
        try:
            resp = await self.client.get(
                f"{self.base_url}/models", headers=self.headers, timeout=timeout_s
            )
        except httpx.TimeoutException:
            return f"model server did not answer within {timeout_s:g} s"
        except httpx.TransportError as exc:
            return f"model server unreachable ({type(exc).__name__})"
        if resp.status_code != 200:
            return f"model server answered {resp.status_code} to the model list"
        return None


def _retry_after(headers: httpx.Headers) -> float | None:
    """A ``Retry-After: <seconds>`` header as a float, None when absent or a date."""
    try:
        return max(0.0, float(headers.get("retry-after", "")))
    except ValueError:
        return None


def refused_request(body: str) -> bool:
    """Whether a 5xx body says the request failed the server's validation (a request that
    will fail again, not a server in trouble)."""
    low = body.lower()
    return any(marker in low for marker in VALIDATION_MARKERS)
