"""Hostile requests against the real service: a table of rows, each sent over HTTP to the
router on Ray Serve (bundled model, real redis-server) or to the router in front of a
scripted upstream server (``tests/leaky_upstream.py``), with the status it must get.

Every row checks the same invariants besides its status: never a 500 (and no 5xx unless the
row says the backend is down), errors in OpenAI's envelope ``{"error": {"message", "type",
"param", "code"}}``, no upstream URL, host, file path or exception repr in any message, and
afterwards the ``endpoint`` labels of the request metrics bounded to the API's routes.

To add a case, append a ``Row`` to ``ROWS`` (its ``kind`` groups it; ``target`` picks the
deployment). Rows that need state first (feedback replay, decision-cache poisoning, rate
limits) can send their setup requests in ``before``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from router.config import AppConfig
from router.serving.embedded_redis import EmbeddedRedis
from router.serving.local import LocalService
from tests import leaky_upstream as up
from tests.service_configs import service_config

pytestmark = pytest.mark.full

API_KEY = "hostile-table-key"
MAX_SEED = 2**63 - 1
PUZZLE = "4 9 10 13"
#: the API's routes: the only ``endpoint`` label values besides "other"
ROUTES = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/route",
    "/v1/feedback",
    "/v1/models",
    "/v1/responses",
}

Headers = list[tuple[bytes, bytes]]


def chat(text: str, **fields: Any) -> dict[str, Any]:
    """A chat body asking ``text``."""
    return {"messages": [{"role": "user", "content": text}], **fields}


def chunks(total: int, size: int = 65_536) -> Callable[[], Iterator[bytes]]:
    """A chunked JSON body of about ``total`` bytes (sent without a Content-Length)."""

    def body() -> Iterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "'
        sent = 0
        while sent < total:
            yield b"a" * min(size, total - sent)
            sent += size
        yield b'"}]}'

    return body


@dataclass(frozen=True)
class Row:
    """One hostile request and what the service must answer.

    ``status`` is the expected status; ``code`` the error code when it is an error (None:
    any). ``headers`` are raw (name, value) bytes, so values may be any bytes; ``auth``
    adds the valid API key. ``content`` is a raw body (a callable giving chunks is sent
    chunked); otherwise ``json`` is sent. ``backend_down`` allows the 503 (or the 502 of a
    server failing on the request) a failing backend gets; ``check`` runs on the response
    for row-specific assertions.
    """

    id: str
    kind: str
    json: Any = None
    path: str = "/v1/chat/completions"
    method: str = "POST"
    status: int = 200
    code: str | None = None
    headers: Headers = field(default_factory=list)
    auth: bool = True
    content: bytes | Callable[[], Iterator[bytes]] | None = None
    target: str = "bundled"
    backend_down: bool = False
    before: Callable[[httpx.Client], None] | None = None
    check: Callable[[httpx.Response], None] | None = None


def _is_game24(r: httpx.Response) -> None:
    assert r.json()["router"]["task"] == "game24", r.json()["router"]


def _not_game24(r: httpx.Response) -> None:
    assert r.json()["router"]["task"] != "game24", r.json()["router"]


def _stream_error(r: httpx.Response, code: str) -> None:
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: {")]
    errors = [json.loads(e)["error"] for e in events if '"error"' in e]
    assert errors and errors[-1]["code"] == code, r.text[-500:]


def _samples_per_choice(n: int) -> Callable[[httpx.Response], None]:
    def check(r: httpx.Response) -> None:
        assert len(r.json()["choices"]) == n

    return check


DIGITS = [
    # Task parsers (backends/bundled/tasks, difficulty/) read prompts: digits that str.isdigit
    # accepts but int() refuses, other scripts' digits, and thousands of digits.
    Row("superscript-puzzle", "digits", chat("Use ² ³ ¹ ⁴ to make 24"), check=_not_game24),
    Row("superscript-bare", "digits", chat("² ³ ¹ ⁴", reasoning_effort="high")),
    Row("superscript-mixed", "digits", chat("4 9 10 ²", reasoning_effort="high")),
    Row("circled-digits", "digits", chat("① ② ③ ④", reasoning_effort="medium")),
    Row("arabic-indic-puzzle", "digits", chat("٤ ٩ ١٠ ١٣", reasoning_effort="high")),
    Row("fullwidth-puzzle", "digits", chat("４ ９ １０ １３"), check=_is_game24),
    Row("superscript-arithmetic", "digits", chat("What is ²+³*⁴?", reasoning_effort="high")),
    Row("arabic-indic-arithmetic", "digits", chat("What is ١٢+٣٤?", reasoning_effort="high")),
    Row("math-digits", "digits", chat("How many apples is 𝟙𝟚 + ³?", reasoning_effort="high")),
    Row("route-superscripts", "digits", chat("² ³ ¹ ⁴"), path="/v1/route"),
    Row("route-5000-digits", "digits", chat("9" * 5000), path="/v1/route"),
    Row("route-5000-digit-puzzle", "digits", chat("1" * 5000 + " 2 3 4"), path="/v1/route"),
    Row("route-5000-digit-sum", "digits", chat("What is " + "9" * 5000 + "+1?"), path="/v1/route"),
    # The bundled model's context is 192 tokens: a 5,000-digit prompt is refused with a 400
    # after the task parsers, the features and the probe have read it.
    Row("chat-5000-digits", "digits", chat("9" * 5000), status=400, code="backend_refused"),
    Row(
        "completion-5000-digit-puzzle",
        "digits",
        {"prompt": "1" * 5000 + " 2 3 4", "max_tokens": 8},
        path="/v1/completions",
        status=400,
        code="backend_refused",
    ),
    Row(
        "completion-superscripts",
        "digits",
        {"prompt": ["² ³ ¹ ⁴", "What is ²+³?"], "max_tokens": 8},
        path="/v1/completions",
    ),
]

LATENCY_HEADER = b"x-acr-latency-budget-ms"


def bad_header(case: str, value: bytes, path: str = "/v1/chat/completions") -> Row:
    """A latency budget header the service must refuse with a 400."""
    headers = [(LATENCY_HEADER, value)]
    return Row(
        case, "header", chat(PUZZLE), path, headers=headers, status=400, code="invalid_header"
    )


HEADERS = [
    # x-acr-latency-budget-ms: header bytes arrive decoded as latin-1, where \xb2 is "²".
    bad_header("header-superscript", b"\xb2"),
    bad_header("header-superscripts-utf8", "²³".encode()),
    bad_header("header-arabic-indic", "١٢".encode()),
    bad_header("header-fullwidth", "１２".encode()),
    bad_header("header-5000-digits", b"9" * 5000),
    bad_header("header-zero", b"0"),
    bad_header("header-negative", b"-5"),
    bad_header("header-past-bound", b"3600001"),
    bad_header("header-on-route", b"\xb9\xb2", path="/v1/route"),
    Row("header-valid", "header", chat(PUZZLE), headers=[(LATENCY_HEADER, b"2000")]),
]


def _seeded(strategy: str, n: int = 3, seed: int = MAX_SEED) -> dict[str, Any]:
    return chat(PUZZLE, seed=seed, n=n, acr={"strategy": strategy})


SEEDS = [
    # Per-copy, per-batch and per-call seed offsets on top of the largest seed.
    Row("max-seed-best-of-n", "seed", _seeded("best_of_n"), check=_samples_per_choice(3)),
    Row("max-seed-self-consistency", "seed", _seeded("self_consistency")),
    Row("max-seed-beam-search", "seed", _seeded("beam_search")),
    Row("max-seed-bounded-reasoning", "seed", _seeded("bounded_reasoning")),
    Row("max-seed-single-pass", "seed", _seeded("single_pass")),
    Row("max-seed-auto", "seed", chat("What is 12+34*5?", seed=MAX_SEED, n=3)),
    Row("max-seed-minus-one", "seed", _seeded("self_consistency", seed=MAX_SEED - 1)),
    Row(
        "max-seed-completions",
        "seed",
        {"prompt": [PUZZLE, "What is 2+3?"], "n": 2, "seed": MAX_SEED, "max_tokens": 8},
        path="/v1/completions",
    ),
    Row("seed-past-int64", "seed", _seeded("best_of_n", seed=2**63), status=400),
    Row("seed-negative", "seed", _seeded("best_of_n", seed=-1), status=400),
    Row("seed-huge", "seed", _seeded("best_of_n", seed=10**400), status=400),
]


def bad_key(case: str, name: bytes, value: bytes, path: str = "/v1/chat/completions") -> Row:
    """A request with only this (wrong) key header: a 401."""
    headers = [(name, value)]
    return Row(
        case,
        "auth",
        chat(PUZZLE),
        path,
        auth=False,
        headers=headers,
        status=401,
        code="invalid_api_key",
    )


def stray(case: str, path: str, status: int, method: str = "GET", auth: bool = True) -> Row:
    """A request for a path the API does not have."""
    body = chat(PUZZLE) if method == "POST" else None
    return Row(case, "labels", body, path, method, status=status, auth=auth)


AUTH = [
    # The constant-time key comparison with keys that are not ASCII.
    Row("key-missing", "auth", chat(PUZZLE), auth=False, status=401, code="invalid_api_key"),
    bad_key("key-utf8", b"authorization", "Bearer clé-secrète".encode()),
    bad_key("key-latin1-byte", b"authorization", b"Bearer \xb2\xff\xe9"),
    bad_key("key-x-api-key-emoji", b"x-api-key", "🔑🔑".encode()),
    bad_key("key-valid-plus-unicode", b"authorization", f"Bearer {API_KEY}é".encode()),
    bad_key("key-on-route", b"authorization", "Bearer ²²".encode(), path="/v1/route"),
]

LABELS = [
    # Paths clients make up, with and without a key, must not become metric labels.
    stray("random-v1-path-unauthenticated", "/v1/x-9f2c1e7d", 401, auth=False),
    stray("random-v1-path", "/v1/x-4a8b0c3e", 404),
    stray("random-post-path", "/v1/chat/completions/x-77", 404, method="POST"),
    stray("random-root-path", "/admin/x-0d1e", 404, auth=False),
    stray("unicode-path", "/v1/%C2%B2%E2%91%A0", 404),
    stray("wrong-method", "/v1/route", 405, method="DELETE"),
]

UPSTREAM = [
    # Upstream URLs, hosts, paths and reprs in the upstream's errors stay server-side;
    # the rows that trip the upstream's circuit breaker come last.
    Row("upstream-answers", "upstream", chat("What is 2+2?"), target="upstream"),
    Row(
        "upstream-400",
        "upstream",
        chat(up.REFUSE),
        target="upstream",
        status=400,
        code="backend_refused",
    ),
    Row(
        "upstream-404",
        "upstream",
        chat(up.NOT_FOUND),
        target="upstream",
        status=400,
        code="backend_refused",
    ),
    # A stream has answered 200 before the upstream refuses: the error is its last event.
    Row(
        "upstream-stream-refused",
        "upstream",
        chat(up.REFUSE, stream=True),
        target="upstream",
        check=lambda r: _stream_error(r, "backend_refused"),
    ),
    Row(
        "upstream-garbage",
        "upstream",
        chat(up.GARBAGE),
        target="upstream",
        status=503,
        code="backend_unavailable",
        backend_down=True,
    ),
    # A server that fails on this request (it answered, so it is up): 502, not retried.
    Row(
        "upstream-500-traceback",
        "upstream",
        chat(up.CRASH),
        target="upstream",
        status=502,
        code="upstream_error",
        backend_down=True,
    ),
    Row(
        "upstream-hang-up",
        "upstream",
        chat(up.HANG_UP),
        target="upstream",
        status=503,
        code="backend_unavailable",
        backend_down=True,
    ),
]

BODY_SIZE = [
    # The body limit counts the bytes received, chunked bodies included.
    Row(
        "chunked-over-limit",
        "body_size",
        content=chunks(2_000_000),
        status=413,
        code="body_too_large",
    ),
    Row(
        "chunked-just-over-limit",
        "body_size",
        content=chunks(1_048_577),
        status=413,
        code="body_too_large",
    ),
    Row("chunked-small", "body_size", content=chunks(20, size=4)),
    Row(
        "declared-over-limit",
        "body_size",
        content=b'{"messages": [{"role": "user", "content": "' + b"a" * 1_100_000 + b'"}]}',
        status=413,
        code="body_too_large",
    ),
    Row(
        "chunked-over-limit-unauthenticated",
        "body_size",
        content=chunks(2_000_000),
        auth=False,
        status=401,
    ),
]

SCHEMA_BOUNDS = [
    # What the published schema states is what validation enforces (default limits).
    Row("n-past-max", "schema", chat(PUZZLE, n=17), status=400, code="less_than_equal"),
    Row("max-tokens-past-max", "schema", chat(PUZZLE, max_tokens=2049), status=400),
    Row("too-many-stops", "schema", chat(PUZZLE, stop=list("abcde")), status=400, code="too_long"),
    Row("empty-stop", "schema", chat(PUZZLE, stop=""), status=400),
    Row(
        "too-many-messages",
        "schema",
        {"messages": [{"role": "user", "content": "x"}] * 65},
        status=400,
        code="too_long",
    ),
    Row("samples-past-max", "schema", chat(PUZZLE, acr={"budget": {"samples": 65}}), status=400),
    Row("timeout-past-max", "schema", chat(PUZZLE, acr={"timeout_ms": 120_001}), status=400),
    Row(
        "unknown-strategy",
        "schema",
        chat(PUZZLE, acr={"strategy": "dfs"}),
        status=400,
        code="literal_error",
    ),
    # The bundled model takes no forwarded field: each is refused by name, never dropped.
    Row(
        "forwarded-fields-refused-by-the-bundled-backend",
        "schema",
        chat(PUZZLE, frequency_penalty=0.5, logit_bias={"1": 2}, tools=[]),
        status=400,
        code="invalid_value",
    ),
]

RESPONSES_PATH = "/v1/responses"
RESPONSES = [
    Row(
        "responses-digits-past-the-models-context",
        "responses",
        {"input": "9" * 5000},
        path=RESPONSES_PATH,
        status=400,
        code="backend_refused",
    ),
    Row(
        "responses-non-ascii-input",
        "responses",
        {"input": "४ ९ १० १३ तो २४ बनाओ"},
        path=RESPONSES_PATH,
    ),
    Row(
        "responses-unknown-item-type",
        "responses",
        {"input": [{"type": "computer_call", "id": "x"}]},
        path=RESPONSES_PATH,
        status=400,
    ),
    Row(
        "responses-unknown-previous-id",
        "responses",
        {"input": PUZZLE, "previous_response_id": "resp_" + "x" * 40},
        path=RESPONSES_PATH,
        status=404,
        code="not_found",
    ),
    Row(
        "responses-tools-refused-by-the-bundled-backend",
        "responses",
        {"input": PUZZLE, "tools": [{"type": "function", "name": "f"}]},
        path=RESPONSES_PATH,
        status=400,
        code="invalid_value",
    ),
    Row(
        "responses-background-refused",
        "responses",
        {"input": PUZZLE, "background": True},
        path=RESPONSES_PATH,
        status=400,
        code="invalid_value",
    ),
    Row(
        "responses-output-tokens-past-max",
        "responses",
        {"input": PUZZLE, "max_output_tokens": 2049},
        path=RESPONSES_PATH,
        status=400,
    ),
    Row(
        "responses-unknown-id",
        "responses",
        None,
        path=RESPONSES_PATH + "/resp_%00%ff%2e%2e",
        method="GET",
        status=404,
    ),
    Row(
        "responses-delete-unknown-id",
        "responses",
        None,
        path=RESPONSES_PATH + "/resp_nope",
        method="DELETE",
        status=404,
    ),
]

ROWS: list[Row] = [*DIGITS, *HEADERS, *SEEDS, *AUTH, *LABELS, *UPSTREAM, *BODY_SIZE]
ROWS += SCHEMA_BOUNDS + RESPONSES

# Anything that tells where the service runs or what its code looks like.
LEAK_PATTERNS = [
    re.compile(p)
    for p in (
        r"[a-z]+://",
        r"\b\d{1,3}(?:\.\d{1,3}){3}\b",
        r"\b[\w-]+(?:\.[\w-]+)*:\d{2,5}\b",
        r"\.(?:internal|local|svc)\b",
        r"(?:/[\w.-]+){2,}",
        r"\.py\b",
        r"Traceback",
        r"0x[0-9a-f]{6,}",
        r"\b\w+(?:Error|Exception)\(",
    )
]


def assert_client_safe(message: str) -> None:
    """``message`` names no URL, address, host, path, source file or exception repr."""
    for leak in up.LEAKS:
        assert leak not in message, (leak, message)
    for pattern in LEAK_PATTERNS:
        assert not pattern.search(message), (pattern.pattern, message)


class Deployments:
    """The router on Ray Serve for a row's ``target``: ``bundled`` (the bundled model) or
    ``upstream`` (the openai backend in front of ``LeakyUpstream``). One runs at a time (Serve
    is one per process); rows are sorted by target, so each starts once."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.target: str | None = None
        self.service: LocalService | None = None
        self.upstream: up.LeakyUpstream | None = None

    def url(self, target: str) -> str:
        """The base URL of ``target``'s deployment, started (and the other stopped) first."""
        if target != self.target:
            self.close()
            self.service = LocalService(self._config(target)).start()
            self.target = target
            _wait_ready(self.service.url)
        assert self.service is not None
        return self.service.url

    def _config(self, target: str) -> AppConfig:
        cfg = service_config(self.redis_url, f"acr:outcomes:hostile-{target}")
        cfg.auth.api_keys = [API_KEY]
        if target == "upstream":
            self.upstream = up.LeakyUpstream().start()
            cfg.model.base_url = self.upstream.base_url  # before kind: it needs one
            cfg.model.kind = "openai"
            cfg.model.http_timeout_ms = 5_000
            cfg.model.capabilities = {
                "native_n": True,
                "logprobs": False,
                "completions": False,
                "chat_template": False,
                "exact_token_counts": False,
            }
        return cfg

    def close(self) -> None:
        """Stop whatever runs."""
        if self.service is not None:
            self.service.stop()
        if self.upstream is not None:
            self.upstream.stop()
        self.service, self.upstream, self.target = None, None, None


