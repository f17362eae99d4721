#!/usr/bin/env python3
"""Writes the Kubernetes files that are derived from the compose stack, so that there is one
source of truth for images, settings, secrets, limits and alert rules:

  docker-compose.yml + .env.example  ->  generated/<profile>/  (a Kustomize Component per
                                         profile: image tags, ConfigMaps, secret env, limits,
                                         commands) and base/secrets.env.example
  deploy/prometheus/alerts.yml       ->  base/prometheus-rule.yaml (a PrometheusRule)

Run it after changing any of those files; `--check` (run by tests/test_kubernetes.py) fails
when a generated file is stale:

  python deploy/kubernetes/generate.py [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"

SECRET_NAME = "parlance-secrets"
# The .env keys that hold secrets: they go to the Secret (base/secrets.env), never to a
# ConfigMap. Each must be in .env.example (checked below, so a rename cannot slip through).
SECRET_KEYS = ("POSTGRES_PASSWORD", "GATEWAY_API_KEYS", "GATEWAY_ADMIN_KEY", "HF_TOKEN")
# Secrets a service reads from its own environment (compose hands all of .env to every
# Parlance service; here each gets only its own). POSTGRES_PASSWORD reaches whoever's compose
# `environment` interpolates it.
SECRET_READERS = {
    "GATEWAY_KEY_ID_SECRET": "gateway",
    "GATEWAY_API_KEYS": "gateway",
    "GATEWAY_ADMIN_KEY": "gateway",
    "HF_TOKEN": "generator",
}
# Secrets only Kubernetes needs, with the reason (written into secrets.env.example).
KUBERNETES_SECRETS = {
    "GATEWAY_KEY_ID_SECRET": (
        "the secret behind static keys' opaque ids in logs and\n"
        "# metrics (openssl rand -hex 32), the same on every gateway pod so that ids agree\n"
        "# (compose's one host keeps it in a file on its volume; empty, each pod makes its own)"
    )
}
# Secrets that may stay empty (an empty admin key closes the admin routes; no HF token means
# public models only).
OPTIONAL_SECRETS = ("GATEWAY_ADMIN_KEY", "HF_TOKEN")
# .env.example keys that only compose reads (its own profile, Grafana, build arguments,
# published ports, resource limits): not service settings.
COMPOSE_ONLY = re.compile(
    r"^(COMPOSE_PROFILES|PARLANCE_VERSION|GF_\w+|DETOXIFY_SHA256|GATEWAY_PUBLISH_PORT"
    r"|\w+_CPUS|\w+_MEMORY)$"
)

# Compose service -> Kubernetes workload, per profile (prometheus and grafana are the
# cluster's monitoring stack's job here).
WORKLOADS = {
    "cpu": {"gateway": "gateway", "generator": "generator"},
    "gpu": {"gateway-gpu": "gateway", "generator-gpu": "generator"},
}
COMMON_WORKLOADS = {
    "safety": "safety",
    "history": "history",
    "redis": "redis",
    "postgres": "postgres",
}
# Kind and image name of each workload in base/ (the images transformer retags them).
BASE_IMAGES = {
    "gateway": "parlance/gateway",
    "generator": "parlance/generator",
    "safety": "parlance/safety",
    "history": "parlance/history",
    "redis": "redis",
    "postgres": "postgres",
}
STATEFULSETS = ("redis", "postgres")
# Parlance services read settings from a ConfigMap (parlance-<workload>); the third-party
# images get their few values inline.
PARLANCE = ("gateway", "generator", "safety", "history")
# Jobs that run a workload's image with its settings.
JOBS = {"history": ("history-migrate", "migrate")}
# Settings that differ from compose on purpose, with the reason (written into the env file).
KUBERNETES_ONLY = {
    "history": {
        "HISTORY_MIGRATE_ON_START": (
            "false",
            "the history-migrate Job upgrades the schema; pods never change it (README.md)",
        )
    }
}

_VAR = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")
_MEMORY = re.compile(r"^(\d+)([kmg])b?$", re.IGNORECASE)


@dataclass
class Workload:
    name: str
    image: str
    settings: dict[str, str] = field(default_factory=dict)
    # (name, value) in order; a value None means "from the Secret".
    env: list[tuple[str, str | None]] = field(default_factory=list)
    limits: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None


class SourceError(Exception):
    """A source file does not have the shape this script reads."""


def interpolate(value: str, secrets: set[str]) -> str:
    """Compose's ${VAR:-default} takes its default; ${SECRET} becomes Kubernetes' $(SECRET)
    (dependent environment variables) and the secret's name is added to `secrets`."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in SECRET_KEYS:
            secrets.add(name)
            return f"$({name})"
        if op == "-":
            return arg
        raise SourceError(f"docker-compose.yml: ${{{name}}} has no default and is no secret")

    return _VAR.sub(replace, value)


