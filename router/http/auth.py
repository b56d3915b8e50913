"""API keys at the edge: which keys are accepted, and the id a caller is known by.

Keys are compared in constant time as bytes; a caller is known by a short non-reversible id
of its key (its limits, decision cache scope, stored responses and feedback), or by one id
for everyone when the server takes any key.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from starlette.requests import Request

#: the one key id every caller has when the server accepts any (or no) key
ANONYMOUS_KEY_ID = "anonymous"


def load_api_keys(keys: list[str], keys_file: str | None) -> list[str]:
    """Configured keys plus those in ``keys_file`` (one per line, blanks and # ignored)."""
    out = [k for k in keys if k]
    if keys_file:
        for line in Path(keys_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def bearer(request: Request) -> str | None:
    """The key the request presents: ``Authorization: Bearer <key>`` or ``x-api-key``."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def key_id(request: Request, auth_on: bool) -> str:
    """The caller's id for logs and per-key limits: with auth on, a short non-reversible
    id of the key the guard accepted; with auth off, ``anonymous`` for everyone (a bearer
    string nobody checks must not buy its sender a bucket of its own)."""
    key = bearer(request)
    if not auth_on or not key:
        return ANONYMOUS_KEY_ID
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:12]


def key_accepted(key: str, api_keys: list[bytes]) -> bool:
    """Whether the presented ``key`` is one of ``api_keys`` (UTF-8), compared in constant
    time as bytes: ``hmac.compare_digest`` refuses non-ASCII ``str``. Header values arrive
    decoded as latin-1, so encoding them back gives the bytes the client sent."""
    try:
        presented = key.encode("latin-1")
    except UnicodeEncodeError:
        presented = key.encode("utf-8")
    return any(hmac.compare_digest(presented, k) for k in api_keys)
