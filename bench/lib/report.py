"""The one report writer of the benchmarks: a markdown file that starts with the machine, the
command that produced it and the percentile definition, then the scenario's own sections.

Each scenario has one result file under bench/results/, overwritten by every run (git keeps
the history); smoke runs pass `--out` elsewhere.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from lib.stats import PERCENTILE_DEFINITION

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def machine() -> str:
    """CPUs, CPU model, memory, Python and kernel."""
    cpu = platform.processor() or "unknown"
    memory = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{len(os.sched_getaffinity(0))} CPUs (nproc), {cpu}{memory}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def command() -> str:
    """This process's command line, as it can be typed again from the project root."""
    python = sys.executable
    try:
        python = str(Path(python).relative_to(ROOT))
    except ValueError:
        python = Path(python).name
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(ROOT))
    except ValueError:
        script_text = sys.argv[0]
    return shlex.join([python, script_text, *sys.argv[1:]])


def table(columns: Iterable[object], rows: Iterable[Iterable[object]]) -> list[str]:
    """A markdown table."""
    head = [str(c) for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


class Report:
    """A markdown report: the header every result file carries, then `add`ed lines."""

    def __init__(self, title: str, *notes: str) -> None:
        self.lines = [
            f"# {title}",
            "",
            f"- Machine: {machine()}.",
            f"- Command: `{command()}`",
            f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}.",
            f"- Percentiles: {PERCENTILE_DEFINITION}.",
            *(f"- {note}" for note in notes),
        ]

    def add(self, *lines: str) -> Report:
        self.lines += lines
        return self

    def section(self, heading: str, *lines: str) -> Report:
        return self.add("", f"## {heading}", "", *lines)

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"

    def write(self, path: Path | None) -> str:
        """Print the report and write it to `path` (no file when None)."""
        text = self.text()
        print(text)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"[report] written to {path}", flush=True)
        return text


def out_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """The --out option every scenario has: its one result file by default."""
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS / name,
        help=f"where the report goes (default bench/results/{name}; a smoke run: elsewhere)",
    )
