"""Runs the whole Parlance stack as local processes: `make up` and the cross-service tests.

    python scripts/devstack.py            # fixed ports: gateway on http://127.0.0.1:8000
    python scripts/devstack.py --help

It picks Redis (REDIS_URL if it answers, else one it starts itself when redis-server is
installed, else none: the gateway then warns and uses per-process fallbacks), starts the
generator, safety and history services, waits until each reports SERVING on the gRPC health
service, starts the gateway, waits for /readyz, and prints how to call it. Ctrl-C (or SIGTERM)
stops every process, gracefully first.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def _say(message: str) -> None:
    print(f"[parlance] {message}", flush=True)


_HANDED_OUT: set[int] = set()


def _ephemeral_floor() -> int:
    """The lowest port the kernel gives outgoing connections (and bind(0)) on this machine."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free now for a service started soon after.

    Chosen below the kernel's ephemeral range: a port from bind(0) lies inside it, where any
    outgoing connection of the test run may take it as its source port before the service binds
    (CI lost a stack to exactly that). Ports already handed out by this process are skipped, so
    two services of one stack never get the same one.
    """
    floor = _ephemeral_floor()
    low = 20000 if floor > 21000 else 1024
    candidates = list(range(low, min(floor, 32768)))
    random.shuffle(candidates)
    for port in candidates[:200]:
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:  # a machine whose ephemeral range starts low: the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _without_password(url: str) -> str:
    """A Redis URL as it may be printed: its password replaced (REDIS_URL may carry one)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def redis_answers(url: str, timeout_s: float = 0.5) -> bool:
    """PING over a raw socket, so this script needs no Redis client."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=timeout_s
        ) as sock:
            if parsed.password:
                sock.sendall(f"AUTH {parsed.password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis_server(port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server of our own on a loopback port (a free one unless given: fault tests
    restart it on the same one), keeping nothing on disk; returns the process and its URL.
    RuntimeError when redis-server is missing or does not answer."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = port or free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        if redis_answers(url):
            return process, url
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not answer")


class StartupError(RuntimeError):
    """`make up` cannot start as configured (said in one line, no traceback)."""


class StartupInterrupted(Exception):
    """Ctrl-C or SIGTERM while the stack was starting."""


def port_free(port: int) -> bool:
    """Whether a service could bind 127.0.0.1:`port` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class ServiceProcess:
    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    grpc_port: int | None = None
    http_port: int | None = None
    metrics_port: int | None = None
    # The environment setting of each port (for messages): {"gRPC": "SAFETY_PORT", ...}.
    port_settings: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,  # Ctrl-C in the terminal reaches us, not the children
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        if not self.running:
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait(5)

    def pause(self) -> None:
        """SIGSTOP: the process stops answering but keeps its sockets (a hung dependency)."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGCONT)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def grpc_serving(port: int, timeout_s: float = 1.0) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Stack:
    """The four services (and maybe a Redis) as processes."""

    data_dir: Path
    fixed_ports: bool = True
    api_key: str = ""
    redis_url: str | None = None
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    # Asked between start-up steps: Ctrl-C while the services load stops them then, not after.
    stop_requested: Callable[[], bool] = lambda: False
    _redis: subprocess.Popen[bytes] | None = None

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.services['gateway'].http_port}"

    def _port(self, fixed: int, setting: str) -> int:
        """A fixed port (`make up`: its default, or the service's own setting from the
        environment, such as GATEWAY_PORT), or any free one (the test stacks)."""
        if not self.fixed_ports:
            return free_port()
        value = os.environ.get(setting, "")
        if not value:
            return fixed
        try:
            port = int(value)
        except ValueError:
            port = 0
        # -1 turns a service's metrics listener off (its own setting's meaning).
        if value.strip() == "-1" and setting.endswith("_METRICS_PORT"):
            return -1
        if not 1 <= port <= 65535:
            raise StartupError(f"{setting}={value!r} is not a port number (1-65535)")
        return port

    def check_ports_free(self) -> None:
        """`make up` on ports another process holds would find that process answering its
        readiness checks (another stack, say) and report itself up while its own services
        died: refuse to start instead, naming the port and the setting that moves it."""
        if not self.fixed_ports:
            return
        taken = []
        for service in self.services.values():
            for kind, port in (
                ("gRPC", service.grpc_port),
                ("HTTP", service.http_port),
                ("metrics", service.metrics_port),
            ):
                if port is not None and port > 0 and not port_free(port):
                    taken.append(f"{port} ({service.name} {kind}, {service.port_settings[kind]})")
        if taken:
            raise StartupError(
                "ports in use: "
                + ", ".join(taken)
                + ". Another `make up` may be running; stop it, or move this one with the "
                "settings named."
            )

    def choose_redis(self) -> str:
        candidates = [self.redis_url] if self.redis_url is not None else []
        candidates += [os.environ.get("REDIS_URL", ""), "redis://127.0.0.1:6379/0"]
        for url in filter(None, candidates):
            if redis_answers(url):
                _say(f"Redis: using {_without_password(url)}")
                return url
        if self.redis_url == "":
            return ""
        try:
            self._redis, url = start_redis_server()
            _say(f"Redis: started redis-server at {url}")
            return url
        except RuntimeError:
            pass
        _say("WARNING: no Redis answers and redis-server is not installed.")
        _say(
            "WARNING: the gateway runs WITHOUT Redis: response cache off, rate limits per process."
        )
        return ""

    def build(self) -> None:
        run_dir = self.data_dir / "run"
        redis_url = self.choose_redis()
        common = {"PYTHONUNBUFFERED": "1"}
        grpc = {"generator": 50051, "safety": 50052, "history": 50053}
        metrics = {"generator": 9101, "safety": 9102, "history": 9103}
        for name in ("generator", "safety", "history"):
            prefix = name.upper()
            port = self._port(grpc[name], f"{prefix}_PORT")
            mport = self._port(metrics[name], f"{prefix}_METRICS_PORT")
            env = {
                **common,
                f"{prefix}_PORT": str(port),
                f"{prefix}_METRICS_PORT": str(mport),
            }
            if name == "history":
                env.setdefault(
                    "HISTORY_DATABASE_URL",
                    os.environ.get("HISTORY_DATABASE_URL")
                    or f"sqlite+aiosqlite:///{self.data_dir / 'history.db'}",
                )
            env.update(self.extra_env.get(name, {}))
            self.services[name] = ServiceProcess(
                name=name,
                command=[str(VENV_BIN / f"parlance-{name}")],
                env=env,
                log_path=run_dir / f"{name}.log",
                grpc_port=port,
                metrics_port=mport,
                port_settings={"gRPC": f"{prefix}_PORT", "metrics": f"{prefix}_METRICS_PORT"},
            )
        http = self._port(8000, "GATEWAY_PORT")
        # The gateway's /metrics is on its own, internal port (never the public one).
        gateway_metrics = self._port(9100, "GATEWAY_METRICS_PORT")
        gateway_env = {
            **common,
            "GATEWAY_PORT": str(http),
            "GATEWAY_METRICS_PORT": str(gateway_metrics),
            "GATEWAY_KEY_ID_FILE": str(self.data_dir / "gateway-key-id-secret"),
            "GATEWAY_GENERATOR_URL": f"127.0.0.1:{self.services['generator'].grpc_port}",
            "GATEWAY_SAFETY_URL": f"127.0.0.1:{self.services['safety'].grpc_port}",
            "GATEWAY_HISTORY_URL": f"127.0.0.1:{self.services['history'].grpc_port}",
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_DATABASE_URL": os.environ.get("GATEWAY_DATABASE_URL")
            or f"sqlite+aiosqlite:///{self.data_dir / 'gateway.db'}",
            "GATEWAY_OUTBOX_PATH": str(self.data_dir / "gateway-outbox.db"),
            "GATEWAY_API_KEYS": os.environ.get("GATEWAY_API_KEYS") or f"dev:{self.api_key}",
            **self.extra_env.get("gateway", {}),
        }
        self.services["gateway"] = ServiceProcess(
            name="gateway",
            command=[str(VENV_BIN / "parlance-gateway")],
            env=gateway_env,
            log_path=run_dir / "gateway.log",
            http_port=http,
            metrics_port=gateway_metrics,
            port_settings={"HTTP": "GATEWAY_PORT", "metrics": "GATEWAY_METRICS_PORT"},
        )

    def start_service(self, name: str, timeout_s: float = 180.0) -> None:
        service = self.services[name]
        service.start()
        self.wait_ready(name, timeout_s)

    def wait_ready(self, name: str, timeout_s: float = 180.0) -> None:
        service = self.services[name]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.stop_requested():
                raise StartupInterrupted
            if not service.running:
                raise RuntimeError(f"{name} exited during start-up:\n{service.tail()}")
            if service.grpc_port is not None and grpc_serving(service.grpc_port):
                return
            if service.http_port is not None and http_ok(
                f"http://127.0.0.1:{service.http_port}/readyz"
            ):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} not ready after {timeout_s:.0f}s:\n{service.tail()}")

    def start(self) -> None:
        self.build()
        self.check_ports_free()
        for name in ("generator", "safety", "history"):
            _say(f"starting {name}")
            self.services[name].start()
        for name in ("generator", "safety", "history"):
            self.wait_ready(name)
            _say(f"{name} is SERVING on 127.0.0.1:{self.services[name].grpc_port}")
        _say("starting gateway")
        self.start_service("gateway")

    def stop(self) -> None:
        # Gateways first (extra ones that tests added too), then what they call.
        names = [n for n in self.services if n.startswith("gateway")]
        names += [n for n in ("generator", "safety", "history") if n in self.services]
        for name in names:
            self.services[name].resume()  # a paused (SIGSTOP) process could not take SIGTERM
            self.services[name].stop()
        if self._redis is not None and self._redis.poll() is None:
            self._redis.terminate()
            self._redis.wait(5)


def load_or_create_api_key(data_dir: Path) -> str:
    """The local stack's key: made once, kept in .data/api-key (mode 600) for the user."""
    path = data_dir / "api-key"
    if path.exists():
        return path.read_text().strip()
    key = "sk-parlance-" + secrets.token_urlsafe(24)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Created 0600 from the start (a chmod after writing leaves a moment it is readable).
    with os.fdopen(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "w") as out:
        out.write(key + "\n")
    return key


