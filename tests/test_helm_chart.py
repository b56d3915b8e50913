"""The Helm chart, rendered and linted by Helm's own Go SDK (helm-python-sdk)."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python import Chart, HelmError, lint

from router.commands.helm_schema import render as render_schema
from router.config import AppConfig, load_config

pytestmark = pytest.mark.full

ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = ROOT / "helm" / "adaptive-compute-router"
KIND_VALUES = CHART_DIR / "ci" / "kind-values.yaml"
# The oldest Kubernetes the chart claims (Chart.yaml kubeVersion) that kubernetes-validate
# ships strict schemas for, and the newest it ships.
K8S_VERSIONS = ("1.30.0", "1.37.0")
#: a pool: the bundled model in the cluster (its own replicas) and an external server
POOL_VALUES: dict[str, Any] = {
    "router": {
        "backends": [
            {"name": "acr-bundled", "profiles": ["game24", "arithmetic"], "num_cpus": 2},
            {"name": "big", "kind": "openai", "base_url": "http://vllm.llm:8000/v1"},
        ]
    }
}
OPENAI_VALUES: dict[str, Any] = {
    "router": {"model": {"name": "big", "kind": "openai", "base_url": "http://vllm.llm:8000/v1"}}
}
GPU_VALUES: dict[str, Any] = {
    "workers": {"gpu": {"enabled": True, "gpusPerWorker": 2}},
    "serve": {"model": {"numGpus": 1}},
}


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


def render_error(values: dict[str, Any]) -> str:
    """The message of the render failure ``values`` must cause."""
    with pytest.raises(HelmError) as info:
        Chart.load(CHART_DIR).render(values, name="acr", namespace="llm")
    return str(info.value)


def model_deployment(objs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    deployments = serve_config(objs)["applications"][0]["deployments"]
    return next(d for d in deployments if d["name"] == "ModelReplica")


def config_of(objs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return yaml.safe_load(objs["ConfigMap"][0]["data"]["config.yaml"])


def serve_config(objs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return yaml.safe_load(objs["RayService"][0]["spec"]["serveConfigV2"])


@pytest.mark.parametrize("name", ["defaults", "kind", "gpu", "external-redis", "pool"])
def test_the_chart_lints_clean(name: str) -> None:
    values = {
        "defaults": None,
        "pool": POOL_VALUES,
        "kind": yaml.safe_load(KIND_VALUES.read_text()),
        "gpu": GPU_VALUES,
        "external-redis": {"redis": {"external": {"enabled": True, "host": "r"}}},
    }[name]
    result = lint(str(CHART_DIR), values, strict=True, kube_version="v1.30.0")
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


def test_the_rendered_configmap_parses_with_the_project_config_model(tmp_path: Path) -> None:
    local = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    local["policy"]["latency_slo_ms"] = 2500
    assert local["server"]["host"] == "127.0.0.1"  # what a laptop uses
    path = tmp_path / "config.yaml"
    path.write_text(render({"router": local})["ConfigMap"][0]["data"]["config.yaml"])
    cfg = load_config(path, env={})
    assert cfg.policy.latency_slo_ms == 2500
    assert cfg.redis.url == "redis://acr-adaptive-compute-router-redis:6379/0"
    assert cfg.server.host == "0.0.0.0"
    assert cfg.redis.spool_dir == "/var/lib/acr/outcomes"  # the pod's emptyDir
    # Every section of the local file arrives unchanged, except what the chart owns.
    owned = {("redis", "url"), ("redis", "spool_dir"), ("model", "num_cpus")}
    owned |= {("model", "num_gpus")}
    owned |= {("server", "host"), ("server", "port")}
    dumped = cfg.model_dump(mode="json")
    for section, fields in local.items():
        for field, value in (fields or {}).items():
            if (section, field) not in owned and field != "autoscaling":
                assert dumped[section][field] == value, f"{section}.{field}"


def test_a_model_setting_in_the_router_config_wins_and_both_outputs_agree() -> None:
    objs = render(
        {
            "router": {"model": {"num_cpus": 3, "autoscaling": {"max_replicas": 5}}},
            "serve": {"model": {"numCpus": 1, "minReplicas": 2, "maxReplicas": 2}},
        }
    )
    model = model_deployment(objs)
    assert model["ray_actor_options"] == {"num_cpus": 3, "num_gpus": 0}
    assert model["autoscaling_config"] == {
        "min_replicas": 2,
        "max_replicas": 5,
        "target_ongoing_requests": 8,
    }
    cfg = AppConfig(**config_of(objs))
    assert cfg.model.num_cpus == 3
    assert (cfg.model.autoscaling.min_replicas, cfg.model.autoscaling.max_replicas) == (2, 5)


def test_equal_min_and_max_replicas_render_a_fixed_replica_count() -> None:
    model = model_deployment(render({"serve": {"model": {"minReplicas": 3, "maxReplicas": 3}}}))
    assert model["num_replicas"] == 3
    assert "autoscaling_config" not in model


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"serve": {"model": {"numGpus": 1}}}, "workers.gpu.enabled"),
        ({"router": {"model": {"autoscaling": {"min_replicas": 4}}}}, "maxReplicas (2)"),
        ({"serve": {"verifier": {"enabled": True}}}, "reward_model_path"),
        ({"redis": {"external": {"enabled": True}}}, "redis.external.host"),
        ({"workers": {"cpu": {"enabled": False}}}, "worker group"),
    ],
)
def test_settings_that_cannot_deploy_fail_with_what_to_change(
    values: dict[str, Any], message: str
) -> None:
    assert message in render_error(values)


def test_serve_config_names_import_paths_and_deployments_that_exist() -> None:
    app = serve_config(render())["applications"][0]
    module, attr = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    from router.serving import app as router_app

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


def test_serve_config_passes_ray_serves_own_schema() -> None:
    from ray.serve.schema import DeploymentSchema, ServeDeploySchema

    fields = set(getattr(DeploymentSchema, "model_fields", None) or DeploymentSchema.__fields__)
    config = serve_config(render({**GPU_VALUES, "serve": {"model": {"resources": {"a": 1}}}}))
    parsed = ServeDeploySchema(**config)
    assert parsed.applications[0].import_path == "router.serving.app:app_builder"
    for deployment in config["applications"][0]["deployments"]:
        # Ray accepts unknown keys here silently; a typo would be ignored in the cluster.
        assert set(deployment) <= fields, deployment["name"]


@pytest.mark.parametrize("values", [None, POOL_VALUES, OPENAI_VALUES], ids=["one", "pool", "url"])
def test_the_app_builds_from_the_rendered_args_with_the_overridden_deployments(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, Any] | None
) -> None:
    import os

    from ray.serve._private.build_app import build_app

    from router.serving.app import app_builder

    for name in [n for n in os.environ if n.startswith("ACR_")]:
        monkeypatch.delenv(name)
    app = serve_config(render(values))["applications"][0]
    built = build_app(app_builder(app["args"]), name=app["name"])
    # Serve refuses a config that overrides a deployment the application does not define.
    assert {d.name for d in built.deployments} == {d["name"] for d in app["deployments"]}


def test_the_args_and_the_ingress_user_config_together_are_the_configmaps_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from router.live_config import LIVE_SECTIONS, with_live

    for name in [n for n in os.environ if n.startswith("ACR_")]:
        monkeypatch.delenv(name)
    values = {"router": {"policy": {"lambda_per_1k_tokens": 0.4}, "limits": {"max_n": 4}}}
    objs = render(values)
    app = serve_config(objs)["applications"][0]
    ingress = next(d for d in app["deployments"] if d["name"] == "RouterIngress")
    assert set(ingress["user_config"]) == {"policy", "limits"}
    # the live sections travel only as the user_config: a change to them rebuilds nothing
    assert not set(app["args"]["config"]) & set(LIVE_SECTIONS)
    served = with_live(AppConfig(**app["args"]["config"]), ingress["user_config"], "chart")
    assert served == AppConfig(**config_of(objs))
    assert served.policy.lambda_per_1k_tokens == 0.4 and served.limits.max_n == 4


def test_a_change_to_a_live_section_changes_only_the_ingress_user_config() -> None:
    before = render()
    after = render({"router": {"policy": {"lambda_per_1k_tokens": 0.9}}})
    app_before, app_after = (serve_config(o)["applications"][0] for o in (before, after))
    assert app_before["args"] == app_after["args"]
    assert app_before["deployments"] != app_after["deployments"]
    # ... and nothing of the Ray cluster, which KubeRay would otherwise rebuild
    assert (
        before["RayService"][0]["spec"]["rayClusterConfig"]
        == (after["RayService"][0]["spec"]["rayClusterConfig"])
    )


def test_pods_wait_for_the_longest_request_and_the_spool_flush_before_they_are_killed() -> None:
    from router.config import ServerConfig
    from router.serving.app import FLUSH_GRACE_S

    default_s = ServerConfig().max_request_timeout_ms / 1000
    for values, deadline_s in [
        (None, default_s),
        ({"router": {"server": {"max_request_timeout_ms": 300_000}}}, 300),
    ]:
        cluster = render(values)["RayService"][0]["spec"]["rayClusterConfig"]
        pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
            g["template"]["spec"] for g in cluster["workerGroupSpecs"]
        ]
        for pod in pods:
            env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
            drain_s = float(env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"])
            assert drain_s >= deadline_s + FLUSH_GRACE_S
            assert pod["terminationGracePeriodSeconds"] > drain_s


def test_a_pool_gets_replicas_for_its_in_cluster_model_and_none_for_its_external_url() -> None:
    objs = render(POOL_VALUES)
    deployments = {d["name"]: d for d in serve_config(objs)["applications"][0]["deployments"]}
    assert set(deployments) == {"RouterIngress", "ModelReplica-acr-bundled"}
    bundled = deployments["ModelReplica-acr-bundled"]
    assert bundled["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0}
    assert bundled["autoscaling_config"]["max_replicas"] == 2
    cfg = AppConfig(**config_of(objs))
    assert [b.name for b in cfg.backends] == ["acr-bundled", "big"]
    assert cfg.backends[0].num_cpus == 2 and cfg.backends[0].profiles == ["game24", "arithmetic"]
    assert cfg.backends[1].base_url == "http://vllm.llm:8000/v1"
    gpu_pool = {"router": {"backends": [{"name": "g", "num_gpus": 1}]}}
    assert "model replicas of g ask for 1 GPU" in render_error(gpu_pool)


def test_gpu_values_add_a_gpu_worker_group_and_gpu_replicas() -> None:
    objs = render(GPU_VALUES)
    groups = objs["RayService"][0]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    gpu = next(g for g in groups if g["groupName"] == "gpu-workers")
    assert gpu["rayStartParams"]["num-gpus"] == "2"
    pod = gpu["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 2}
    assert resources["requests"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": 2}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["nodeSelector"]
    assert model_deployment(objs)["ray_actor_options"]["num_gpus"] == 1
    assert config_of(objs)["model"]["num_gpus"] == 1
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
    assert "Secret" not in objs  # the chart makes a password only for its own Redis
    # The URL carries no credentials; the password arrives as ACR_REDIS_PASSWORD, whole.
    assert config_of(objs)["redis"]["url"] == "redis://redis.prod:6380/0"
    head = objs["RayService"][0]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    env = {e["name"]: e for e in head["spec"]["containers"][0]["env"]}
    assert env["ACR_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-auth",
        "key": "redis-password",
    }
    assert "ACR_REDIS_URL" not in env and "REDIS_PASSWORD" not in env


def test_the_in_cluster_redis_url_ignores_external_settings_while_external_is_off() -> None:
    objs = render({"redis": {"external": {"existingSecret": "leftover", "host": "x"}}})
    assert config_of(objs)["redis"]["url"] == "redis://acr-adaptive-compute-router-redis:6379/0"
    assert "StatefulSet" in objs
    head = objs["RayService"][0]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    env = {e["name"]: e for e in head["spec"]["containers"][0]["env"]}
    assert "ACR_REDIS_URL" not in env
    # The bundled Redis's own Secret, not the leftover external one.
    ref = env["ACR_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "acr-adaptive-compute-router-redis"


def test_every_ray_pod_mounts_the_config_and_keys_and_gets_the_redis_env() -> None:
    values = {
        **GPU_VALUES,
        "apiKeys": {"existingSecret": "keys"},
        "redis": {"external": {"enabled": True, "host": "r", "existingSecret": "pw"}},
    }
    cluster = render(values)["RayService"][0]["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]]
    templates += [g["template"] for g in cluster["workerGroupSpecs"]]
    assert len(templates) == 3
    for template in templates:
        container = template["spec"]["containers"][0]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/etc/acr/config.yaml", "/etc/acr/keys"} <= mounts
        env = {e["name"]: e for e in container["env"]}
        assert env["ACR_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "pw"
        secrets = {v["secret"]["secretName"] for v in template["spec"]["volumes"] if "secret" in v}
        assert secrets == {"keys"}


def test_api_keys_come_from_a_secret_mounted_as_the_key_file() -> None:
    objs = render({"apiKeys": {"keys": ["k1", "k2"]}})
    secret = next(s for s in objs["Secret"] if s["metadata"]["name"].endswith("-api-keys"))
    assert secret["stringData"]["api-keys"].split() == ["k1", "k2"]
    assert config_of(objs)["auth"]["api_keys_file"] == "/etc/acr/keys/api-keys"


def test_an_enabled_verifier_renders_verifier_replicas() -> None:
    objs = render(
        {
            "serve": {"verifier": {"enabled": True, "replicas": 2, "numGpus": 0.5}},
            "router": {"verifier": {"reward_model_path": "/models/rm"}},
        }
    )
    names = [d["name"] for d in serve_config(objs)["applications"][0]["deployments"]]
    assert names == ["RouterIngress", "ModelReplica", "RewardModelReplica"]
    verifier = serve_config(objs)["applications"][0]["deployments"][2]
    assert verifier["num_replicas"] == 2
    assert verifier["ray_actor_options"]["num_gpus"] == 0.5


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
        {"router": {"server": {"bogus": 1}}},
        {"router": {"policy": {"latency_slo_ms": "fast"}}},
        {"router": {"model": {"kind": "vllm"}}},
        {"workers": {"gpu": {"gpusPerWorker": 0}}},
        {"service": {"type": "Loadbalancer"}},
    ],
)
def test_the_schema_rejects_wrong_types_and_unknown_keys(values: dict[str, Any]) -> None:
    chart = Chart.load(CHART_DIR)
    with pytest.raises(HelmError):
        chart.validate_schema(values)
    # Rendering (what `helm install` does) applies the same schema.
    with pytest.raises(HelmError):
        chart.render(values, name="acr")


def test_the_schema_accepts_the_projects_example_config_under_router() -> None:
    local = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    Chart.load(CHART_DIR).validate_schema({"router": local})


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_core_objects_validate_against_kubernetes_schemas(k8s_version: str) -> None:
    objs = render({**GPU_VALUES, "ingress": {"enabled": True}, "apiKeys": {"keys": ["k"]}})
    checked = 0
    kinds = ("ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget", "Ingress", "Secret")
    for kind in kinds + ("NetworkPolicy",):
        for obj in objs[kind]:
            kubernetes_validate.validate(obj, k8s_version, strict=True)
            checked += 1
    assert checked >= 10
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
            k8s_version,
            strict=True,
        )


def _check_pod_template(template: dict[str, Any], where: str) -> None:
    containers = template["spec"]["containers"]
    assert containers and all(c["image"] and c["name"] for c in containers), where


def test_the_rayservice_has_the_structure_kuberay_requires() -> None:
    rs = render(GPU_VALUES)["RayService"][0]
    assert (rs["apiVersion"], rs["kind"]) == ("ray.io/v1", "RayService")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rs["metadata"]["name"])
    assert isinstance(rs["spec"]["serveConfigV2"], str)
    cluster = rs["spec"]["rayClusterConfig"]
    assert (
        cluster["rayVersion"]
        == yaml.safe_load((CHART_DIR / "values.yaml").read_text())["rayVersion"]
    )
    head = cluster["headGroupSpec"]
    _check_pod_template(head["template"], "head")
    # KubeRay takes rayStartParams as a map of strings.
    groups = [("head", head)] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    for name, group in groups:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), name
    names = [g["groupName"] for g in cluster["workerGroupSpecs"]]
    assert names == ["cpu-workers", "gpu-workers"]
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        _check_pod_template(group["template"], group["groupName"])
    ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert {8000, 8265, 6379} <= ports
    # KubeRay publishes the head container's ports on the head Service: not the Ray client.
    assert 10001 not in ports


def test_the_service_servicemonitor_and_ingress_point_at_the_serve_port_of_the_head() -> None:
    objs = render({"ingress": {"enabled": True}, "serviceMonitor": {"enabled": True}})
    svc = next(s for s in objs["Service"] if s["metadata"]["name"] == "acr-adaptive-compute-router")
    head = objs["RayService"][0]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    assert svc["spec"]["selector"].items() <= head["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == 8000
    sm = objs["ServiceMonitor"][0]
    assert (sm["apiVersion"], sm["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    backend = objs["Ingress"][0]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": svc["metadata"]["name"], "port": {"number": 8000}}
    # The workers' PDB must not select the head or Redis.
    pdb = objs["PodDisruptionBudget"][0]["spec"]["selector"]["matchLabels"]
    assert not pdb.items() <= head["metadata"]["labels"].items()


def test_the_committed_values_schema_is_generated_from_the_config_model() -> None:
    committed = (CHART_DIR / "values.schema.json").read_text()
    assert committed == render_schema(), "run `python -m router.commands.helm_schema`"


def test_the_kind_example_values_render_what_the_docs_promise() -> None:
    values = yaml.safe_load(KIND_VALUES.read_text())
    Chart.load(CHART_DIR).validate_schema(values)
    objs = render(values)
    groups = objs["RayService"][0]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert [(g["groupName"], g["replicas"]) for g in groups] == [("cpu-workers", 1)]
    assert model_deployment(objs)["num_replicas"] == 1
    assert "volumeClaimTemplates" not in objs["StatefulSet"][0]["spec"]
    head = objs["RayService"][0]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    assert head["spec"]["containers"][0]["image"] == "acr:dev"


def _documented_values() -> list[str]:
    """Dotted paths of values.yaml keys that carry a `# --` comment; fails on a bare leaf."""
    text = (CHART_DIR / "values.yaml").read_text()
    stack: list[tuple[int, str, bool]] = []
    documented: list[str] = []
    comment = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = True
            continue
        if not stripped or stripped.startswith("#") or stripped.startswith("-"):
            continue
        match = re.match(r"^( *)([^\s:#'\"][^:]*):(?:\s+(.*))?$", line)
        assert match, line
        indent, key, rest = len(match[1]), match[2], (match[3] or "").strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        covered = comment or any(doc for _, _, doc in stack)
        path = ".".join([k for _, k, _ in stack] + [key])
        if comment:
            documented.append(path)
        if rest and not covered:
            raise AssertionError(f"values.yaml: {path} has no `# --` comment")
        stack.append((indent, key, comment))
        comment = False
    return documented


def test_every_value_is_documented_in_values_yaml_and_the_chart_readme() -> None:
    documented = _documented_values()
    assert len(documented) > 40
    readme = (CHART_DIR / "README.md").read_text()
    missing = [p for p in documented if f"`{p}`" not in readme]
    assert not missing, f"chart README lacks {missing}"


def test_the_install_docs_match_the_chart() -> None:
    objs = render(yaml.safe_load(KIND_VALUES.read_text()))
    service = next(s for s in objs["Service"] if s["spec"]["ports"][0]["port"] == 8000)
    service = service["metadata"]["name"]
    for doc in (ROOT / "docs" / "kubernetes.md", CHART_DIR / "README.md"):
        text = doc.read_text()
        assert "helm install acr helm/adaptive-compute-router" in text, doc
        assert "ci/kind-values.yaml" in text, doc
        assert f"svc/{service} 8000:8000" in text, doc
        assert f"rayservice {objs['RayService'][0]['metadata']['name']}" in text, doc
    notes = Chart.load(CHART_DIR).render({}, name="acr", namespace="llm")
    text = next(v for k, v in notes.items() if k.endswith("NOTES.txt"))
    assert f"svc/{service} 8000:8000" in text


def test_the_dockerfile_builds_what_the_chart_runs() -> None:
    text = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    assert args["BASE_IMAGE"] == "python:3.11-slim"
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert args["RAY_VERSION"] == values["rayVersion"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch_pin = next(d for d in project["project"]["dependencies"] if d.startswith("torch=="))
    assert args["TORCH_VERSION"] == torch_pin.split("==")[1]
    for package in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        name = package.rstrip("*")
        assert re.search(rf"^COPY {name} \./{name}$", text, flags=re.M), name
    assert (ROOT / "backends" / "bundled" / "model" / "bundle.json").is_file()
    assert "backends/bundled/model" not in (ROOT / ".dockerignore").read_text()
