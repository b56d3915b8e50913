"""The Helm chart's hardening, checked on the rendered manifests (and by checkov when found).

What the chart promises: Ray token auth and no public dashboard/client, NetworkPolicies that
let only the release's Ray pods (where the router runs) reach Redis and the Ray ports, a
password-protected Redis with `maxmemory` + `noeviction` on a pinned image, and a hardened
securityContext on every pod and container.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from helm_python import Chart, HelmError

pytestmark = pytest.mark.full

ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = ROOT / "helm" / "adaptive-compute-router"
KIND_VALUES = yaml.safe_load((CHART_DIR / "ci" / "kind-values.yaml").read_text())
FULLNAME = "acr-adaptive-compute-router"
NAMESPACE = "llm"
GPU_VALUES: dict[str, Any] = {
    "workers": {"gpu": {"enabled": True, "gpusPerWorker": 1}},
    "serve": {"model": {"numGpus": 1}},
}
EXTERNAL_REDIS: dict[str, Any] = {
    "redis": {"external": {"enabled": True, "host": "redis.prod", "existingSecret": "redis-auth"}}
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "kind": KIND_VALUES,
    "gpu": {**GPU_VALUES, "apiKeys": {"keys": ["k"]}, "ingress": {"enabled": True}},
    "external-redis": EXTERNAL_REDIS,
    "existing-secrets": {
        "redis": {"auth": {"existingSecret": "my-redis", "passwordKey": "pw"}},
        "ray": {"auth": {"secretName": "my-ray-token"}},
    },
}
# A password with every character that breaks a redis:// URL, and some that break shells.
NASTY_PASSWORD = "p/a#s?s%w@o:r d'\"$(x)`;\\"
TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def render(values: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Rendered objects grouped by kind."""
    out = Chart.load(CHART_DIR).render(values or {}, name="acr", namespace=NAMESPACE)
    objs: dict[str, list[dict[str, Any]]] = {}
    for path, text in out.items():
        if not path.endswith("NOTES.txt"):
            for doc in yaml.safe_load_all(text):
                if doc:
                    objs.setdefault(doc["kind"], []).append(doc)
    return objs


def render_error(values: dict[str, Any]) -> str:
    with pytest.raises(HelmError) as info:
        Chart.load(CHART_DIR).render(values, name="acr", namespace=NAMESPACE)
    return str(info.value)