@pytest.fixture(scope="module")
def deployments(redis_server: EmbeddedRedis) -> Iterator[Deployments]:
    d = Deployments(redis_server.url)
    yield d
    d.close()


def _wait_ready(url: str, timeout_s: float = 180) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"service at {url} not up within {timeout_s} s")


def send(client: httpx.Client, row: Row) -> httpx.Response:
    """Send ``row`` as the client would: raw header bytes, a JSON or raw (chunked) body."""
    headers: Headers = [(b"authorization", f"Bearer {API_KEY}".encode())] if row.auth else []
    headers += row.headers
    kwargs: dict[str, Any] = {}
    if row.content is not None:
        kwargs["content"] = row.content() if callable(row.content) else row.content
        if not any(name == b"content-type" for name, _ in headers):
            headers.append((b"content-type", b"application/json"))
    elif row.json is not None:
        kwargs["json"] = row.json
    request = client.build_request(row.method, row.path, headers=headers, **kwargs)
    return client.send(request)


def endpoint_labels(client: httpx.Client) -> set[str]:
    """Every ``endpoint`` label value the service's metrics hold now."""
    text = client.get("/metrics").text
    return set(re.findall(r'endpoint="([^"]*)"', text))


SORTED = sorted(ROWS, key=lambda r: r.target)


@pytest.mark.parametrize("row", SORTED, ids=[f"{r.kind}-{r.id}" for r in SORTED])
def test_a_hostile_request_gets_its_status_and_leaks_nothing(
    deployments: Deployments, row: Row
) -> None:
    with httpx.Client(base_url=deployments.url(row.target), timeout=60) as client:
        if row.before is not None:
            row.before(client)
        r = send(client, row)
        assert r.status_code != 500, r.text[:500]
        failing = row.backend_down and r.status_code in (502, 503)  # the backend, not the input
        assert r.status_code < 500 or failing, r.text[:500]
        assert r.status_code == row.status, r.text[:500]
        if r.status_code >= 400:
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"}, err
            assert isinstance(err["message"], str) and err["message"]
            assert_client_safe(err["message"])
            if row.code is not None:
                assert err["code"] == row.code, err
        elif row.target == "upstream":
            # Answers (and a stream's error events) carry no upstream detail either.
            assert_client_safe(r.text)
        if row.check is not None:
            row.check(r)
        labels = endpoint_labels(client)
        assert labels <= ROUTES | {"other"}, labels - ROUTES
