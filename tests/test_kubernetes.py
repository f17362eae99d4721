"""deploy/kubernetes, checked without a cluster: every overlay renders with `kubectl kustomize`,
validates against the Kubernetes schemas (kubernetes-validate) and the vendored CRD schemas,
keeps the policies (probes, limits, non-root, pinned images, secrets from the Secret, network
isolation) and agrees with docker-compose.yml, .env.example and deploy/prometheus/alerts.yml.

kubectl is required, as promtool and docker-compose are for test_deploy.py: it ships in the
project's machine image; without it these tests fail with a message saying so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GENERATOR_METRICS = ROOT / "services/generator/src/parlance/generator/metrics.py"
SCHEMAS = K8S / "schemas"

OVERLAYS = ("cpu", "gpu", "cpu-external-datastores")
PROFILE_OF = {"cpu": "cpu", "gpu": "gpu", "cpu-external-datastores": "cpu"}
# The oldest Kubernetes the manifests claim (deploy/kubernetes/README.md: gRPC probes are GA
# since 1.27) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
# Compose service -> Kubernetes workload, per compose profile.
COMPOSE_SERVICES = {
    "cpu": {"gateway": "gateway", "generator": "generator"},
    "gpu": {"gateway-gpu": "gateway", "generator-gpu": "generator"},
}
COMMON_SERVICES = {s: s for s in ("safety", "history", "redis", "postgres")}
PARLANCE = ("gateway", "generator", "safety", "history")
GRPC_SERVICES = ("generator", "safety", "history")
SECRET_KEYS = {"POSTGRES_PASSWORD", "GATEWAY_API_KEYS", "GATEWAY_ADMIN_KEY", "HF_TOKEN"}
# Secrets compose does without (deploy/kubernetes/generate.py says why).
KUBERNETES_SECRETS = {"GATEWAY_KEY_ID_SECRET"}
# Settings the manifests set on purpose where compose does not (deploy/kubernetes/generate.py).
KUBERNETES_ONLY = {"history": {"HISTORY_MIGRATE_ON_START": "false"}}
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh-v1alpha1-ScaledObject.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com-v1-PodMonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com-v1-PrometheusRule.json",
}
KUBECTL_MISSING = (
    "kubectl is not installed: tests/test_kubernetes.py renders deploy/kubernetes with "
    "`kubectl kustomize` (https://kubernetes.io/docs/tasks/tools/; the project's machine image "
    "has it)"
)

Doc = dict[str, Any]


# --- rendering --------------------------------------------------------------------------------


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(KUBECTL_MISSING, pytrace=False)
    return path


def secrets_env() -> str:
    """base/secrets.env.example filled in, as a user would (hex values, as it asks)."""
    text = (K8S / "base" / "secrets.env.example").read_text()
    return re.sub(r"^(\w+)=$", lambda m: f"{m.group(1)}={os.urandom(12).hex()}", text, flags=re.M)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/kubernetes with a secrets.env of its own (never the user's)."""
    copy = tmp_path_factory.mktemp("k8s") / "kubernetes"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets.env"))
    (copy / "base" / "secrets.env").write_text(secrets_env())
    return copy


