"""Client-safe error text: what an API client may read of a failure.

Error messages reach clients through the HTTP API's error envelope. Whatever produced them
(an upstream server's error body, a Ray exception, a library's ``str(exc)``), they must not
carry where things run or what the code looks like: upstream URLs, host:port addresses, IP
addresses, file paths, object addresses or exception reprs. ``redact`` removes those; the
full detail belongs in the server's log, never in a response.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: what an address, path or repr is replaced by
REDACTED = "<redacted>"
#: what a known secret (the configured upstream URL, host, API key) is replaced by
UPSTREAM = "<model server>"

_PATTERNS: tuple[re.Pattern[str], ...] = (
    # scheme://anything (http, https, redis, unix, file ...)
    re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{1,15}://[^\s'\"<>)\]]*"),
    # IPv4 with an optional port, bracketed IPv6
    re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b"),
    re.compile(r"\[[0-9A-Fa-f:]{2,}\](?::\d{1,5})?"),
    # host:port (a name with a port is an address, "llama:8080", "vllm.svc.local:8000")
    re.compile(r"\b[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*:\d{2,5}\b"),
    # dotted names under an internal or well-known top-level domain
    re.compile(
        r"\b[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:local|internal|lan|svc|cluster|localdomain|"
        r"com|net|org|io|dev|ai)\b"
    ),
    re.compile(r"\blocalhost\b", re.IGNORECASE),
    # absolute paths with at least two components, Windows paths, ~ paths
    re.compile(r"(?<![\w.])(?:~|\.{1,2})?(?:/[\w.@+-]+){2,}/?"),
    re.compile(r"\b[A-Za-z]:\\[^\s'\"]+"),
    # source locations and tracebacks
    re.compile(r"\b[\w.-]+\.(?:py|pyc|pyx|so|cpp|cc|rs)\b(?::\d+)?"),
    re.compile(r"Traceback \(most recent call last\).*", re.DOTALL),
    # object reprs and memory addresses: <Foo object at 0x7f...>, 0x7f00dead
    re.compile(r"<[^<>\n]{0,200}\bat 0x[0-9A-Fa-f]+>"),
    re.compile(r"\b0x[0-9A-Fa-f]{6,}\b"),
    # exception reprs: ValueError('...'), RayTaskError(KeyError)
    re.compile(r"\b[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\((?:[^()]|\([^()]*\))*\)"),
)
#: longest message passed on; a longer one is cut (tracebacks and dumps are not messages)
MAX_MESSAGE_CHARS = 500


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every ``secrets`` string replaced by ``<model server>`` and every URL,
    address, host name, file path, object or exception repr by ``<redacted>``; cut to
    ``MAX_MESSAGE_CHARS``. Used on every error message before a client sees it."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, UPSTREAM)
    for pattern in _PATTERNS:
        text = pattern.sub(REDACTED, text)
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    return text
