"""The live part of the configuration: the sections a running service applies in place.

``policy``, ``strategies`` (strategy defaults and the ``reasoning_effort`` map) and ``limits``
change how requests are decided and bounded, not what runs: applying them rebuilds the
ingress's policy and request checks and keeps every model replica, backend connection,
Redis client and outcome log. Every other section (the model, backends, Redis, the server)
needs the application rebuilt, which Serve does as a rolling update.

A live config is named by its ``revision``: a hash of the three sections as validated, so
the same content gets the same name on every replica and from every path (a Serve
``user_config``, ``acr serve``'s SIGHUP, the Helm chart). Decisions carry it
(``router.config_revision``) and the decision cache keeps one namespace per revision.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from router.config import AppConfig, ConfigError, parse_config

#: the sections applied while serving, in the order a revision hashes them
LIVE_SECTIONS: tuple[str, ...] = ("policy", "strategies", "limits")


def revision(config: AppConfig) -> str:
    """The revision of ``config``'s live sections: 12 hex digits of their SHA-256."""
    raw = json.dumps(live_sections(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def split(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A config mapping as (the rest, its live sections); what a Serve config deploys as the
    application's args and the ingress's ``user_config``."""
    base = {k: v for k, v in data.items() if k not in LIVE_SECTIONS}
    live = {k: v for k, v in data.items() if k in LIVE_SECTIONS}
    return base, live


def live_sections(config: AppConfig) -> dict[str, Any]:
    """``config``'s live sections as JSON values."""
    return {name: getattr(config, name).model_dump(mode="json") for name in LIVE_SECTIONS}


def base_sections(config: AppConfig) -> dict[str, Any]:
    """Every section of ``config`` but the live ones, as JSON values."""
    return split(config.model_dump(mode="json"))[0]


def with_live(base: AppConfig, live: Mapping[str, Any], source: str) -> AppConfig:
    """``base`` with the live sections in ``live`` replacing its own (sections ``live``
    leaves out keep ``base``'s), validated as a whole config. Raises ``ConfigError`` naming
    each bad field (``source`` says where the sections came from) and every section that
    cannot change while serving."""
    if not isinstance(live, Mapping):
        raise ConfigError(
            f"invalid live configuration ({source}): expected a mapping of "
            f"{', '.join(LIVE_SECTIONS)}, got {type(live).__name__}"
        )
    if others := sorted(str(k) for k in live if k not in LIVE_SECTIONS):
        raise ConfigError(
            f"invalid live configuration ({source}): {', '.join(others)} cannot change while "
            f"serving; only {', '.join(LIVE_SECTIONS)} can (the rest needs a redeploy)"
        )
    data = base.model_dump(mode="json")
    data.update(dict(live))
    return parse_config(data, source)