def named(objs: dict[str, list[dict[str, Any]]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objs.get(kind, []) if o["metadata"]["name"] == name)


def cluster(objs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return objs["RayService"][0]["spec"]["rayClusterConfig"]


def ray_templates(objs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The pod templates KubeRay turns into pods: head and each worker group."""
    c = cluster(objs)
    out = {"head": c["headGroupSpec"]["template"]}
    out.update({g["groupName"]: g["template"] for g in c["workerGroupSpecs"]})
    return out


def pod_templates(objs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Every pod template in the release: the Ray pods and the bundled Redis."""
    out = ray_templates(objs)
    for sts in objs.get("StatefulSet", []):
        out[sts["metadata"]["name"]] = sts["spec"]["template"]
    return out


def redis_container(objs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return objs["StatefulSet"][0]["spec"]["template"]["spec"]["containers"][0]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# --- securityContext -------------------------------------------------------------------


def _assert_container_hardened(sc: dict[str, Any], where: str) -> None:
    assert sc.get("runAsNonRoot") is True, where
    assert sc.get("allowPrivilegeEscalation") is False, where
    assert sc.get("readOnlyRootFilesystem") is True, where
    assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
    assert not sc.get("capabilities", {}).get("add"), where
    assert not sc.get("privileged"), where
    assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
    assert sc.get("runAsUser", 1) != 0, where


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_pod_and_container_runs_hardened(name: str) -> None:
    objs = render(VALUE_SETS[name])
    templates = pod_templates(objs)
    assert len(templates) >= 2
    for where, template in templates.items():
        spec = template["spec"]
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, where
        assert isinstance(psc["runAsUser"], int) and psc["runAsUser"] > 0, where
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        for container in spec["containers"] + spec.get("initContainers", []):
            _assert_container_hardened(container["securityContext"], f"{where}/{container['name']}")
    # KubeRay's autoscaler sidecar, injected into the head pod, gets the same context.
    sidecar = cluster(objs)["autoscalerOptions"]["securityContext"]
    _assert_container_hardened(sidecar, "autoscaler")


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_the_read_only_root_filesystems_have_their_writable_paths(name: str) -> None:
    objs = render(VALUE_SETS[name])
    config = yaml.safe_load(objs["ConfigMap"][0]["data"]["config.yaml"])
    spool_dir = config["redis"]["spool_dir"]
    assert spool_dir.startswith("/") and spool_dir not in ("/tmp", "/home/ray"), spool_dir
    for where, template in ray_templates(objs).items():
        spec = template["spec"]
        empty = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        for path in ("/tmp", "/tmp/ray", "/home/ray"):
            assert mounts.get(path) in empty, f"{where}: {path}"
        # KubeRay shares Ray's /tmp/ray with the autoscaler by the volume name `ray-logs`.
        assert mounts["/tmp/ray"] == "ray-logs", where
        # The outcome spool outlives a killed router process on an emptyDir of the pod.
        assert mounts.get(spool_dir) in empty, f"{where}: outcome spool {spool_dir}"
    sidecar = {m["mountPath"] for m in cluster(objs)["autoscalerOptions"]["volumeMounts"]}
    assert {"/tmp", "/tmp/ray", TOKEN_MOUNT} <= sidecar
    for sts in objs.get("StatefulSet", []):
        redis = sts["spec"]["template"]["spec"]["containers"][0]
        assert "/data" in {m["mountPath"] for m in redis["volumeMounts"]}
        assert "--dir" in redis["args"]
        assert redis["args"][redis["args"].index("--dir") + 1] == "/data"


def test_the_ray_pods_run_as_the_user_of_the_dockerfiles_image() -> None:
    """runAsNonRoot only starts an image whose user is numeric and not 0."""
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)\s*$", text, flags=re.M)
    assert users, "the Dockerfile sets no USER: the image would run as root"
    final = users[-1].split(":")[0]
    assert final.isdigit() and int(final) != 0, f"USER {final}: use a numeric non-root uid"
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(final)
    assert values["securityContext"]["runAsUser"] == int(final)
    created = re.search(r"useradd[^\n]*--uid (\d+)", text)
    assert created and int(created[1]) == int(final)


def test_only_the_autoscaler_sidecar_gets_a_service_account_token() -> None:
    objs = render()
    head = ray_templates(objs)["head"]["spec"]
    assert head["automountServiceAccountToken"] is False
    volume = next(v for v in head["volumes"] if v["name"] == "autoscaler-token")
    sources = volume["projected"]["sources"]
    assert sources[0]["serviceAccountToken"]["path"] == "token"
    assert {"ca.crt"} == {
        i["path"] for s in sources if "configMap" in s for i in s["configMap"]["items"]
    }
    mounts = cluster(objs)["autoscalerOptions"]["volumeMounts"]
    token = next(m for m in mounts if m["name"] == "autoscaler-token")
    assert token == {"name": "autoscaler-token", "mountPath": TOKEN_MOUNT, "readOnly": True}
    # The Ray container (it runs the router and the model) has no token.
    assert "autoscaler-token" not in {m["name"] for m in head["containers"][0]["volumeMounts"]}


def test_the_schema_refuses_to_switch_the_hardening_off() -> None:
    chart = Chart.load(CHART_DIR)
    for values in (
        {"securityContext": {"runAsNonRoot": False}},
        {"securityContext": {"allowPrivilegeEscalation": True}},
        {"securityContext": {"privileged": True}},
        {"securityContext": {"capabilities": None}},
        {"podSecurityContext": {"runAsNonRoot": False}},
        {"podSecurityContext": {"seccompProfile": None}},
        {"redis": {"securityContext": {"runAsNonRoot": False}}},
        {"redis": {"podSecurityContext": {"runAsUser": 0}}},
    ):
        with pytest.raises(HelmError):
            chart.validate_schema(values)


# --- NetworkPolicy ---------------------------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a pod's labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, vals = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and labels.get(key) in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_admits(peer: dict[str, Any], pod: dict[str, Any], policy_ns: str) -> bool:
    if "ipBlock" in peer:
        return False  # the test sources are pods
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], pod["namespace_labels"]):
            return False
    elif pod["namespace"] != policy_ns:
        return False
    return _selects(peer.get("podSelector") or {}, pod["labels"])


def admits(
    policies: list[dict[str, Any]], target: dict[str, str], source: dict[str, Any], port: int
) -> bool:
    """Whether NetworkPolicy ingress lets `source` reach `target` (same namespace) on `port`."""
    selecting = [
        p
        for p in policies
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and _selects(p["spec"]["podSelector"], target)
    ]
    if not selecting:
        return True  # no policy isolates the pod
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            ports = rule.get("ports")
            if ports and not any(p.get("port") in (None, port) for p in ports):
                continue
            peers = rule.get("from")
            if not peers or any(
                _peer_admits(p, source, policy["metadata"]["namespace"]) for p in peers
            ):
                return True
    return False


def _pod(
    labels: dict[str, str], namespace: str = NAMESPACE, ns_labels: dict[str, str] | None = None
) -> dict[str, Any]:
    ns_labels = ns_labels or {"kubernetes.io/metadata.name": namespace}
    return {"labels": labels, "namespace": namespace, "namespace_labels": ns_labels}


OPERATOR = _pod(
    {"app.kubernetes.io/name": "kuberay-operator", "app.kubernetes.io/instance": "kuberay"},
    "ray-system",
)
STRANGER = _pod({"app": "something-else"})
OTHER_NS_STRANGER = _pod({"app": "x"}, "other")


def test_network_policies_let_only_the_router_reach_redis_and_ray() -> None:
    objs = render()
    policies = objs["NetworkPolicy"]
    assert {p["metadata"]["name"] for p in policies} == {f"{FULLNAME}-ray", f"{FULLNAME}-redis"}
    templates = ray_templates(objs)
    head = templates["head"]["metadata"]["labels"]
    worker = templates["cpu-workers"]["metadata"]["labels"]
    redis = objs["StatefulSet"][0]["spec"]["template"]["metadata"]["labels"]
    ray_pod, worker_pod = _pod(head), _pod(worker)
    # Each policy selects what it should, and only that.
    ray_policy = named(objs, "NetworkPolicy", f"{FULLNAME}-ray")["spec"]["podSelector"]
    redis_policy = named(objs, "NetworkPolicy", f"{FULLNAME}-redis")["spec"]["podSelector"]
    assert _selects(ray_policy, head) and _selects(ray_policy, worker)
    assert not _selects(ray_policy, redis)
    assert _selects(redis_policy, redis) and not _selects(redis_policy, head)
    # Redis: only the release's Ray pods (the router runs there), only on 6379.
    assert admits(policies, redis, ray_pod, 6379) and admits(policies, redis, worker_pod, 6379)
    for source in (STRANGER, OPERATOR, OTHER_NS_STRANGER):
        assert not admits(policies, redis, source, 6379)
    assert not admits(policies, redis, worker_pod, 6380)
    # Ray pods: each other on any port (GCS, raylet, object manager, worker ports).
    for port in (6379, 8076, 10001, 8265, 52365, 20000):
        assert admits(policies, head, worker_pod, port)
        assert admits(policies, worker, ray_pod, port)
    # The API from anyone; the dashboard only from the KubeRay operator; the rest from nobody.
    for target in (head, worker):
        for source in (STRANGER, OTHER_NS_STRANGER, OPERATOR):
            assert admits(policies, target, source, 8000)
        assert admits(policies, target, OPERATOR, 8265)
        for source in (STRANGER, OTHER_NS_STRANGER):
            for port in (8265, 10001, 6379, 8080, 52365):
                assert not admits(policies, target, source, port), (source, port)
        assert not admits(policies, target, OPERATOR, 10001)


def test_the_api_sources_and_extra_rules_are_values() -> None:
    gateway = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}
    prometheus = {
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    }
    objs = render({"networkPolicy": {"apiFrom": [gateway], "extraIngress": [prometheus]}})
    policies = objs["NetworkPolicy"]
    head = ray_templates(objs)["head"]["metadata"]["labels"]
    assert admits(policies, head, _pod({}, "gateway"), 8000)
    assert not admits(policies, head, STRANGER, 8000)
    assert admits(policies, head, _pod({}, "mon"), 8080)
    assert not admits(policies, head, _pod({}, "mon"), 8265)