def kustomize(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def rendered(tree: Path) -> dict[str, list[Doc]]:
    out = {}
    for overlay in OVERLAYS:
        result = kustomize(tree / "overlays" / overlay)
        assert result.returncode == 0, f"kubectl kustomize overlays/{overlay}:\n{result.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return out


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def named(docs: list[Doc], kind: str, prefix: str) -> Doc:
    """A generated object (ConfigMap, Secret): its name carries a content hash."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix)]
    assert len(found) == 1, f"expected one {kind} {prefix}-<hash>, found {len(found)}"
    return found[0]


def workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def pod_spec(doc: Doc) -> Doc:
    return doc["spec"]["template"]["spec"]


def container(docs: list[Doc], name: str) -> Doc:
    for kind in WORKLOAD_KINDS:
        for doc in docs:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return pod_spec(doc)["containers"][0]
    raise AssertionError(f"no workload {name}")


# --- rendering and schemas ----------------------------------------------------------------------


def test_generated_files_are_current() -> None:
    """generated/, base/prometheus-rule.yaml and base/secrets.env.example are what
    generate.py makes of docker-compose.yml, .env.example and alerts.yml today."""
    result = subprocess.run(
        [sys.executable, str(K8S / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_service(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for name in PARLANCE:
        assert ("Deployment", name) in kinds
    expected = {
        ("Job", "history-migrate"),
        ("HorizontalPodAutoscaler", "gateway"),
        ("ScaledObject", "generator"),
        ("PrometheusRule", "parlance"),
    }
    assert expected <= kinds
    datastores = {("StatefulSet", "redis"), ("StatefulSet", "postgres")}
    if overlay.endswith("external-datastores"):
        assert not datastores & kinds
    else:
        assert datastores <= kinds
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert all(d["metadata"].get("namespace") == "parlance" for d in namespaced)


def test_rendering_without_secrets_env_says_which_file(tree: Path, tmp_path: Path) -> None:
    """The install step that copies secrets.env.example cannot be skipped silently."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(tree, copy, ignore=shutil.ignore_patterns("secrets.env"))
    result = kustomize(copy / "overlays" / "cpu")
    assert result.returncode != 0
    assert "secrets.env" in result.stderr


def test_missing_kubectl_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(pytest.fail.Exception, match="kubectl is not installed"):
        kubectl()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_kinds_validate(rendered: dict[str, list[Doc]], overlay: str, version: str) -> None:
    for doc in rendered[overlay]:
        if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} at {where}: {exc.message}")


