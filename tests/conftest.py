"""Cross-service tests: the whole stack as real processes (scripts/devstack.py), a real
redis-server of their own, the real SmolLM2 model through llama.cpp."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The tests import their helpers (and, through them, scripts/devstack.py) as plain modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import Stack, start_redis_server, start_stack


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A redis-server of the tests' own, so cached answers never leak between runs."""
    try:
        process, url = start_redis_server()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield url
    process.terminate()
    process.wait(5)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("stack"), redis_server)
    yield stack
    stack.stop()