# `make up` serves the embedding model next to the chat model, in the same generator, and
# names the chat model "default" (README, "Several models and replicas"). GENERATOR_MODELS or
# GATEWAY_MODEL_ALIASES in the environment replace these. The test stacks start without them.
MAKE_UP_MODELS = [
    {"id": "SmolLM2-135M-Instruct", "engine": "llamacpp"},
    {"id": "all-MiniLM-L6-v2", "engine": "transformers", "task": "embed"},
    # The gateway's intent model, the one the shipped route file names (README, "Intent
    # routing"): all-MiniLM-L6-v2 with the generator's fine-tuned intent deltas merged at load
    # (services/generator/MODELS.md), every layer pooled (the pooling it was trained with;
    # 2304 dimensions), run by ONNX Runtime with int8 weights (per-channel scales: ~2 ms
    # for a short message against ~5.4 in float32, the same accuracy on the five labelled
    # sets, bench/results/intent_int8.md; the gateway runs the same graph itself) and no
    # batching wait (cheaper on the path to the first token).
    {
        "id": "all-MiniLM-L6-v2-intents-3",
        "engine": "transformers",
        "task": "embed",
        "settings": {
            "embed_deltas": "minilm_intents_3.npz",
            "embed_dtype": "float32",
            "embed_runtime": "onnx-int8",
            "embed_pooling": "layers",
            "embed_max_wait_ms": 0,
        },
    },
]
MAKE_UP_ALIASES = {"default": "SmolLM2-135M-Instruct"}
# Answers without a max_tokens stop at this length: SmolLM2 that loses its way repeats itself to
# the end of its 2,048-token window (53 s on 2 cores, the web page's answers included).
MAKE_UP_DEFAULT_MAX_TOKENS = "1024"
# `make up` routes chats by intent with the shipped route file (README, "Intent routing"): its
# routes target "default" only, and it names the intent model above as its embedding model.
# GATEWAY_INTENT_ROUTES in the environment replaces it ("" : off).
MAKE_UP_INTENT_ROUTES = ROOT / "services/gateway/src/parlance/gateway/intents/default_routes.yaml"


