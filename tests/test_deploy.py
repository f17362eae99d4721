"""The deployment files: docker-compose.yml, the Dockerfiles, deploy/prometheus, deploy/grafana.

docker-compose and promtool come from scripts/install-system-deps.sh (Debian packages); the
tests that need one skip only when it is missing. Nothing here builds images or starts
containers: that needs a Docker daemon, and the stack's behaviour is tested as processes in
the other tests of this folder.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from parlance.testing.processes import _load_devstack

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
DOCKERFILES = sorted(ROOT.glob("services/*/Dockerfile*"))
PROFILES = ("cpu", "gpu")
# Values .env.example leaves empty on purpose: the user must choose them.
REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "GF_SECURITY_ADMIN_PASSWORD")


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    return None


COMPOSE = compose_command()
PROMTOOL = shutil.which("promtool")
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose is not installed (scripts/install-system-deps.sh)"
)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (scripts/install-system-deps.sh)"
)


def env_from_example(fill_secrets: bool = True) -> str:
    """.env.example with the required secrets filled in, as a user would."""
    text = ENV_EXAMPLE.read_text()
    if fill_secrets:
        for name in REQUIRED_SECRETS:
            text, count = re.subn(
                rf"^{name}=$", f"{name}={secrets.token_hex(12)}", text, flags=re.MULTILINE
            )
            assert count == 1, f".env.example should have an empty {name}= line"
    return text


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A compose project directory with a .env of its own (never the user's .env): the compose
    file copied, the folders it builds from and mounts linked."""
    shutil.copy(COMPOSE_FILE, tmp_path / COMPOSE_FILE.name)
    for folder in ("services", "deploy"):
        (tmp_path / folder).symlink_to(ROOT / folder, target_is_directory=True)
    (tmp_path / ".env").write_text(env_from_example())
    yield tmp_path


