"""Helpers shared by the cross-service tests: the stack as processes, metrics scraping."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from devstack import (  # noqa: E402, F401
    ServiceProcess,
    Stack,
    free_port,
    redis_answers,
    start_redis_server,
)

MODEL = "SmolLM2-135M-Instruct"
ALICE_KEY = "sk-test-alice-0123456789"
BOB_KEY = "sk-test-bob-0123456789"


def start_stack(
    tmp: Path,
    redis_url: str,
    gateway_env: dict[str, str] | None = None,
    env: dict[str, dict[str, str]] | None = None,
) -> Stack:
    """The stack as processes; `env` adds settings per service ("generator": {...})."""
    extra_env = {name: dict(values) for name, values in (env or {}).items()}
    extra_env["gateway"] = {
        "GATEWAY_API_KEYS": f"alice:{ALICE_KEY},bob:{BOB_KEY}",
        "GATEWAY_RETRY_AFTER_S": "2",
        **extra_env.get("gateway", {}),
        **(gateway_env or {}),
    }
    stack = Stack(
        data_dir=tmp,
        fixed_ports=False,
        api_key=ALICE_KEY,
        redis_url=redis_url,
        extra_env=extra_env,
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
    port = free_port()
    gateway = ServiceProcess(
        name="gateway-extra",
        command=base.command,
        env={**base.env, "GATEWAY_PORT": str(port), **env},
        log_path=base.log_path.with_name(f"gateway-{port}.log"),
        http_port=port,
    )
    gateway.start()
    stack.services[f"gateway-{port}"] = gateway
    stack.wait_ready(f"gateway-{port}")
    return gateway


def scrape(port: int) -> dict[str, float]:
    """Every sample of a /metrics endpoint as {'name{label="v",...}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def total(samples: dict[str, float], name: str) -> float:
    """Sum of a metric's samples over all label values."""
    return sum(v for key, v in samples.items() if key.split("{", 1)[0] == name)


def wait_until(
    predicate: Callable[[], object], timeout_s: float = 60.0, what: str = "condition"
) -> None:
    """Polls `predicate` until it is true. An HTTP error while polling (a service that is
    still restarting) counts as "not yet"; the deadline turns it into a test failure."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not reached within {timeout_s:g} s: {what}")


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
