"""The stack as processes for a benchmark: a redis-server of its own, the four services
(scripts/devstack.py) in a temporary folder, extra gateways or services with other settings,
and everything stopped on the way out, Ctrl-C and SIGTERM included.

    with BenchStack(gateway_env={...}, env={"generator": scripted(...)}) as stack:
        stack.gateway_url, stack.extra_gateway({...}), stack.extra_service("safety", {...}),
        stack.pids()
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from lib.report import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

from devstack import ServiceProcess, Stack, free_port, start_redis_server

MODEL = "SmolLM2-135M-Instruct"
ALICE_KEY = "sk-bench-alice-0123456789"
BOB_KEY = "sk-bench-bob-0123456789"
KEYS = (ALICE_KEY, BOB_KEY)
SERVICES = ("gateway", "safety", "history", "generator")
# Limits that never refuse; every check still runs against Redis (the shipped path).
LIMITS_HIGH = {
    "GATEWAY_RPM_LIMIT": "100000000",
    "GATEWAY_TPM_LIMIT": "10000000000",
    "GATEWAY_MAX_CONCURRENT_PER_KEY": "1000000",
    "GATEWAY_MAX_CONCURRENT_REQUESTS": "4096",
}
LIMITS_OFF = {"GATEWAY_RPM_LIMIT": "0", "GATEWAY_TPM_LIMIT": "0"}


def scripted(text: str | None = None, tokens_per_s: float = 0.0) -> dict[str, str]:
    """Generator settings for the scripted test engine: a fixed reply at a fixed token rate
    (0: unpaced), no model, so that the load lands on everything around the model."""
    env = {
        "GENERATOR_ENGINE": "scripted",
        "GENERATOR_SCRIPTED_TOKENS_PER_S": str(tokens_per_s),
        "GENERATOR_SERVED_MODEL_NAME": MODEL,
    }
    if text is not None:
        env["GENERATOR_SCRIPTED_TEXT"] = text
    return env


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class BenchStack:
    """Context manager: starts on enter, stops everything it started on exit."""

    def __init__(
        self,
        gateway_env: dict[str, str] | None = None,
        env: dict[str, dict[str, str]] | None = None,
        prefix: str = "parlance-bench-",
    ) -> None:
        self.gateway_env = gateway_env or {}
        self.env = env or {}
        self.prefix = prefix
        self.redis = None
        self.data_dir: Path | None = None
        self.stack: Stack | None = None

    def __enter__(self) -> BenchStack:
        # SIGTERM takes the way of Ctrl-C, through __exit__ (or the except below).
        signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            self.redis, self.redis_url = start_redis_server()
            self.data_dir = Path(tempfile.mkdtemp(prefix=self.prefix))
            extra = {name: dict(values) for name, values in self.env.items()}
            extra["gateway"] = {
                "GATEWAY_API_KEYS": f"alice:{ALICE_KEY},bob:{BOB_KEY}",
                "GATEWAY_GENERATE_TITLES": "false",
                **extra.get("gateway", {}),
                **self.gateway_env,
            }
            self.stack = Stack(
                data_dir=self.data_dir,
                fixed_ports=False,
                api_key=ALICE_KEY,
                redis_url=self.redis_url,
                extra_env=extra,
            )
            self.stack.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.stack is not None:
            self.stack.stop()  # the gateways, extra ones too, and the three services
            for service in self.stack.services.values():
                service.stop()  # extra safety services and generators (Stack.stop leaves them)
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(5)
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    @property
    def services(self) -> dict[str, ServiceProcess]:
        assert self.stack is not None
        return self.stack.services

    @property
    def gateway_url(self) -> str:
        assert self.stack is not None
        return self.stack.gateway_url

    def extra_gateway(self, env: dict[str, str]) -> ServiceProcess:
        """Another gateway process on the same services and Redis, with other settings."""
        return self.extra_service("gateway", env)

    def extra_service(self, base: str, env: dict[str, str]) -> ServiceProcess:
        """Another process of service `base` (gateway, safety, generator, history) with the
        stack's settings for it, then `env`: a port and a metrics port of its own (`env` may
        set GATEWAY_METRICS_PORT=-1 and the like). Named `<base>-<port>`; stopped on exit."""
        assert self.stack is not None
        original = self.services[base]
        port, metrics = free_port(), free_port()
        name, prefix = f"{base}-{port}", base.upper()
        ports = {f"{prefix}_PORT": str(port), f"{prefix}_METRICS_PORT": str(metrics)}
        self.services[name] = ServiceProcess(
            name=name,
            command=original.command,
            env={**original.env, **ports, **env},
            log_path=original.log_path.with_name(f"{name}.log"),
            http_port=port if base == "gateway" else None,
            grpc_port=None if base == "gateway" else port,
            metrics_port=metrics,
        )
        self.services[name].start()
        self.stack.wait_ready(name)
        return self.services[name]

    def pid(self, name: str) -> int:
        process = self.services[name].process
        assert process is not None, f"{name} is not running"
        return process.pid

    def pids(self) -> dict[str, int]:
        """The four services and redis, by name."""
        assert self.redis is not None
        return {**{name: self.pid(name) for name in SERVICES}, "redis": self.redis.pid}