def run_compose(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None
    return subprocess.run(
        [*COMPOSE, *args], cwd=project, capture_output=True, text=True, timeout=120
    )


def compose_model() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def active_services(profile: str) -> dict[str, dict[str, Any]]:
    """The services compose starts with this one profile active."""
    return {
        name: service
        for name, service in compose_model()["services"].items()
        if not service.get("profiles") or profile in service["profiles"]
    }


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    logical = ""
    in_heredoc: str | None = None
    for line in path.read_text().splitlines():
        if in_heredoc is not None:
            if line.strip() == in_heredoc:
                in_heredoc = None
            continue
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if logical and stripped.startswith("#"):
            continue
        logical += " " + stripped.rstrip("\\").strip() if logical else stripped.rstrip("\\")
        if stripped.endswith("\\"):
            continue
        heredoc = re.search(r"<<-?'?\"?(\w+)'?\"?", logical)
        if heredoc and logical.split()[0].upper() == "RUN":
            in_heredoc = heredoc.group(1)
        keyword, _, rest = logical.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        logical = ""
    return instructions


# --- docker-compose ---------------------------------------------------------------------------


@needs_compose
def test_compose_config_default_stack(project: Path) -> None:
    """`docker compose up` as a user runs it: .env from .env.example (COMPOSE_PROFILES=cpu)."""
    result = run_compose(project, "config", "-q")
    assert result.returncode == 0, result.stderr


@needs_compose
@pytest.mark.parametrize("profile", PROFILES)
def test_compose_config_each_profile(project: Path, profile: str) -> None:
    result = run_compose(project, "--profile", profile, "config", "-q")
    assert result.returncode == 0, result.stderr


@needs_compose
def test_compose_refuses_an_empty_secret(project: Path) -> None:
    (project / ".env").write_text(env_from_example(fill_secrets=False))
    result = run_compose(project, "config", "-q")
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_env_example_selects_the_cpu_stack() -> None:
    assert re.search(r"^COMPOSE_PROFILES=cpu$", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_is_one_complete_stack(profile: str) -> None:
    """What compose checks only at `up`: every dependency is enabled in the profile, exactly
    one service answers to each name the gateway and Prometheus use, no host port twice."""
    services = active_services(profile)
    names: dict[str, list[str]] = {}
    for name, service in services.items():
        aliases = (service.get("networks") or {}).get("default", {}) or {}
        for answer in {name, *aliases.get("aliases", [])}:
            names.setdefault(answer, []).append(name)
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} needs {dependency}, off in profile {profile}"
    for needed in ("gateway", "generator", "safety", "history", "redis", "postgres", "prometheus"):
        assert len(names.get(needed, [])) == 1, (
            f"profile {profile}: {needed} -> {names.get(needed)}"
        )
    published = [
        str(port).rsplit(":", 1)[0] for s in services.values() for port in s.get("ports", [])
    ]
    assert len(published) == len(set(published)), published


def test_the_cpu_stack_serves_and_routes_what_make_up_does() -> None:
    """Compose's CPU profile (and the Kubernetes overlay generated from it) runs the models,
    the alias, the default answer length and the intent route file that `make up` runs, so
    that both deployments answer alike; the route file's path is the one the gateway image
    puts it at."""
    devstack = _load_devstack()
    services = active_services("cpu")
    generator = services["generator"]["environment"]
    gateway = services["gateway"]["environment"]
    assert json.loads(generator["GENERATOR_MODELS"]) == devstack.MAKE_UP_MODELS
    assert json.loads(gateway["GATEWAY_MODEL_ALIASES"]) == devstack.MAKE_UP_ALIASES
    assert gateway["GATEWAY_DEFAULT_MAX_TOKENS"] == devstack.MAKE_UP_DEFAULT_MAX_TOKENS
    routes = gateway["GATEWAY_INTENT_ROUTES"]
    shipped = devstack.MAKE_UP_INTENT_ROUTES.relative_to(ROOT).as_posix()
    assert ("COPY", f"{shipped} {routes}") in dockerfile_instructions(
        ROOT / "services" / "gateway" / "Dockerfile"
    )
    # The other settings every gateway has are kept (the profile's list adds to them).
    assert gateway["GATEWAY_GENERATOR_URL"] == "generator:50051"


def test_every_compose_service_has_a_healthcheck() -> None:
    for name, service in compose_model()["services"].items():
        if "healthcheck" in service:
            assert not service["healthcheck"].get("disable"), name
            continue
        build = service.get("build")
        assert build, f"{name}: no healthcheck in compose and no Dockerfile of ours"
        dockerfile = ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
        keywords = [keyword for keyword, _ in dockerfile_instructions(dockerfile)]
        assert "HEALTHCHECK" in keywords, f"{name}: {dockerfile.name} has no HEALTHCHECK"


def test_every_depends_on_waits_for_healthy() -> None:
    for name, service in compose_model()["services"].items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on as a list does not wait"
        for dependency, condition in depends_on.items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"


def test_compose_services_restart_limit_and_drop_root() -> None:
    for name, service in compose_model()["services"].items():
        assert service.get("restart") == "unless-stopped", name
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("cpus") and limits.get("memory"), f"{name}: no resource limits"
        if "build" not in service:  # ours drop root in their Dockerfile (tested below)
            assert service.get("user") not in (None, "root", "0"), f"{name}: runs as root"
        # ${VAR:-default} as compose resolves it without the variable set.
        image = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", service.get("image", ""))
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned"


def test_gpu_generator_reserves_an_nvidia_gpu() -> None:
    generator = compose_model()["services"]["generator-gpu"]
    devices = generator["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert generator["build"]["dockerfile"] == "services/generator/Dockerfile.gpu"


def test_secrets_come_from_the_environment_not_the_files() -> None:
    """No literal password in compose: they are ${...} references to .env."""
    for name, service in compose_model()["services"].items():
        environment = service.get("environment", {})
        for key, value in environment.items():
            # TOKEN as in HF_TOKEN; not a count of tokens (GATEWAY_DEFAULT_MAX_TOKENS).
            if re.search(r"PASSWORD|SECRET|TOKEN(?!S$)|_KEYS?$", key):
                assert "${" in str(value), f"{name}: {key} is written into the compose file"
    for dockerfile in DOCKERFILES:
        for keyword, rest in dockerfile_instructions(dockerfile):
            if keyword in ("ENV", "ARG"):
                assert not re.search(r"PASSWORD|SECRET|TOKEN|API_KEY", rest), dockerfile


# --- Dockerfiles ------------------------------------------------------------------------------


def test_every_service_has_dockerfiles() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in DOCKERFILES}
    for service in ("gateway", "generator", "safety", "history"):
        assert f"services/{service}/Dockerfile" in names
    assert "services/generator/Dockerfile.gpu" in names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_dockerfile_conventions(dockerfile: Path) -> None:
    instructions = dockerfile_instructions(dockerfile)
    keywords = [keyword for keyword, _ in instructions]

    stages: list[str] = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--platform")]
            image = words[0]
            # An earlier stage, by name or chosen by a build argument (FROM runtime-${ARG}).
            pattern = r"[\w.-]+".join(map(re.escape, re.split(r"\$\{\w+\}", image)))
            if not any(re.fullmatch(pattern, earlier) for earlier in stages):
                name = image.rsplit("/", 1)[-1]
                assert ":" in name or "@sha256:" in image, f"FROM {image} has no tag"
                assert not name.endswith(":latest"), f"FROM {image} is not pinned"
            if len(words) == 3 and words[1].upper() == "AS":
                stages.append(words[2])

    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users, "no USER: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert keywords.index("USER") < max(
        i for i, k in enumerate(keywords) if k in ("ENTRYPOINT", "CMD")
    )

    for keyword, rest in instructions:
        if keyword in ("ENTRYPOINT", "CMD"):
            assert rest.startswith("["), f"{keyword} is not in exec form: {rest}"
            json.loads(rest)
        if keyword == "HEALTHCHECK" and rest.strip() != "NONE":  # NONE: a job, not a server
            command = rest.split(" CMD ", 1)[1].strip()
            assert command.startswith("["), f"HEALTHCHECK is not in exec form: {command}"
            json.loads(command)
    assert "HEALTHCHECK" in keywords


