"""The Helm chart, rendered and linted by Helm's own Go SDK (helm-python-sdk)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python import Chart, HelmError, lint

from router.config import AppConfig
from router.helm_schema import render as render_schema

CHART_DIR = Path(__file__).resolve().parents[1] / "helm" / "adaptive-compute-router"
K8S_VERSION = "1.30.0"


def render(values: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Rendered objects grouped by kind."""
    chart = Chart.load(CHART_DIR)
    out = chart.render(values or {}, name="acr", namespace="llm")
    objs: dict[str, list[dict[str, Any]]] = {}
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objs.setdefault(doc["kind"], []).append(doc)
    return objs


def config_of(objs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return yaml.safe_load(objs["ConfigMap"][0]["data"]["config.yaml"])


def serve_config(objs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return yaml.safe_load(objs["RayService"][0]["spec"]["serveConfigV2"])


def test_the_chart_lints_clean() -> None:
    result = lint(str(CHART_DIR), strict=True)
    assert result["errors"] == []
    assert not [m for m in result["messages"] if m["severity"] >= 2], result["messages"]


def test_default_values_render_rayservice_configmap_service_and_redis() -> None:
    objs = render()
    for kind in ("RayService", "ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"):
        assert kind in objs, kind
    assert "Ingress" not in objs and "ServiceMonitor" not in objs
    sts = objs["StatefulSet"][0]
    assert "--appendonly" in sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    assert config_of(objs)["redis"]["url"] == "redis://acr-adaptive-compute-router-redis:6379/0"


def test_the_rendered_configmap_parses_with_the_project_config_model() -> None:
    cfg = AppConfig(**config_of(render({"router": {"policy": {"latency_slo_ms": 2500}}})))
    assert cfg.policy.latency_slo_ms == 2500
    assert cfg.server.host == "0.0.0.0"


def test_serve_config_names_import_paths_and_deployments_that_exist() -> None:
    app = serve_config(render())["applications"][0]
    module, attr = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    from router import app as router_app

    names = {d["name"] for d in app["deployments"]}
    assert names == {"RouterIngress", "ModelReplica"}
    for name in names:
        assert getattr(router_app, name).name == name
    model = next(d for d in app["deployments"] if d["name"] == "ModelReplica")
    assert model["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 8,
    }


def test_gpu_values_add_a_gpu_worker_group_and_gpu_replicas() -> None:
    objs = render(
        {
            "workers": {"gpu": {"enabled": True, "gpusPerWorker": 2}},
            "serve": {"model": {"numGpus": 1}},
        }
    )
    groups = objs["RayService"][0]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    gpu = next(g for g in groups if g["groupName"] == "gpu-workers")
    pod = gpu["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["nodeSelector"]
    model = next(
        d
        for d in serve_config(objs)["applications"][0]["deployments"]
        if d["name"] == "ModelReplica"
    )
    assert model["ray_actor_options"]["num_gpus"] == 1
    assert "gpu-workers" not in [
        g["groupName"]
        for g in render()["RayService"][0]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    ]


def test_external_redis_drops_the_statefulset_and_reads_the_password_from_a_secret() -> None:
    objs = render(
        {
            "redis": {
                "external": {
                    "enabled": True,
                    "host": "redis.prod",
                    "port": 6380,
                    "existingSecret": "redis-auth",
                }
            }
        }
    )
    assert "StatefulSet" not in objs
    assert "url" not in (config_of(objs).get("redis") or {})
    head = objs["RayService"][0]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    env = {e["name"]: e for e in head["spec"]["containers"][0]["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "redis-auth"
    assert env["ACR_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@redis.prod:6380/0"


def test_api_keys_come_from_a_secret_mounted_as_the_key_file() -> None:
    objs = render({"apiKeys": {"keys": ["k1", "k2"]}})
    secret = objs["Secret"][0]
    assert secret["stringData"]["api-keys"].split() == ["k1", "k2"]
    assert config_of(objs)["auth"]["api_keys_file"] == "/etc/acr/keys/api-keys"


def test_optional_ingress_and_service_monitor_render_when_enabled() -> None:
    objs = render(
        {"ingress": {"enabled": True, "className": "nginx"}, "serviceMonitor": {"enabled": True}}
    )
    assert objs["Ingress"][0]["spec"]["ingressClassName"] == "nginx"
    sm = objs["ServiceMonitor"][0]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"


@pytest.mark.parametrize(
    "values",
    [
        {"service": {"port": "eighty"}},
        {"serve": {"model": {"numGpus": -1}}},
        {"unknownKey": True},
        {"router": {"server": {"port": 70000}}},
        {"router": {"bogus": {}}},
        {"redis": {"persistence": {"enabled": "yes"}}},
    ],
)
def test_the_schema_rejects_wrong_types_and_unknown_keys(values: dict[str, Any]) -> None:
    with pytest.raises(HelmError):
        Chart.load(CHART_DIR).validate_schema(values)


def test_core_objects_validate_against_kubernetes_schemas() -> None:
    objs = render({"ingress": {"enabled": True}, "apiKeys": {"keys": ["k"]}})
    checked = 0
    for kind in ("ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget", "Ingress", "Secret"):
        for obj in objs[kind]:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            checked += 1
    assert checked >= 7
    rs = objs["RayService"][0]
    assert rs["apiVersion"] == "ray.io/v1"
    cluster = rs["spec"]["rayClusterConfig"]
    pod = cluster["headGroupSpec"]["template"]
    # Validate the pod templates KubeRay will create as real PodTemplates.
    for template in [pod] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        kubernetes_validate.validate(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "t"},
                "template": template,
            },
            K8S_VERSION,
            strict=True,
        )


def test_the_committed_values_schema_is_generated_from_the_config_model() -> None:
    committed = (CHART_DIR / "values.schema.json").read_text()
    assert committed == render_schema(), "run `python -m router.helm_schema`"


def test_the_kind_example_values_render_and_validate() -> None:
    values = yaml.safe_load((CHART_DIR / "ci" / "kind-values.yaml").read_text())
    Chart.load(CHART_DIR).validate_schema(values)
    objs = render(values)
    assert objs["RayService"][0]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
