"""The pytest plugin of parlance-testing, loaded in every suite through the `pytest11` entry
point: the fixtures that start real things (Redis, stacks, PostgreSQL databases)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from parlance.testing.dpo_adapter import DpoAdapter, train_dpo_adapter
from parlance.testing.postgres import create_database_sync, drop_database_sync
from parlance.testing.processes import RedisProcess, Stack, start_redis_server
from parlance.testing.reward_model import RewardTraining, train_reward_model
from parlance.testing.stacks import StackPool


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


@pytest.fixture(scope="module")
def redis_process() -> Iterator[RedisProcess]:
    """A module's own redis-server that its tests may stop, kill, freeze and restart."""
    server = RedisProcess()
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stacks(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[StackPool]:
    """Starts stacks that share their model services with stacks of equal settings."""
    pool = StackPool(tmp_path_factory, redis_server)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def stack(stacks: StackPool) -> Iterator[Stack]:
    """The default stack: the real SmolLM2 model through llama.cpp, the tests' two keys."""
    started = stacks.start("stack")
    yield started
    started.stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (dropped afterwards); fails without a server."""
    url = create_database_sync()
    try:
        yield url
    finally:
        drop_database_sync(url)


@pytest.fixture(scope="module")
def postgres_module_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test module."""
    url = create_database_sync()
    try:
        yield url
    finally:
        drop_database_sync(url)


@pytest.fixture(scope="session")
def reward_training(tmp_path_factory: pytest.TempPathFactory) -> RewardTraining:
    """The session's one `parlance-train reward` run (reward_model.py): the trainer's test and
    the generator's reward tests share it instead of training twice. Treat its folder as
    read-only; copy it to serve or change it."""
    return train_reward_model(tmp_path_factory.mktemp("reward-training"))


@pytest.fixture(scope="session")
def dpo_adapter(tmp_path_factory: pytest.TempPathFactory) -> DpoAdapter:
    """The session's one `parlance-train dpo` run (dpo_adapter.py), shared by the trainer's
    tests and tests/test_adapter_loop.py. Treat its folder as read-only; copy it to serve."""
    return train_dpo_adapter(tmp_path_factory.mktemp("dpo"))