def strict(schema: Any) -> Any:
    """The CRD schema with unknown fields rejected where Kubernetes would prune them (so a
    misspelt field fails here instead of vanishing on the server)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def crd_validator(api_version: str, kind: str) -> jsonschema.Draft4Validator:
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[(api_version, kind)]).read_text())
    # metadata is the API server's (ObjectMeta), not the CRD's to describe.
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft4Validator(strict(schema))


def crd_errors(doc: Doc) -> list[str]:
    validator = crd_validator(doc["apiVersion"], doc["kind"])
    return [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate(rendered: dict[str, list[Doc]], overlay: str) -> None:
    custom = [d for d in rendered[overlay] if (d["apiVersion"], d["kind"]) in CRD_SCHEMAS]
    assert {d["kind"] for d in custom} == {"ScaledObject", "PodMonitor", "PrometheusRule"}
    for doc in custom:
        errors = crd_errors(doc)
        assert not errors, f"{doc['kind']} {doc['metadata']['name']}: {errors}"


def test_custom_resource_validation_rejects_mistakes(rendered: dict[str, list[Doc]]) -> None:
    """The vendored-schema check can fail: a misspelt field and a wrong type are caught."""
    scaled = json.loads(json.dumps(one(rendered["cpu"], "ScaledObject", "generator")))
    scaled["spec"]["maxReplicas"] = 8
    assert any("maxReplicas" in e for e in crd_errors(scaled))
    monitor = json.loads(json.dumps(one(rendered["cpu"], "PodMonitor", "generator")))
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = 15
    assert crd_errors(monitor)


# --- policies -----------------------------------------------------------------------------------


def assert_hardened(where: str, pod: Doc, c: Doc) -> None:
    pod_sc, sc = pod.get("securityContext", {}), c.get("securityContext", {})
    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot"
    assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0, f"{where}: runs as root"
    assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
    assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities not dropped"
    assert sc.get("readOnlyRootFilesystem") is True, f"{where}: writable root filesystem"
    assert pod.get("automountServiceAccountToken") is False, f"{where}: service account token"


def assert_resources(where: str, c: Doc) -> None:
    resources = c.get("resources", {})
    for field in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            assert resource in resources.get(field, {}), f"{where}: no {resource} {field}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_probes_limits_and_runs_unprivileged(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    for doc in [*workloads(docs), *[d for d in docs if d["kind"] == "Job"]]:
        pod = pod_spec(doc)
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            where = f"{doc['kind']} {doc['metadata']['name']} container {c['name']}"
            assert_hardened(where, pod, c)
            assert_resources(where, c)
            if doc["kind"] != "Job":
                assert "readinessProbe" in c and "livenessProbe" in c, f"{where}: probes"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_the_services_own_health_checks(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    gateway = container(docs, "gateway")
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for name in GRPC_SERVICES:
        c = container(docs, name)
        grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == grpc_port, f"{name} {probe}"
    startup = container(docs, "generator")["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    # The model load: minutes on CPU, up to the image's 15-minute start period on GPU.
    assert budget >= (900 if PROFILE_OF[overlay] == "gpu" else 300)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(rendered: dict[str, list[Doc]], overlay: str) -> None:
    for doc in [*workloads(rendered[overlay]), one(rendered[overlay], "Job", "history-migrate")]:
        for c in pod_spec(doc)["containers"]:
            image = c["image"]
            name, _, tag = image.rpartition(":")
            assert name and tag and "/" not in tag, f"{image} has no tag"
            assert tag != "latest", f"{image}: `latest` is not a version"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_the_secret_object(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    secret = named(docs, "Secret", "parlance-secrets")
    assert set(secret["data"]) == SECRET_KEYS | KUBERNETES_SECRETS
    for cm in (d for d in docs if d["kind"] == "ConfigMap"):
        leaked = (SECRET_KEYS | KUBERNETES_SECRETS) & set(cm.get("data", {}))
        assert not leaked, f"ConfigMap {cm['metadata']['name']} holds secrets {leaked}"
    for doc in [*workloads(docs), one(docs, "Job", "history-migrate")]:
        for c in pod_spec(doc)["containers"]:
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if env["name"] in SECRET_KEYS | KUBERNETES_SECRETS:
                    assert ref, f"{c['name']}: {env['name']} must come from the Secret"
                if ref:
                    assert ref["name"] == secret["metadata"]["name"], f"{c['name']}: {ref}"
                    assert ref["key"] in secret["data"], f"{c['name']}: {ref}"
                for variable in re.findall(r"\$\((\w+)\)", env.get("value", "")):
                    defined = [e["name"] for e in c["env"]]
                    assert variable in defined[: defined.index(env["name"])], (
                        f"{c['name']}: {env['name']} uses $({variable}) before it is defined"
                    )


def test_env_example_secrets_are_all_known() -> None:
    """A new secret-looking setting in .env.example must be routed to the Secret."""
    keys = re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.M)
    secretish = {k for k in keys if re.search(r"PASSWORD|TOKEN|SECRET|_KEYS?$", k)}
    compose_only = {k for k in secretish if k.startswith("GF_")}
    assert secretish - compose_only - KUBERNETES_SECRETS == SECRET_KEYS


# --- the NetworkPolicy --------------------------------------------------------------------------


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        ok = {
            "In": present and value in expr.get("values", []),
            "NotIn": not present or value not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


def peer_allows(peer: Doc, source: tuple[str, dict[str, str]] | None) -> bool:
    """source: (namespace, pod labels), or None for a client outside the cluster."""
    if "ipBlock" in peer:
        return True
    if source is None:
        return False
    namespace, labels = source
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": namespace}
        if not selects(peer["namespaceSelector"], ns_labels):
            return False
        return selects(peer.get("podSelector", {}), labels)
    return namespace == "parlance" and selects(peer["podSelector"], labels)


def allowed(
    docs: list[Doc], target: str, port: str, source: tuple[str, dict[str, str]] | None
) -> bool:
    """Whether the namespace's NetworkPolicies let `source` reach the `port` (a port name) of
    the pods of workload `target`."""
    labels = {"app.kubernetes.io/name": target}
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    policies = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            port_ok = "ports" not in rule or any(p.get("port") == port for p in rule["ports"])
            peers = rule.get("from")
            source_ok = peers is None or any(peer_allows(p, source) for p in peers)
            if port_ok and source_ok:
                return True
    return False


def pod(name: str, namespace: str = "parlance") -> tuple[str, dict[str, str]]:
    return namespace, {"app.kubernetes.io/name": name}


@pytest.mark.parametrize("overlay", ("cpu", "gpu"))
def test_network_policy_isolates_all_but_the_gateway(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    deny = one(docs, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"]["podSelector"] == {} and deny["spec"]["policyTypes"] == ["Ingress"]
    assert not deny["spec"].get("ingress")
    outside, monitoring = None, pod("prometheus", "monitoring")
    stranger = pod("debug-shell", "default")

    assert allowed(docs, "gateway", "http", outside)
    if any(p["name"] == "metrics" for p in container(docs, "gateway")["ports"]):
        # The gateway's internal metrics port: Prometheus only.
        assert allowed(docs, "gateway", "metrics", monitoring)
        assert not allowed(docs, "gateway", "metrics", outside)
    for name in GRPC_SERVICES:
        assert allowed(docs, name, "grpc", pod("gateway")), f"gateway -> {name}"
        assert allowed(docs, name, "metrics", monitoring), f"monitoring -> {name} metrics"
        assert not allowed(docs, name, "grpc", monitoring), f"monitoring -> {name} grpc"
        for source in (outside, stranger, *(pod(o) for o in GRPC_SERVICES)):
            assert not allowed(docs, name, "grpc", source), f"{source} -> {name}"
    assert allowed(docs, "redis", "redis", pod("gateway"))
    for name in ("history", "history-migrate", "gateway"):
        assert allowed(docs, "postgres", "postgres", pod(name)), f"{name} -> postgres"
    for source in (outside, stranger, pod("generator"), pod("safety")):
        assert not allowed(docs, "postgres", "postgres", source), f"{source} -> postgres"
        assert not allowed(docs, "redis", "redis", source), f"{source} -> redis"
    assert not allowed(docs, "redis", "redis", pod("history"))


def test_network_policy_check_can_fail(rendered: dict[str, list[Doc]]) -> None:
    """Without the default deny, the gRPC services would be open: the evaluator notices."""
    docs = [d for d in rendered["cpu"] if d["metadata"]["name"] != "default-deny-ingress"]
    docs = [d for d in docs if d["metadata"]["name"] != "grpc-services"]
    assert allowed(docs, "generator", "grpc", None)


# --- agreement with compose, .env.example and deploy/prometheus -------------------------------


def compose_services(profile: str) -> dict[str, Doc]:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    mapping = {**COMPOSE_SERVICES[profile], **COMMON_SERVICES}
    return {k8s: services[name] for name, k8s in mapping.items()}


def compose_value(value: str) -> str:
    """${VAR:-default} -> default; ${SECRET...} -> $(SECRET), Kubernetes' spelling."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        if name in SECRET_KEYS:
            return f"$({name})"
        assert default is not None, f"compose ${{{name}}} has no default"
        return default

    return re.sub(r"\$\{(\w+)(:?-([^}]*)|:?\?[^}]*)?\}", replace, str(value))