def memory(value: str) -> str:
    """Compose's binary units (1g, 512m) as Kubernetes quantities (1Gi, 512Mi)."""
    match = _MEMORY.match(value)
    if not match:
        raise SourceError(f"docker-compose.yml: memory limit {value!r} is not <n>[kmg]")
    return f"{match.group(1)}{match.group(2).upper()}i"


def env_example() -> dict[str, str]:
    """The settings .env.example sets (commented-out examples excluded)."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    commented = set(re.findall(r"^#\s*(\w+)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE))
    missing = [k for k in SECRET_KEYS if k not in values and k not in commented]
    if missing:
        raise SourceError(f".env.example no longer mentions the secret(s) {missing}")
    return values


def limits_of(service: dict[str, Any]) -> dict[str, str]:
    deploy = service.get("deploy", {}).get("resources", {})
    limits = deploy.get("limits", {})
    result = {}
    if "cpus" in limits:
        result["cpu"] = interpolate(str(limits["cpus"]), set())
    if "memory" in limits:
        result["memory"] = memory(interpolate(str(limits["memory"]), set()))
    for device in deploy.get("reservations", {}).get("devices", []):
        if device.get("driver") == "nvidia":
            result["nvidia.com/gpu"] = str(device.get("count", 1))
    return result


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def workload(name: str, service: dict[str, Any], dotenv: dict[str, str]) -> Workload:
    image = interpolate(service["image"], set())
    result = Workload(name, image, limits=limits_of(service))
    if "command" in service:
        result.command = [str(part) for part in service["command"]]
    secrets: set[str] = set()
    inline: list[tuple[str, str | None]] = []
    for key, raw in environment_of(service).items():
        value = interpolate(raw, secrets)
        if name in PARLANCE and "$(" not in value:
            result.settings[key] = value
        else:
            inline.append((key, value))
    if name in PARLANCE:
        prefix = name.upper() + "_"
        for key, value in dotenv.items():
            if key.startswith(prefix) and key not in SECRET_KEYS and not COMPOSE_ONLY.match(key):
                result.settings.setdefault(key, value)
    secrets |= {key for key, reader in SECRET_READERS.items() if reader == name}
    # Secrets first: Kubernetes expands $(NAME) only from variables defined before.
    result.env = [(key, None) for key in sorted(secrets)] + inline
    return result


def workloads(profile: str) -> list[Workload]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    dotenv = env_example()
    mapping = {**WORKLOADS[profile], **COMMON_WORKLOADS}
    missing = sorted(set(mapping) - set(compose))
    if missing:
        raise SourceError(f"docker-compose.yml has no service(s) {missing}")
    return [workload(k8s, compose[name], dotenv) for name, k8s in mapping.items()]


# --- rendering ----------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(header: str, *documents: Any) -> str:
    body = "---\n".join(
        yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100) for doc in documents
    )
    return header + body


def header(sources: str) -> str:
    return (
        "# GENERATED by deploy/kubernetes/generate.py: do not edit; change the source and rerun\n"
        "# it (tests/test_kubernetes.py fails while this file is stale).\n"
        f"# Source: {sources}.\n"
    )


def env_file(w: Workload) -> str:
    lines = [header("docker-compose.yml and .env.example").rstrip("\n")]
    # An env file holds one line per setting; multi-line values go to `literals` (component).
    lines += [f"{key}={value}" for key, value in w.settings.items() if "\n" not in value]
    for key, (value, why) in KUBERNETES_ONLY.get(w.name, {}).items():
        lines += [f"# Kubernetes only: {why}.", f"{key}={value}"]
    return "\n".join(lines) + "\n"


def env_entries(w: Workload) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for key, value in w.env:
        if value is None:
            ref: dict[str, Any] = {"name": SECRET_NAME, "key": key}
            if key in OPTIONAL_SECRETS:
                ref["optional"] = True
            entries.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
        else:
            entries.append({"name": key, "value": value})
    return entries


def container_patch(kind: str, name: str, container: dict[str, Any]) -> dict[str, Any]:
    api = "batch/v1" if kind == "Job" else "apps/v1"
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [container]}}},
    }


def patches(ws: list[Workload]) -> list[dict[str, Any]]:
    docs = []
    for w in ws:
        container: dict[str, Any] = {"name": w.name}
        if w.command:
            container["command"] = w.command
        if w.env:
            container["env"] = env_entries(w)
        if w.limits:
            container["resources"] = {"limits": w.limits}
        kind = "StatefulSet" if w.name in STATEFULSETS else "Deployment"
        docs.append(container_patch(kind, w.name, container))
        if w.name in JOBS and w.env:
            job, job_container = JOBS[w.name]
            docs.append(container_patch("Job", job, {"name": job_container, "env": env_entries(w)}))
    return docs


def images(ws: list[Workload]) -> list[dict[str, str]]:
    result = []
    for w in ws:
        name, _, tag = w.image.rpartition(":")
        if not name or "/" in tag:
            raise SourceError(f"docker-compose.yml: image {w.image!r} has no tag")
        entry = {"name": BASE_IMAGES[w.name]}
        if name != BASE_IMAGES[w.name]:
            entry["newName"] = name
        entry["newTag"] = tag
        result.append(entry)
    return result


def config_map(w: Workload) -> dict[str, Any]:
    generator: dict[str, Any] = {"name": f"parlance-{w.name}", "envs": [f"{w.name}.env"]}
    literals = [f"{key}={value}" for key, value in w.settings.items() if "\n" in value]
    if literals:
        generator["literals"] = literals
    return generator


def component(profile: str, ws: list[Workload]) -> dict[str, Any]:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "images": images(ws),
        "configMapGenerator": [config_map(w) for w in ws if w.name in PARLANCE],
        "patches": [{"path": "compose-patch.yaml"}],
    }


def prometheus_rule() -> str:
    rules = yaml.safe_load(ALERT_RULES.read_text())
    if not isinstance(rules, dict) or "groups" not in rules:
        raise SourceError(f"{ALERT_RULES.relative_to(ROOT)} has no `groups`")
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "parlance", "labels": {"app.kubernetes.io/part-of": "parlance"}},
        "spec": {"groups": rules["groups"]},
    }
    return dump(header("deploy/prometheus/alerts.yml"), doc)


def secrets_example() -> str:
    lines = [
        header(".env.example").rstrip("\n"),
        "# Copy to base/secrets.env (git ignores it) and fill in, as for compose's .env:",
        "#   cp deploy/kubernetes/base/secrets.env.example deploy/kubernetes/base/secrets.env",
        "# POSTGRES_PASSWORD: hex only (openssl rand -hex 24), it is embedded in database URLs.",
    ]
    lines += [f"{key}=" for key in SECRET_KEYS]
    for key, why in KUBERNETES_SECRETS.items():
        lines += [f"# Kubernetes only: {why}.", f"{key}="]
    return "\n".join(lines) + "\n"


def outputs() -> dict[Path, str]:
    files = {
        HERE / "base" / "prometheus-rule.yaml": prometheus_rule(),
        HERE / "base" / "secrets.env.example": secrets_example(),
    }
    for profile in WORKLOADS:
        folder = HERE / "generated" / profile
        ws = workloads(profile)
        source = f"docker-compose.yml (profile {profile}) and .env.example"
        files[folder / "kustomization.yaml"] = dump(header(source), component(profile, ws))
        files[folder / "compose-patch.yaml"] = dump(header(source), *patches(ws))
        for w in ws:
            if w.name in PARLANCE:
                files[folder / f"{w.name}.env"] = env_file(w)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is stale")
    args = parser.parse_args(argv)
    try:
        files = outputs()
    except SourceError as exc:
        print(f"generate.py: {exc}", file=sys.stderr)
        return 2
    stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)}", file=sys.stderr)
        if stale:
            print("run: python deploy/kubernetes/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
