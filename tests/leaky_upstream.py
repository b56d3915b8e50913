"""A scripted OpenAI-compatible server on loopback whose errors are full of internals.

The router's ``openai`` backend talks to it over real HTTP; what it answers depends on a
marker in the last user message, so a test can make the upstream refuse, crash or hang up
on one request and answer normally on the next. Every error text it sends names the things
a client must never read: URLs, IP addresses, host names, file paths, exception reprs.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: what the upstream's error texts contain (a test asserts none of it reaches a client)
LEAKS: tuple[str, ...] = (
    "http://10.20.30.40:8000/v1/chat/completions",
    "inference-7.gpu.internal",
    "vllm-0.vllm.svc.cluster.local:8000",
    "/srv/models/llama-3-70b/model-00001-of-00030.safetensors",
    "/usr/lib/python3.11/site-packages/vllm/engine.py",
    "ValueError('shape mismatch at layer 31')",
    "<vllm.engine.LLMEngine object at 0x7f3a2c1d9e50>",
)
LEAKY_TEXT = (
    f"request to {LEAKS[0]} failed on {LEAKS[1]} (peer {LEAKS[2]}): weights {LEAKS[3]} "
    f"raised {LEAKS[5]} in {LEAKS[4]} line 812, engine {LEAKS[6]}"
)
TRACEBACK = (
    "Traceback (most recent call last):\n"
    f'  File "{LEAKS[4]}", line 812, in step\n'
    f"    raise {LEAKS[5]}\n{LEAKY_TEXT}\n"
)

#: markers in the last user message and what the upstream does for them
REFUSE = "upstream-refuses-with-internals"  # 400 with a leaky error.message
NOT_FOUND = "upstream-says-not-found"  # 404 with a leaky detail
CRASH = "upstream-crashes-with-a-traceback"  # 500 with a traceback body
GARBAGE = "upstream-answers-garbage"  # 200 with a body that is not JSON
HANG_UP = "upstream-hangs-up"  # closes the connection without an answer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        models = {"object": "list", "data": [{"id": "leaky", "object": "model"}]}
        self._send(200, json.dumps(models).encode())

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        text = " ".join(str(m.get("content", "")) for m in body.get("messages") or [])
        if REFUSE in text:
            self._send(400, json.dumps({"error": {"message": LEAKY_TEXT}}).encode())
        elif NOT_FOUND in text:
            self._send(404, json.dumps({"detail": LEAKY_TEXT}).encode())
        elif CRASH in text:
            self._send(500, TRACEBACK.encode(), "text/plain")
        elif GARBAGE in text:
            self._send(200, b"<html>" + TRACEBACK.encode() + b"</html>", "text/html")
        elif HANG_UP in text:
            self.close_connection = True
            self.connection.close()
        else:
            self._send(200, json.dumps(_completion(body)).encode())


def _completion(body: dict[str, Any]) -> dict[str, Any]:
    n = int(body.get("n") or 1)
    choice = {"message": {"role": "assistant", "content": "Answer: 4"}, "finish_reason": "stop"}
    return {
        "id": "up-1",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "leaky",
        "choices": [{"index": i, **choice} for i in range(n)],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3 * n, "total_tokens": 5 + 3 * n},
    }


class LeakyUpstream:
    """The server on ``127.0.0.1:<port>`` in a daemon thread; ``base_url`` ends in ``/v1``."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL the router is configured with."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> LeakyUpstream:
        """Serve in the background; returns self."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