def test_network_policies_follow_their_switches() -> None:
    assert "NetworkPolicy" not in render({"networkPolicy": {"enabled": False}})
    external = render(EXTERNAL_REDIS)
    assert [p["metadata"]["name"] for p in external["NetworkPolicy"]] == [f"{FULLNAME}-ray"]
    message = render_error(
        {"networkPolicy": {"enabled": False}, "ray": {"auth": {"enabled": False}}}
    )
    assert "dashboard" in message
    assert "KubeRay operator" in render_error({"networkPolicy": {"dashboardFrom": []}})


# --- Ray dashboard, client and auth ----------------------------------------------------


def test_ray_token_auth_is_on_and_the_client_port_is_not_published() -> None:
    objs = render()
    c = cluster(objs)
    assert c["authOptions"] == {"mode": "token"}
    head = c["headGroupSpec"]["template"]["spec"]["containers"][0]
    names = {p["name"] for p in head["ports"]}
    ports = {p["containerPort"] for p in head["ports"]}
    # KubeRay publishes exactly these on the head Service (plus metrics): no Ray client.
    assert 10001 not in ports and "client" not in names
    # The operator reaches the dashboard by the port named "dashboard" on the head Service.
    assert {"dashboard", "gcs-server", "serve"} <= names
    # Ray reads the token from the environment only; the chart must not set it itself.
    for template in ray_templates(objs).values():
        env = env_of(template["spec"]["containers"][0])
        assert "RAY_AUTH_TOKEN" not in env and "RAY_AUTH_MODE" not in env
    # The chart's own Service serves the API and nothing else.
    api = named(objs, "Service", FULLNAME)
    assert [p["targetPort"] for p in api["spec"]["ports"]] == [8000]
    secret = render({"ray": {"auth": {"secretName": "tok"}}})
    assert cluster(secret)["authOptions"] == {"mode": "token", "secretName": "tok"}
    assert "authOptions" not in cluster(render({"ray": {"auth": {"enabled": False}}}))


