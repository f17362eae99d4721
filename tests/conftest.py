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

# The tests import their helpers (and, through them, scripts/devstack.py) as plain modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import Stack, free_port, redis_answers, start_stack


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


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("stack"), redis_server)
    yield stack
    stack.stop()
