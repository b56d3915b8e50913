"""Generates the Helm chart's ``values.schema.json`` (``python -m router.commands.helm_schema``).

The ``router`` section's schema is the project's own ``AppConfig`` JSON schema, so the
chart and the service validate the same tree; a test fails when the committed schema drifts
from what this module generates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from router.config import AppConfig

CHART = Path(__file__).resolve().parents[2] / "helm" / "adaptive-compute-router"


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    return out


STR = {"type": "string"}
BOOL = {"type": "boolean"}
INT0 = {"type": "integer", "minimum": 0}
INT1 = {"type": "integer", "minimum": 1}
NUM0 = {"type": "number", "minimum": 0}
MAP = {"type": "object"}
LIST = {"type": "array"}
RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"requests": MAP, "limits": MAP},
}
# An image digest, or empty (pull by tag).
DIGEST = {"type": "string", "pattern": "^(sha256:[a-f0-9]{64})?$"}
# A pinned version tag: never `latest` or a floating major (`7`, `7-alpine`) or minor (`7.4`).
PINNED_TAG = {"type": "string", "pattern": "^v?[0-9]+\\.[0-9]+\\.[0-9]+([-.+_][A-Za-z0-9._-]+)?$"}
PULL_POLICY = {"enum": ["Always", "IfNotPresent", "Never"]}
# securityContexts stay open maps (Kubernetes validates them), but the hardening fields the
# chart promises cannot be switched off through values.
POD_SECURITY = {
    "type": "object",
    "properties": {
        "runAsNonRoot": {"const": True},
        "runAsUser": INT1,
        "seccompProfile": MAP,
    },
    "required": ["runAsNonRoot", "runAsUser", "seccompProfile"],
}
CONTAINER_SECURITY = {
    "type": "object",
    "properties": {
        "runAsNonRoot": {"const": True},
        "runAsUser": INT1,
        "allowPrivilegeEscalation": {"const": False},
        "privileged": {"const": False},
        "readOnlyRootFilesystem": BOOL,
        "capabilities": MAP,
    },
    "required": ["runAsNonRoot", "allowPrivilegeEscalation", "capabilities"],
}


def _router_schema() -> dict[str, Any]:
    schema = AppConfig.model_json_schema()
    # The chart renders a partial tree over defaults: nothing is required here.
    schema.pop("required", None)
    schema["additionalProperties"] = False
    return schema


def _serve_schema() -> dict[str, Any]:
    """``serve``: the Serve application's deployments."""
    return _obj(
        {
            "appName": {"type": "string", "pattern": "^[a-z0-9-]{1,40}$"},
            "ingress": _obj({"replicas": INT1, "numCpus": NUM0}),
            "model": _obj(
                {
                    "minReplicas": INT1,
                    "maxReplicas": INT1,
                    "targetOngoingRequests": NUM0,
                    "maxOngoingRequests": INT1,
                    "numCpus": NUM0,
                    "numGpus": NUM0,
                    "resources": MAP,
                }
            ),
            "verifier": _obj({"enabled": BOOL, "replicas": INT1, "numCpus": NUM0, "numGpus": NUM0}),
        }
    )


def _workers_schema() -> dict[str, Any]:
    """``workers``: the CPU and GPU worker groups."""
    worker = _obj(
        {
            "enabled": BOOL,
            "replicas": INT0,
            "minReplicas": INT0,
            "maxReplicas": INT1,
            "resources": RESOURCES,
            "nodeSelector": MAP,
            "tolerations": LIST,
        }
    )
    gpu = json.loads(json.dumps(worker))
    gpu["properties"]["gpusPerWorker"] = INT1
    return _obj({"cpu": worker, "gpu": gpu})


def _redis_schema() -> dict[str, Any]:
    """``redis``: the bundled StatefulSet (pinned image, password, maxmemory) or an
    external Redis."""
    return _obj(
        {
            "external": _obj(
                {
                    "enabled": BOOL,
                    "host": STR,
                    "port": INT1,
                    "db": INT0,
                    "existingSecret": STR,
                    "passwordKey": STR,
                }
            ),
            "auth": _obj({"existingSecret": STR, "passwordKey": STR}),
            "image": _obj(
                {"repository": STR, "tag": PINNED_TAG, "digest": DIGEST, "pullPolicy": PULL_POLICY},
                ["repository", "tag"],
            ),
            "maxmemory": {"type": "string", "pattern": "^([0-9]+([kKmMgG][bB]?)?)?$"},
            "maxmemoryPercent": {"type": "integer", "minimum": 10, "maximum": 95},
            "podSecurityContext": POD_SECURITY,
            "securityContext": CONTAINER_SECURITY,
            "persistence": _obj({"enabled": BOOL, "size": STR, "storageClass": STR}),
            "resources": RESOURCES,
        }
    )


def _exposure_schemas() -> dict[str, Any]:
    """How the API is exposed and guarded: keys, Service, Ingress, monitoring, policies."""
    return {
        "apiKeys": _obj(
            {"keys": {"type": "array", "items": STR}, "existingSecret": STR, "keysKey": STR}
        ),
        "service": _obj(
            {"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "port": INT1}
        ),
        "ingress": _obj(
            {"enabled": BOOL, "className": STR, "annotations": MAP, "hosts": LIST, "tls": LIST}
        ),
        "serviceMonitor": _obj({"enabled": BOOL, "interval": STR, "labels": MAP}),
        "networkPolicy": _obj(
            {
                "enabled": BOOL,
                "apiFrom": {"type": "array", "items": MAP},
                "dashboardFrom": {"type": "array", "items": MAP},
                "extraIngress": {"type": "array", "items": MAP},
            }
        ),
        "podDisruptionBudget": _obj({"enabled": BOOL, "minAvailable": INT0}),
    }


def values_schema() -> dict[str, Any]:
    """The JSON schema of the chart's values."""
    router = _router_schema()
    defs = router.pop("$defs", {})
    schema = _obj(
        {
            "nameOverride": STR,
            "fullnameOverride": STR,
            "image": _obj(
                {"repository": STR, "tag": STR, "digest": DIGEST, "pullPolicy": PULL_POLICY},
                ["repository"],
            ),
            "imagePullSecrets": LIST,
            "podSecurityContext": POD_SECURITY,
            "securityContext": CONTAINER_SECURITY,
            "router": router,
            "rayVersion": STR,
            "ray": _obj({"auth": _obj({"enabled": BOOL, "secretName": STR})}),
            "serve": _serve_schema(),
            "head": _obj({"resources": RESOURCES, "nodeSelector": MAP, "tolerations": LIST}),
            "workers": _workers_schema(),
            "redis": _redis_schema(),
            **_exposure_schemas(),
            "global": MAP,
        }
    )
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["$defs"] = defs
    return schema


def render() -> str:
    """The schema file's text."""
    return json.dumps(values_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # pragma: no cover
    target = CHART / "values.schema.json"
    target.write_text(render())
    sys.stdout.write(f"wrote {target}\n")
