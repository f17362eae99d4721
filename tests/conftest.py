"""Cross-service tests: the whole stack as real processes (scripts/devstack.py), a real
redis-server of their own, the real SmolLM2 model through llama.cpp."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from devstack import ServiceProcess, Stack, free_port, redis_answers  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
ALICE_KEY = "sk-test-alice-0123456789"
BOB_KEY = "sk-test-bob-0123456789"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A redis-server of the tests' own, so cached answers never leak between runs."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        if redis_answers(url):
            break
        time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(5)


def start_stack(tmp: Path, redis_url: str, gateway_env: dict[str, str] | None = None) -> Stack:
    stack = Stack(
        data_dir=tmp,
        fixed_ports=False,
        api_key=ALICE_KEY,
        redis_url=redis_url,
        extra_env={
            "gateway": {
                "GATEWAY_API_KEYS": f"alice:{ALICE_KEY},bob:{BOB_KEY}",
                "GATEWAY_RETRY_AFTER_S": "2",
                **(gateway_env or {}),
            },
        },
    )
    try:
        stack.start()
    except Exception:
        stack.stop()
        raise
    return stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("stack"), redis_server)
    yield stack
    stack.stop()


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
