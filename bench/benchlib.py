"""What the benchmarks share: the machine line of their reports and a redis-server of their own.

The benchmarks run as scripts (`python bench/<name>.py`), so this folder is on sys.path and
they import this module by its plain name.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from devstack import start_redis_server


def machine() -> str:
    """CPUs, CPU model, memory, Python and kernel: the first line of every results file."""
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


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server of the benchmark's own (nothing shared with other users of Redis)."""
    try:
        return start_redis_server()
    except RuntimeError as exc:
        sys.exit(str(exc))
