"""The one process sampler of the benchmarks: CPU time and resident memory of named processes
(the services, redis, the load client) and the whole machine's busy and steal time, with
psutil.

Read it once around a block of work (`cpu_seconds()` before and after), or let it sample every
`every_s` seconds in a thread (`start()` ... `stop()`) to get series over time, from which
`cores()` gives the average cores a process used between two moments. A name may gather
several pids (uvicorn's workers, the py-spy recorders); a pid that has exited keeps its last
reading, so that each CPU series only grows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping

import psutil

MACHINE_BUSY = "machine busy"
STEAL = "steal"


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot: other people's work shows
    here too. Busy is user + nice + system + irq + softirq; idle, iowait and steal are not."""
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return busy, getattr(t, "steal", 0.0)


def children(pid: int) -> list[int]:
    """Direct children of a process (uvicorn's workers when GATEWAY_WORKERS > 1)."""
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in psutil.getloadavg())


class ProcessSampler:
    """CPU seconds (user + system) and RSS of named groups of processes."""

    def __init__(self, pids: Mapping[str, int | Iterable[int]], every_s: float = 1.0) -> None:
        self.every_s = every_s
        self.groups: dict[str, list[psutil.Process]] = {}
        self.last: dict[int, tuple[float, int]] = {}  # pid -> (cpu s, rss bytes)
        for name, group in pids.items():
            for pid in [group] if isinstance(group, int) else group:
                self.add(name, pid)
            self.groups.setdefault(name, [])
        self.t0 = time.perf_counter()
        self.cpu: dict[str, list[tuple[float, float]]] = {}  # name -> [(t, cpu s)]
        self.rss: dict[str, list[tuple[float, int]]] = {}  # name -> [(t, KiB)]
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, pid: int) -> None:
        """Watch one more process under `name` (its CPU counts from its start)."""
        try:
            process = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        self.groups.setdefault(name, []).append(process)

    def _read(self, process: psutil.Process) -> tuple[float, int]:
        try:
            with process.oneshot():
                times = process.cpu_times()
                reading = (times.user + times.system, process.memory_info().rss)
        except psutil.Error:
            reading = self.last.get(process.pid, (0.0, 0))
        self.last[process.pid] = reading
        return reading

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far of each name, and of the machine (MACHINE_BUSY, STEAL)."""
        with self._lock:
            now = {
                name: sum(self._read(p)[0] for p in group) for name, group in self.groups.items()
            }
        now[MACHINE_BUSY], now[STEAL] = machine_cpu()
        return now

    def rss_kib(self) -> dict[str, int]:
        """Resident memory of each name's first process (the service itself), KiB."""
        with self._lock:
            return {
                name: (self._read(group[0])[1] // 1024 if group else 0)
                for name, group in self.groups.items()
            }

    def sample(self) -> None:
        t = time.perf_counter() - self.t0
        for name, seconds in self.cpu_seconds().items():
            self.cpu.setdefault(name, []).append((t, seconds))
        for name, kib in self.rss_kib().items():
            self.rss.setdefault(name, []).append((t, kib))

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self.sample()
            self._stopped.wait(self.every_s)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()  # a last reading at the very end, so that averages cover the whole run

    def cores(self, name: str, start_s: float = 0.0, end_s: float = float("inf")) -> float:
        """Average cores `name` used between two times (seconds since start()); NaN without
        two readings in that window."""
        inside = [(t, c) for t, c in self.cpu.get(name, []) if start_s <= t <= end_s]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return float("nan")
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
