"""The pytest plugin of parlance-testing, loaded in every suite through the `pytest11` entry
point: the fixtures that start real things (Redis, stacks, PostgreSQL databases)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from parlance.testing.dpo_adapter import (
    DpoAdapter,
    finished_dpo_adapter,
    start_dpo_training,
    stop_dpo_training,
)
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


# The session's DPO run: its folder and process, started once the tests are collected.
_DPO = pytest.StashKey[tuple[Path, "subprocess.Popen[bytes]"]]()


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Starts the DPO training in the background when a collected test will read it."""
    if session.config.option.collectonly:
        return
    if any("dpo_adapter" in getattr(item, "fixturenames", ()) for item in session.items):
        workdir = Path(tempfile.mkdtemp(prefix="parlance-dpo-"))
        session.config.stash[_DPO] = (workdir, start_dpo_training(workdir))


def pytest_sessionfinish(session: pytest.Session) -> None:
    started = session.config.stash.get(_DPO, None)
    if started is not None:
        workdir, process = started
        if process.poll() is None:  # the session ended before a test read it (-x, Ctrl-C)
            stop_dpo_training(process)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def dpo_adapter(request: pytest.FixtureRequest) -> DpoAdapter:
    """The session's one `parlance-train dpo` run (dpo_adapter.py), shared by the trainer's
    tests and tests/test_adapter_loop.py; it trains in the background from the start of the
    session. Treat its folder as read-only; copy it to serve."""
    started = request.config.stash.get(_DPO, None)
    if started is None:  # not seen at collection (a fixture asked for it dynamically)
        workdir = Path(tempfile.mkdtemp(prefix="parlance-dpo-"))
        started = request.config.stash[_DPO] = (workdir, start_dpo_training(workdir))
    return finished_dpo_adapter(*started)