def test_gpu_dockerfile_matches_the_vllm_pin() -> None:
    """The vLLM base image and the `vllm` extra must move together."""
    pyproject = (ROOT / "services" / "generator" / "pyproject.toml").read_text()
    pin = re.search(r'"vllm==([^"]+)"', pyproject)
    assert pin, "the generator's vllm extra is not pinned"
    dockerfile = ROOT / "services" / "generator" / "Dockerfile.gpu"
    base = next(rest for keyword, rest in dockerfile_instructions(dockerfile) if keyword == "FROM")
    if base.startswith("vllm/"):
        assert base.endswith(f":v{pin.group(1)}"), base
    assert "GENERATOR_ENGINE=vllm" in dockerfile.read_text()


# --- Prometheus and Grafana ---------------------------------------------------------------------


@needs_promtool
def test_promtool_check_config() -> None:
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERT_RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Each dashboard query, with Grafana's variables given values, parses as PromQL
    (checked by promtool as recording rules)."""
    rules = [
        {"record": f"parlance:dashboard_query_{i}", "expr": grafana_to_promql(expr)}
        for i, expr in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_every_service() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for sc in job["static_configs"]
        for target in sc["targets"]
    }
    assert {"gateway:9100", "generator:9101", "safety:9102", "history:9103"} <= targets


def test_alerts_cover_the_operational_risks() -> None:
    exprs = " ".join(alert_queries())
    assert "up{" in exprs or re.search(r"\bup\b", exprs)
    assert "parlance_gateway_http_requests_total" in exprs and '"5.."' in exprs
    assert "parlance_gateway_time_to_first_token_seconds_bucket" in exprs
    assert "parlance_gateway_history_outbox_depth" in exprs


def test_grafana_datasource_matches_the_dashboards() -> None:
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    uids = {d["uid"] for d in datasources["datasources"]}
    assert DASHBOARDS, "no dashboard JSON in deploy/grafana/dashboards"
    for dashboard in DASHBOARDS:
        for node in walk(json.loads(dashboard.read_text())):
            source = node.get("datasource")
            if isinstance(source, dict):
                assert source.get("uid") in uids, f"{dashboard.name}: {source}"


def test_every_queried_metric_is_declared() -> None:
    """Names in alert rules and dashboards exist in some service's metrics.py, as exposed."""
    declared = declared_metric_series()
    assert declared, "found no metric declarations"
    queries = [*alert_queries(), *dashboard_queries()]
    used = {name for query in queries for name in re.findall(r"\bparlance_[a-z0-9_]+\b", query)}
    assert used, "the alerts and dashboards query no parlance_ metric"
    missing = sorted(used - declared)
    assert not missing, f"not declared in any services/*/src/**/metrics.py: {missing}"


# --- helpers --------------------------------------------------------------------------------


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def dashboard_queries() -> list[str]:
    return [
        node["expr"]
        for dashboard in DASHBOARDS
        for node in walk(json.loads(dashboard.read_text()))
        if isinstance(node.get("expr"), str)
    ]


def alert_queries() -> list[str]:
    rules = yaml.safe_load(ALERT_RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def grafana_to_promql(expr: str) -> str:
    for variable in ("$__rate_interval", "$__interval", "$__range"):
        expr = expr.replace(variable, "5m")
    return expr


# prometheus_client metric classes and the series each exposes (counters gain _total).
SERIES_SUFFIXES = {
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "Summary": ("", "_sum", "_count", "_created"),
    "Info": ("_info",),
    "Enum": ("",),
}


def declared_metric_series() -> set[str]:
    """Every series name the services' metrics.py files expose, from their source."""
    series: set[str] = set()
    for path in ROOT.glob("services/*/src/**/metrics.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            kind = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if kind not in SERIES_SUFFIXES or not node.args:
                continue
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            name = first.value
            if kind == "Counter":
                name = name.removesuffix("_total")
            series.update(name + suffix for suffix in SERIES_SUFFIXES[kind])
    return series
