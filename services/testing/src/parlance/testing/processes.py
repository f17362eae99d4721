"""The stack as processes: scripts/devstack.py (the one that `make up` runs) started with the
tests' keys on free ports, extra gateways beside it, and restartable Redis servers."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from parlance.testing.keys import ALICE_KEY, BOB_KEY, KEY_ID_SECRET


def repo_root() -> Path:
    """The checkout this package is installed from (editable), or PARLANCE_ROOT."""
    if os.environ.get("PARLANCE_ROOT"):
        return Path(os.environ["PARLANCE_ROOT"]).resolve()
    for parent in Path(__file__).resolve().parents:
        if (parent / "scripts" / "devstack.py").is_file():
            return parent
    raise RuntimeError("scripts/devstack.py not found: set PARLANCE_ROOT to the checkout")


def _load_devstack() -> ModuleType:
    """scripts/devstack.py is a script, not a package: load it once, as module `devstack`."""
    if "devstack" in sys.modules:
        return sys.modules["devstack"]
    path = repo_root() / "scripts" / "devstack.py"
    spec = importlib.util.spec_from_file_location("devstack", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["devstack"] = module
    spec.loader.exec_module(module)
    return module


_devstack = _load_devstack()
if TYPE_CHECKING:
    # mypy cannot follow a module loaded by path: the classes are Any to it.
    ServiceProcess = Any
    Stack = Any
else:
    ServiceProcess = _devstack.ServiceProcess
    Stack = _devstack.Stack
free_port = _devstack.free_port
redis_answers = _devstack.redis_answers
start_redis_server = _devstack.start_redis_server

TEST_KEYS = f"alice:{ALICE_KEY},bob:{BOB_KEY}"


def stack_env(
    gateway_env: dict[str, str] | None = None, env: dict[str, dict[str, str]] | None = None
) -> dict[str, dict[str, str]]:
    """Per-service settings of a test stack: the tests' keys, a short Retry-After, and `env`
    ("generator": {...}) and `gateway_env` on top."""
    extra_env = {name: dict(values) for name, values in (env or {}).items()}
    # One llama.cpp thread per context (unless a test sets its own): with llama.cpp's default
    # (every core for one context) its threads spin against the gateway, safety and the test
    # itself on a 2-core machine; a loaded one answered several times slower that way.
    extra_env["generator"] = {"GENERATOR_N_THREADS": "1", **extra_env.get("generator", {})}
    extra_env["gateway"] = {
        "GATEWAY_API_KEYS": TEST_KEYS,
        "GATEWAY_RETRY_AFTER_S": "2",
        # Static key ids are HMACs under this secret (keys.static_key_id computes them).
        "GATEWAY_KEY_ID_SECRET": KEY_ID_SECRET,
        # The suites send bad keys on purpose from one address; test_security_auth.py
        # checks the throttle with a limit of its own.
        "GATEWAY_AUTH_FAILURES_PER_MINUTE": "0",
        # The page offers a comparison with every question: no random two-answer replies in
        # the page's tests (test_web_compare.py asks for them, or sets a share of its own).
        "GATEWAY_COMPARE_SHARE": "0",
        **extra_env.get("gateway", {}),
        **(gateway_env or {}),
    }
    return extra_env


def start_stack(
    tmp: Path,
    redis_url: str,
    gateway_env: dict[str, str] | None = None,
    env: dict[str, dict[str, str]] | None = None,
) -> Stack:
    """A private stack as processes (nothing shared with other tests)."""
    stack = Stack(
        data_dir=tmp,
        fixed_ports=False,
        api_key=ALICE_KEY,
        redis_url=redis_url,
        extra_env=stack_env(gateway_env, env),
    )
    try:
        stack.start()
    except Exception:
        stack.stop()
        raise
    return stack


def start_extra_gateway(stack: Stack, env: dict[str, str]) -> ServiceProcess:
    """A second gateway process on the same services, with other settings."""
    base = stack.services["gateway"]
    port, metrics_port = free_port(), free_port()
    gateway = ServiceProcess(
        name="gateway-extra",
        command=base.command,
        env={
            **base.env,
            "GATEWAY_PORT": str(port),
            "GATEWAY_METRICS_PORT": str(metrics_port),
            **env,
        },
        log_path=base.log_path.with_name(f"gateway-{port}.log"),
        http_port=port,
        metrics_port=metrics_port,
    )
    gateway.start()
    stack.services[f"gateway-{port}"] = gateway
    try:
        stack.wait_ready(f"gateway-{port}")
    except Exception:
        gateway.stop()
        raise
    return gateway


def gateway_url(gateway: ServiceProcess) -> str:
    return f"http://127.0.0.1:{gateway.http_port}"


class RedisProcess:
    """A redis-server of a test's own on a fixed port, which the test can stop, kill -9,
    freeze (SIGSTOP) and start again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process, _ = start_redis_server(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.resume()
            self.process.terminate()
            self.process.wait(5)
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None

    def pause(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
