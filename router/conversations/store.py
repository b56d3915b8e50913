"""Stored responses of the Responses API, in Redis, one key per response.

A stored response is one JSON value under ``{prefix}:response:{tenant}:{id}`` with a TTL:
the response object, its input items, and the conversation that led to it as chat messages
(every earlier turn's input and output), so that continuing it with
``previous_response_id`` costs one read and storing the next turn one write. The tenant
(the caller's key id) is part of the key: another key's read or delete finds nothing.

A Redis failure while storing is reported to the caller (the response is served and says it
was not stored); while reading a conversation it is ``StateUnavailable`` (a 503): a
conversation that cannot be read is never silently started afresh.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from redis.asyncio import Redis

from router.errors import StateUnavailable

log = logging.getLogger("acr.responses")


class ResponseStore:
    """Stored responses on ``client`` under ``prefix``, each kept ``ttl_s`` seconds."""

    def __init__(self, client: Redis, *, prefix: str, ttl_s: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s

    def key(self, tenant: str, response_id: str) -> str:
        """The Redis key of one tenant's stored response."""
        return f"{self.prefix}:response:{tenant}:{response_id}"

    async def get(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        """The stored record (``response``, ``input``, ``context``), or None when there is
        none for this tenant (expired, deleted, another key's, never stored)."""
        try:
            raw = await self.client.get(self.key(tenant, response_id))
        except Exception as exc:  # noqa: BLE001 - Redis, socket and OS errors alike
            log.warning("stored responses unreadable: %s", exc)
            raise StateUnavailable(
                "stored responses cannot be read now (Redis is unavailable); retry shortly"
            ) from exc
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except (TypeError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    async def put(self, tenant: str, response_id: str, record: dict[str, Any]) -> bool:
        """Store ``record``; False (logged) when Redis did not take it."""
        try:
            raw = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
            await self.client.set(self.key(tenant, response_id), raw, ex=self.ttl_s)
        except Exception as exc:  # noqa: BLE001 - the response is served all the same
            log.warning("response %s not stored: %s", response_id, exc)
            return False
        return True

    async def delete(self, tenant: str, response_id: str) -> bool:
        """Delete one tenant's stored response; False when there was none."""
        try:
            return bool(await self.client.delete(self.key(tenant, response_id)))
        except Exception as exc:  # noqa: BLE001
            raise StateUnavailable(
                "stored responses cannot be changed now (Redis is unavailable); retry shortly"
            ) from exc
