"""docs/CAPACITY.md: regenerated identically from bench/results/ by scripts/capacity_plan.py,
every input figure citing a result file that exists, and clear errors when a figure is gone."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "capacity_plan.py"
DOC = ROOT / "docs" / "CAPACITY.md"


@pytest.fixture
def plan(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    """The script as a module, reading a copy of bench/results that a test may damage."""
    spec = importlib.util.spec_from_file_location("capacity_plan", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up while the class is built.
    monkeypatch.setitem(sys.modules, "capacity_plan", module)
    spec.loader.exec_module(module)
    results = tmp_path / "results"
    shutil.copytree(ROOT / "bench" / "results", results, ignore=shutil.ignore_patterns("profiles"))
    monkeypatch.setattr(module, "RESULTS", results)
    return module


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def test_capacity_doc_regenerates_identically() -> None:
    result = run("--check")
    assert result.returncode == 0, result.stderr


def test_every_input_figure_names_an_existing_result_file() -> None:
    text = DOC.read_text()
    inputs = text.split("## Measured inputs", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in inputs.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) >= 10
    for row in rows:
        (source,) = re.findall(r"`bench/results/([^`]+)`", row)
        assert (ROOT / "bench" / "results" / source).exists(), row


def test_assumptions_drive_the_plan(plan: ModuleType, tmp_path: Path) -> None:
    one, two = tmp_path / "one.md", tmp_path / "two.md"
    assert plan.main(["--out", str(one)]) == 0
    assert plan.main(["--out", str(two), "--daily-users", "2000000"]) == 0

    def peak(path: Path) -> float:
        match = re.search(r"peak \*\*([\d,.]+) req/s\*\*", path.read_text())
        assert match, path.read_text()[:500]
        return float(match.group(1).replace(",", ""))

    assert peak(two) == pytest.approx(2 * peak(one), rel=1e-3)


def test_a_missing_result_file_is_named(
    plan: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (plan.RESULTS / "vllm_vs_parlance.md").unlink()
    assert plan.main(["--out", str(tmp_path / "plan.md")]) == 2
    assert "bench/results/vllm_vs_parlance.md is missing" in capsys.readouterr().err
    assert not (tmp_path / "plan.md").exists()


@pytest.mark.parametrize(
    ("name", "remove", "message"),
    [
        ("load_cpu.md", "## Rerun after the history append change", "no section"),
        ("gateway_overhead.md", "At 100 concurrent:", "CPU per request at 100 concurrent"),
        ("safety_bench.md", "profanity   ", "profanity row"),
    ],
)
def test_a_missing_figure_is_named(
    plan: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    remove: str,
    message: str,
) -> None:
    path = plan.RESULTS / name
    text = path.read_text()
    assert remove in text, f"the test's marker is gone from {name}"
    path.write_text(text.replace(remove, "(removed)"))
    assert plan.main(["--out", str(tmp_path / "plan.md")]) == 2
    err = capsys.readouterr().err
    assert f"bench/results/{name}" in err and message in err, err


def test_history_figures_read_the_report_writers_layout(plan: ModuleType) -> None:
    """bench/history_bench.py's report writer (bench/lib/report.py) puts p50/p95/n columns per
    database; the plan reads that layout as well as the older hand-written one."""
    (plan.RESULTS / "history_bench.md").write_text(
        "# History\n\n"
        "| operation | SQLite p50 | SQLite p95 | SQLite n | PostgreSQL p50 | PostgreSQL p95 "
        "| PostgreSQL n |\n|---|---|---|---|---|---|---|\n"
        "| append one exchange (2 messages) | 11.50 | 20.00 | 200 | 13.25 | 25.00 | 200 |\n"
    )
    figures = plan.history_bench()
    assert figures["sqlite_ms"].value == 11.5
    assert figures["postgres_ms"].value == 13.25