def make_up_env() -> dict[str, dict[str, str]]:
    env: dict[str, dict[str, str]] = {"generator": {}, "gateway": {}}
    if "GENERATOR_MODELS" not in os.environ:
        env["generator"]["GENERATOR_MODELS"] = json.dumps(MAKE_UP_MODELS)
    if "GATEWAY_MODEL_ALIASES" not in os.environ:
        env["gateway"]["GATEWAY_MODEL_ALIASES"] = json.dumps(MAKE_UP_ALIASES)
    if "GATEWAY_INTENT_ROUTES" not in os.environ:
        env["gateway"]["GATEWAY_INTENT_ROUTES"] = str(MAKE_UP_INTENT_ROUTES)
    if "GATEWAY_DEFAULT_MAX_TOKENS" not in os.environ:
        env["gateway"]["GATEWAY_DEFAULT_MAX_TOKENS"] = MAKE_UP_DEFAULT_MAX_TOKENS
    # The route file names its embedding model (embed_model), served above; a GENERATOR_MODELS
    # of one's own must serve it too, or GATEWAY_INTENT_EMBED_MODEL name another.
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(ROOT / ".data"))
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    stack = Stack(
        data_dir=data_dir,
        api_key=load_or_create_api_key(data_dir),
        extra_env=make_up_env(),
        stop_requested=lambda: stopping,
    )
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
    except StartupInterrupted:
        _say("interrupted during start-up; stopping...")
        stack.stop()
        _say("stopped")
        sys.exit(130)
    except Exception as exc:
        _say(f"start-up failed: {exc}")
        stack.stop()
        sys.exit(1)
    url = stack.gateway_url
    key = stack.api_key
    print(
        f"""
Parlance is up: {url}   (logs in {data_dir / "run"})
API key: {key}

  curl {url}/v1/chat/completions \\
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"model": "SmolLM2-135M-Instruct", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  curl {url}/v1/embeddings \\
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"model": "all-MiniLM-L6-v2", "input": ["Hello!", "Hi there"]}}'

Press Ctrl-C to stop.
""",
        flush=True,
    )
    while not stopping:
        for name, service in stack.services.items():
            if not service.running:
                _say(f"{name} exited unexpectedly; last log lines:\n{service.tail()}")
                stopping = True
        time.sleep(0.5)
    _say("stopping...")
    stack.stop()
    _say("stopped")


if __name__ == "__main__":
    main()