def test_ray_auth_needs_a_ray_that_has_it() -> None:
    assert "2.52" in render_error({"rayVersion": "2.40.0"})
    render({"rayVersion": "2.40.0", "ray": {"auth": {"enabled": False}}})


def test_the_image_ray_version_supports_token_auth() -> None:
    """The Ray in this environment (the image's version) reads RAY_AUTH_MODE=token."""
    ray = pytest.importorskip("ray")
    from ray._private.authentication import authentication_token_setup as setup

    assert setup.AUTH_MODE_ENV_VAR == "RAY_AUTH_MODE"
    major, minor = (int(x) for x in ray.__version__.split(".")[:2])
    assert (major, minor) >= (2, 52)


# --- Redis: password, maxmemory, image ---------------------------------------------------


def test_redis_takes_its_password_from_a_secret_file_and_the_router_the_same_secret() -> None:
    objs = render()
    secret = named(objs, "Secret", f"{FULLNAME}-redis")
    password = base64.b64decode(secret["data"]["redis-password"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    redis = redis_container(objs)
    script = " ".join(redis["command"])
    assert '--requirepass "$(cat /run/secrets/redis/password)"' in script
    assert "env" not in redis or not any("PASS" in e["name"] for e in redis["env"])
    volumes = {v["name"]: v for v in objs["StatefulSet"][0]["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in redis["volumeMounts"] if m["mountPath"] == "/run/secrets/redis")
    assert mount["readOnly"] is True
    source = volumes[mount["name"]]["secret"]
    assert source["secretName"] == f"{FULLNAME}-redis"
    assert source["items"] == [{"key": "redis-password", "path": "password"}]
    probe = " ".join(redis["readinessProbe"]["exec"]["command"])
    assert 'REDISCLI_AUTH="$(cat /run/secrets/redis/password)"' in probe
    for template in ray_templates(objs).values():
        ref = env_of(template["spec"]["containers"][0])["ACR_REDIS_PASSWORD"]
        assert ref["valueFrom"]["secretKeyRef"] == {
            "name": f"{FULLNAME}-redis",
            "key": "redis-password",
        }


def test_an_existing_redis_secret_replaces_the_generated_one() -> None:
    objs = render({"redis": {"auth": {"existingSecret": "mine", "passwordKey": "pw"}}})
    assert f"{FULLNAME}-redis" not in {s["metadata"]["name"] for s in objs.get("Secret", [])}
    volumes = objs["StatefulSet"][0]["spec"]["template"]["spec"]["volumes"]
    source = next(v["secret"] for v in volumes if "secret" in v)
    assert source["secretName"] == "mine" and source["items"][0]["key"] == "pw"
    env = env_of(ray_templates(objs)["head"]["spec"]["containers"][0])
    assert env["ACR_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "pw"}


def _walk_strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _walk_strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _walk_strings(v)]
    return [node] if isinstance(node, str) else []


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_no_password_is_written_into_a_pod_spec_or_configmap(name: str) -> None:
    objs = render(VALUE_SETS[name])
    secrets = [
        base64.b64decode(v).decode()
        for s in objs.get("Secret", [])
        for v in (s.get("data") or {}).values()
    ]
    not_secrets = [o for kind, items in objs.items() if kind != "Secret" for o in items]
    text = json.dumps(not_secrets)
    for value in secrets:
        for line in value.split():
            assert line not in text
    for where, template in pod_templates(objs).items():
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                if re.search(r"PASS|TOKEN|SECRET|AUTH", env["name"]):
                    assert "value" not in env, f"{where}: literal {env['name']}"
            args = container.get("command", []) + container.get("args", [])
            flag = [a for a in args if "requirepass" in a]
            assert all("$(cat " in a for a in flag), where
    config = yaml.safe_load(objs["ConfigMap"][0]["data"]["config.yaml"])
    url = config["redis"]["url"]
    assert urlsplit(url).password is None and "@" not in url
    assert all("://" not in s or "@" not in s for s in _walk_strings(not_secrets))


def test_a_password_in_the_router_config_is_refused() -> None:
    # The schema refuses the field while the router has none; once it has one, the chart
    # refuses it (it would land in the ConfigMap) and names the Secret values to use.
    message = render_error({"router": {"redis": {"password": "hunter2"}}})
    assert "existingSecret" in message or "'password' not allowed" in message


def test_the_external_redis_url_is_encoded_and_carries_no_credentials() -> None:
    objs = render(
        {"redis": {"external": {"enabled": True, "host": "evil@h/x#y?z", "port": 6380, "db": 2}}}
    )
    url = yaml.safe_load(objs["ConfigMap"][0]["data"]["config.yaml"])["redis"]["url"]
    parts = urlsplit(url)
    assert parts.username is None and parts.password is None
    assert unquote(parts.hostname or "") == "evil@h/x#y?z"
    assert (parts.port, parts.path, parts.query, parts.fragment) == (6380, "/2", "", "")
    # No password Secret named: nothing to send.
    env = env_of(ray_templates(objs)["head"]["spec"]["containers"][0])
    assert "ACR_REDIS_PASSWORD" not in env


def test_the_password_reaches_the_router_config_verbatim(tmp_path: Path) -> None:
    """The rendered ConfigMap plus the Secret-fed env give the router the password unchanged."""
    from router.config import RedisConfig, load_config

    if "password" not in RedisConfig.model_fields:
        pytest.skip("router.config.RedisConfig has no `password` field yet (ACR_REDIS_PASSWORD)")
    for values in ({}, EXTERNAL_REDIS):
        objs = render(values)
        path = tmp_path / "config.yaml"
        path.write_text(objs["ConfigMap"][0]["data"]["config.yaml"])
        env = env_of(ray_templates(objs)["head"]["spec"]["containers"][0])
        assert "secretKeyRef" in env["ACR_REDIS_PASSWORD"]["valueFrom"]
        cfg = load_config(path, env={"ACR_REDIS_PASSWORD": NASTY_PASSWORD})
        assert cfg.redis.password == NASTY_PASSWORD or (
            getattr(cfg.redis.password, "get_secret_value", lambda: None)() == NASTY_PASSWORD
        )
        assert urlsplit(cfg.redis.url).password is None


@pytest.mark.parametrize(
    ("redis_values", "maxmemory"),
    [
        ({}, str(int(1024**3 * 0.75))),
        ({"resources": {"limits": {"memory": "2Gi", "cpu": "1"}}}, str(int(2 * 1024**3 * 0.75))),
        (
            {"resources": {"limits": {"memory": "512Mi", "cpu": "1"}}},
            str(int(512 * 1024**2 * 0.75)),
        ),
        ({"resources": {"limits": {"memory": "1G", "cpu": "1"}}}, "750000000"),
        ({"resources": {"limits": {"memory": 2 * 1024**3, "cpu": "1"}}}, str(int(1.5 * 1024**3))),
        ({"maxmemoryPercent": 50}, str(1024**3 // 2)),
        ({"maxmemory": "700mb"}, "700mb"),
    ],
)
def test_redis_has_maxmemory_under_its_limit_and_never_evicts(
    redis_values: dict[str, Any], maxmemory: str
) -> None:
    args = redis_container(render({"redis": redis_values}))["args"]
    assert args[args.index("--maxmemory") + 1] == maxmemory
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args.count("--maxmemory-policy") == 1


def test_redis_without_a_memory_limit_or_maxmemory_fails() -> None:
    # null deletes the default limit (Helm merges values over the defaults).
    values = {"redis": {"resources": {"limits": {"memory": None}}}}
    assert "maxmemory" in render_error(values)
    assert "cannot read" in render_error({"redis": {"resources": {"limits": {"memory": "lots"}}}})


def test_images_are_pinned() -> None:
    objs = render(GPU_VALUES)
    images = [c["image"] for t in pod_templates(objs).values() for c in t["spec"]["containers"]]
    for image in images:
        name, _, digest = image.partition("@")
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", image
        assert re.match(r"v?\d+\.\d+\.\d+", tag), f"{image}: a floating tag"
    redis = redis_container(objs)["image"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine@sha256:[a-f0-9]{64}", redis)
    pinned = render({"image": {"digest": "sha256:" + "a" * 64, "tag": "1.2.3"}})
    head = ray_templates(pinned)["head"]["spec"]["containers"][0]["image"]
    assert head.endswith(":1.2.3@sha256:" + "a" * 64)


@pytest.mark.parametrize("tag", ["latest", "7", "7-alpine", "7.4", "7.4-alpine", "alpine", ""])
def test_the_schema_refuses_floating_redis_tags(tag: str) -> None:
    with pytest.raises(HelmError):
        Chart.load(CHART_DIR).validate_schema({"redis": {"image": {"tag": tag}}})


def test_the_schema_refuses_a_malformed_digest() -> None:
    chart = Chart.load(CHART_DIR)
    for values in ({"image": {"digest": "latest"}}, {"redis": {"image": {"digest": "sha256:xyz"}}}):
        with pytest.raises(HelmError):
            chart.validate_schema(values)


# --- The rendered Redis command line, run ----------------------------------------------


def _redis_binaries() -> tuple[str, str] | None:
    try:
        from router.serving.embedded_redis import redis_server_binary

        server = redis_server_binary()
    except Exception:  # noqa: BLE001 - no binary: skip
        return None
    cli = str(Path(server).with_name("redis-cli"))
    if not Path(cli).exists():
        cli = shutil.which("redis-cli") or ""
    return (server, cli) if cli else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_rendered_redis_command_starts_with_the_secret_password(tmp_path: Path) -> None:
    """Run the StatefulSet's command (paths moved to tmp) on a real redis-server."""
    redis = pytest.importorskip("redis")
    binaries = _redis_binaries()
    if binaries is None or shutil.which("sh") is None:
        pytest.skip("no redis-server/redis-cli binary")
    server, cli = binaries
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "redis-server").symlink_to(server)
    (bindir / "redis-cli").symlink_to(cli)
    secrets, data = tmp_path / "secrets", tmp_path / "data"
    secrets.mkdir()
    data.mkdir()
    (secrets / "password").write_text(NASTY_PASSWORD)
    container = redis_container(render({"redis": {"maxmemory": "2mb"}}))

    def moved(arg: str) -> str:
        return arg.replace("/run/secrets/redis", str(secrets)).replace("/data", str(data))

    port = _free_port()
    command = [moved(a) for a in container["command"]] + [moved(a) for a in container["args"]]
    command += ["--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, password=NASTY_PASSWORD)
        for _ in range(100):
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            raise AssertionError(proc.stdout.read() if proc.stdout else "redis did not start")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port).ping()
        # The password is not on the command line (ps) either.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        assert NASTY_PASSWORD not in cmdline
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        # noeviction: at maxmemory a write fails loudly and nothing written before is lost.
        written = 0
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            while written < 10_000:
                client.xadd("acr:outcomes", {"payload": "x" * 1024})
                written += 1
        assert 0 < written < 10_000
        assert client.xlen("acr:outcomes") == written
        # The readiness probe, on this port, with the password from the same file.
        probe = [moved(a) for a in container["readinessProbe"]["exec"]["command"]]
        probe[-1] = probe[-1].replace("redis-cli ping", f"redis-cli -p {port} ping")
        assert subprocess.run(probe, env=env, check=False).returncode == 0
        (secrets / "password").write_text("wrong")
        assert subprocess.run(probe, env=env, check=False).returncode != 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- checkov, the Kubernetes policy scanner ----------------------------------------------

# Checks the Ray pods skip by annotation (templates/_helpers.tpl, acr.rayCheckovSkips).
ALLOWED_SKIPS = {"CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_35", "CKV_K8S_40", "CKV_K8S_43"}


def _checkov() -> str:
    found = os.environ.get("CHECKOV") or shutil.which("checkov")
    if not found:
        message = (
            "checkov not found (set CHECKOV=/path/to/checkov; it needs its own venv: "
            "python3 -m venv /tmp/checkov && /tmp/checkov/bin/pip install checkov)"
        )
        if os.environ.get("ACR_REQUIRE_CHECKOV"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _scan_documents(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The rendered chart, plus the RayService's pod templates as the Pods KubeRay makes
    (checkov does not know the RayService kind, so it would not look inside)."""
    out = Chart.load(CHART_DIR).render(values, name="acr", namespace=NAMESPACE)
    docs = [
        d
        for path, text in out.items()
        if not path.endswith("NOTES.txt")
        for d in yaml.safe_load_all(text)
        if d
    ]
    objs: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        objs.setdefault(d["kind"], []).append(d)
    for group, template in ray_templates(objs).items():
        meta = {**template["metadata"], "name": f"{FULLNAME}-{group}", "namespace": NAMESPACE}
        docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]})
    return docs


def _run_checkov(directory: Path) -> dict[str, Any]:
    result = subprocess.run(
        [
            _checkov(),
            "-d",
            str(directory),
            "--framework",
            "kubernetes",
            "-o",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    return next(r for r in reports if r.get("check_type") == "kubernetes")


def test_checkov_finds_nothing_in_the_rendered_chart(tmp_path: Path) -> None:
    sets = {**VALUE_SETS, "digest-pinned": {"image": {"digest": "sha256:" + "b" * 64}}}
    sets.pop("kind")  # a local image (pullPolicy: Never, tag dev) for laptops
    for name, values in sets.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(_scan_documents(values)))
    report = _run_checkov(tmp_path)
    results = report["results"]
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({Path(c['file_path']).name})"
        for c in results["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert report["summary"]["parsing_errors"] == 0
    for check in results["skipped_checks"]:
        where = f"{check['check_id']} on {check['resource']} ({Path(check['file_path']).name})"
        assert check["check_id"] in ALLOWED_SKIPS, where
        assert check["resource"].startswith("Pod."), where  # only the Ray pods skip
        assert "-redis" not in check["resource"], where
        assert len(check["check_result"].get("suppress_comment") or "") > 20, where
        if Path(check["file_path"]).name == "digest-pinned.yaml":
            assert check["check_id"] != "CKV_K8S_43", where
    passed = {(c["check_id"], c["resource"]) for c in results["passed_checks"]}
    # The Ray pods were scanned, and each has its NetworkPolicy.
    for group in ("head", "cpu-workers", "gpu-workers"):
        assert ("CKV2_K8S_6", f"Pod.{NAMESPACE}.{FULLNAME}-{group}") in passed, group
        assert ("CKV_K8S_22", f"Pod.{NAMESPACE}.{FULLNAME}-{group}") in passed, group
    assert ("CKV_K8S_38", f"StatefulSet.{NAMESPACE}.{FULLNAME}-redis") in passed


def test_checkov_would_catch_a_regression(tmp_path: Path) -> None:
    """The scan is not vacuous: a writable root filesystem and a tag-only Redis fail it."""
    values = {
        "securityContext": {"readOnlyRootFilesystem": False},
        "redis": {"image": {"digest": ""}, "securityContext": {"readOnlyRootFilesystem": False}},
    }
    (tmp_path / "weak.yaml").write_text(yaml.safe_dump_all(_scan_documents(values)))
    failed = {
        (c["check_id"], c["resource"].split(".")[0])
        for c in _run_checkov(tmp_path)["results"]["failed_checks"]
    }
    expected = {("CKV_K8S_22", "Pod"), ("CKV_K8S_22", "StatefulSet"), ("CKV_K8S_43", "StatefulSet")}
    assert expected <= failed