def kubernetes_env(docs: list[Doc], name: str) -> dict[str, str]:
    """What a workload's container gets: its ConfigMap, then its env (secrets as $(NAME))."""
    c = container(docs, name)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        cm_name = source["configMapRef"]["name"]
        env.update(one(docs, "ConfigMap", cm_name).get("data", {}))
    for item in c.get("env", []):
        env[item["name"]] = item.get("value", f"$({item['name']})")
    return env


def memory(value: str) -> str:
    number, unit = re.fullmatch(r"(\d+)([kmg])b?", value.lower()).groups()  # type: ignore[union-attr]
    return f"{number}{unit.upper()}i"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_match_compose(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    for name, service in compose_services(PROFILE_OF[overlay]).items():
        if overlay.endswith("external-datastores") and name in ("redis", "postgres"):
            continue
        assert container(docs, name)["image"] == compose_value(service["image"]), name
    history = one(docs, "Job", "history-migrate")
    assert pod_spec(history)["containers"][0]["image"] == container(docs, "history")["image"]


@pytest.mark.parametrize("overlay", ("cpu", "gpu"))
def test_settings_and_limits_match_compose(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    for name, service in compose_services(PROFILE_OF[overlay]).items():
        expected = {k: compose_value(v) for k, v in (service.get("environment") or {}).items()}
        expected.update(KUBERNETES_ONLY.get(name, {}))
        actual = kubernetes_env(docs, name)
        for key in SECRET_KEYS - set(expected):
            actual.pop(key, None)  # compose passes these through .env (env_file)
        for key in KUBERNETES_SECRETS:
            actual.pop(key, None)
        if name == "postgres":
            actual.pop("PGDATA")  # where on the volume: the image's default is its root
        assert actual == expected, name
        limits = service["deploy"]["resources"]["limits"]
        c = container(docs, name)
        assert c["resources"]["limits"]["cpu"] == compose_value(limits["cpus"]), name
        assert c["resources"]["limits"]["memory"] == memory(compose_value(limits["memory"])), name
        if "command" in service:
            assert c["command"] == service["command"], name


def test_gpu_overlay_takes_the_gpu_from_compose(rendered: dict[str, list[Doc]]) -> None:
    service = compose_services("gpu")["generator"]
    gpus = service["deploy"]["resources"]["reservations"]["devices"][0]["count"]
    doc = one(rendered["gpu"], "Deployment", "generator")
    c = pod_spec(doc)["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
    assert kubernetes_env(rendered["gpu"], "generator")["GENERATOR_ENGINE"] == "vllm"
    assert pod_spec(doc)["nodeSelector"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec(doc)[
        "tolerations"
    ]
    shm = next(v for v in pod_spec(doc)["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": memory(service["shm_size"])}
    assert any(m["mountPath"] == "/dev/shm" for m in c["volumeMounts"])
    cpu = container(rendered["cpu"], "generator")
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_rule_is_alerts_yml(rendered: dict[str, list[Doc]], overlay: str) -> None:
    rule = one(rendered[overlay], "PrometheusRule", "parlance")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERT_RULES.read_text())["groups"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_monitors_scrape_every_service_as_its_compose_job(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    jobs = {j["job_name"] for j in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    for name in PARLANCE:
        monitor = one(docs, "PodMonitor", name)
        labels = one(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert selects(monitor["spec"]["selector"], labels)
        # The job name comes from this label: the same job names as prometheus.yml's, which
        # the alert rules name.
        assert labels[monitor["spec"]["jobLabel"]] == name and name in jobs
        ports = {p["name"] for p in container(docs, name)["ports"]}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports, f"{name}: {endpoint['port']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscalers(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    for name in ("gateway", "safety", "history"):
        hpa = one(docs, "HorizontalPodAutoscaler", name)
        assert hpa["spec"]["scaleTargetRef"]["name"] == name
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
        assert hpa["spec"]["minReplicas"] >= 2, f"{name}: one replica has no PDB headroom"
    scaled = one(docs, "ScaledObject", "generator")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "generator"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    metric = "parlance_generator_requests_waiting"
    assert metric in trigger["metadata"]["query"]
    assert f'"{metric}"' in GENERATOR_METRICS.read_text(), "the generator no longer exports it"
    # An autoscaled Deployment leaves `replicas` to its autoscaler (apply would reset it).
    for name in PARLANCE:
        assert "replicas" not in one(docs, "Deployment", name)["spec"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_services_are_headless_for_round_robin(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    gateway_env = kubernetes_env(docs, "gateway")
    for name in GRPC_SERVICES:
        service = one(docs, "Service", name)
        assert service["spec"]["clusterIP"] == "None", f"{name} must be headless"
        port = service["spec"]["ports"][0]["port"]
        target = gateway_env[f"GATEWAY_{name.upper()}_URL"]
        assert target.removeprefix("dns:///") == f"{name}:{port}"
    disruption = {d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert set(PARLANCE) <= disruption


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migrations_job_runs_history_migrate(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    job = pod_spec(one(docs, "Job", "history-migrate"))["containers"][0]
    assert job["args"] == ["migrate"]
    history = container(docs, "history")
    assert job["envFrom"] == history["envFrom"]
    assert job["env"] == history["env"]
    assert kubernetes_env(docs, "history")["HISTORY_MIGRATE_ON_START"] == "false"


def test_external_datastores_are_dns_aliases(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["cpu-external-datastores"]
    for name in ("postgres", "redis"):
        service = one(docs, "Service", name)
        assert service["spec"]["type"] == "ExternalName"
        assert "clusterIP" not in service["spec"]
    policies = {d["metadata"]["name"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert not policies & {"postgres", "redis"}


def gateway_metrics_port() -> int:
    """Where the gateway serves /metrics: GATEWAY_METRICS_PORT (its image's, else its
    settings' default) when it has one, else its HTTP port."""
    from parlance.gateway.config import GatewaySettings

    dockerfile = (ROOT / "services" / "gateway" / "Dockerfile").read_text()
    for name in ("METRICS_PORT", "PORT"):
        image = re.search(rf"GATEWAY_{name}=(\d+)", dockerfile)
        if image:
            return int(image.group(1))
        field = GatewaySettings.model_fields.get(name.lower())
        if field is not None:
            return int(field.default)
    raise AssertionError("the gateway has no port setting")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_is_scraped_where_it_serves_metrics(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    (endpoint,) = one(docs, "PodMonitor", "gateway")["spec"]["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in container(docs, "gateway")["ports"]}
    assert ports[endpoint["port"]] == gateway_metrics_port()
