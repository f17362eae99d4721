"""Sampling profiles of the services under load: one `py-spy record` per service over a
window of a load step (needs ptrace: root, or CAP_SYS_PTRACE), summarised into top frames by
self and inclusive time, with py-spy's speedscope file kept beside the report when it is small
enough to commit."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib.procs import ProcessSampler

PROFILE_RATE_HZ = 50
MAX_ARTIFACT_BYTES = 1_000_000  # profile files at least this big are deleted, not committed


@dataclass
class Profile:
    """One service's py-spy recording of one step, and what it says."""

    service: str
    seconds: float
    stacks: Counter[str] = field(default_factory=Counter)
    files: list[Path] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    error: str | None = None


def py_spy_binary() -> str | None:
    """py-spy of this venv first (requirements-dev.txt pins it), else one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """One `py-spy record` per service over a window in the middle of a step.

    --nonblocking: py-spy reads the interpreters' memory without stopping them, so that the
    profile does not itself add latency (a few samples may be torn; fine for a summary).
    """

    def __init__(
        self, pids: dict[str, int], out_dir: Path, label: str, sampler: ProcessSampler
    ) -> None:
        self.pids = pids
        self.out_dir = out_dir
        self.label = label
        self.sampler = sampler
        self.running: dict[str, tuple[subprocess.Popen[bytes], Path, Path]] = {}
        self.failed: dict[str, str] = {}
        self.seconds = 0

    def start(self, seconds: int) -> None:
        self.seconds = seconds
        binary = py_spy_binary()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for service, pid in self.pids.items():
            if binary is None:
                self.failed[service] = "py-spy is not installed (pip install py-spy)"
                continue
            recording = self.out_dir / f"{self.label}-{service}.speedscope.json"
            log = self.out_dir / f"{self.label}-{service}.py-spy.log"
            command = [
                binary, "record", "--pid", str(pid), "--rate", str(PROFILE_RATE_HZ),
                "--duration", str(seconds), "--format", "speedscope", "--output", str(recording),
                "--full-filenames",  # short names drop the package of our editable installs
                "--nonblocking",
            ]  # fmt: skip
            try:
                with log.open("wb") as stderr:
                    # Its error, not a Rust backtrace of where it was raised, goes in the report.
                    env = {**os.environ, "RUST_BACKTRACE": "0"}
                    process = subprocess.Popen(command, stdout=stderr, stderr=stderr, env=env)
            except OSError as exc:
                self.failed[service] = f"{type(exc).__name__}: {exc}"
                continue
            self.sampler.add("py-spy", process.pid)
            self.running[service] = (process, recording, log)

    def finish(self) -> list[Profile]:
        profiles = [Profile(s, self.seconds, error=e) for s, e in self.failed.items()]
        for service, (process, raw, log) in self.running.items():
            profiles.append(self._collect(service, process, raw, log))
        return sorted(profiles, key=lambda p: list(self.pids).index(p.service))

    def _collect(
        self, service: str, process: subprocess.Popen[bytes], raw: Path, log: Path
    ) -> Profile:
        profile = Profile(service, self.seconds)
        try:
            process.wait(self.seconds + 60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        message = log.read_text(errors="replace").strip() if log.exists() else ""
        log.unlink(missing_ok=True)
        if process.returncode != 0 or not raw.exists():
            errors = [line for line in message.splitlines() if line.startswith("Error")]
            tail = (errors or message.splitlines()[-1:] or ["no output"])[0]
            profile.error = f"py-spy exited {process.returncode}: {tail}"
            return profile
        profile.stacks = parse_speedscope(json.loads(raw.read_text()))
        if raw.stat().st_size >= MAX_ARTIFACT_BYTES:
            profile.dropped.append(f"{raw.name} ({raw.stat().st_size / 1e6:.1f} MB)")
            raw.unlink()
        else:
            profile.files.append(raw)
        return profile


def parse_speedscope(document: dict[str, Any]) -> Counter[str]:
    """py-spy's speedscope file (open it at https://www.speedscope.app) as {stack: samples},
    each stack `root;...;leaf` of `function (file:line)` frames, all threads together."""
    frames = [
        f"{f['name']} ({f.get('file', '?')}:{f.get('line', 0)})"
        for f in document["shared"]["frames"]
    ]
    stacks: Counter[str] = Counter()
    for thread in document["profiles"]:
        # py-spy weighs each sample by its duration in seconds: 1 / rate.
        per_sample = 1 / PROFILE_RATE_HZ if thread.get("unit") == "seconds" else 1
        for sample, weight in zip(thread["samples"], thread["weights"], strict=True):
            stacks[";".join(frames[i] for i in sample)] += round(weight / per_sample)
    return stacks


FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def frame_name(frame: str) -> str:
    """`function (file:line)` -> `function (short/file.py)`: one row per function, not line."""
    match = FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['function']} ({short_file(match['file'])})"


def short_file(file: str) -> str:
    """A full path from the package on: `grpc/aio/_call.py`, `parlance/gateway/serving.py`."""
    for marker in ("site-packages/", "/src/", "/lib/python3."):
        if marker in file:
            file = file.split(marker, 1)[1]
            if marker == "/lib/python3.":
                file = file.split("/", 1)[-1]  # drop the "11/" of the version
    return Path(file).name if file.startswith("/") else file


def package(frame: str) -> str:
    """Which library a frame belongs to: `grpc`, `asyncio`, `parlance.gateway`, ..."""
    match = FRAME.match(frame)
    if match is None:
        return frame
    parts = short_file(match["file"]).removesuffix(".py").split("/")
    if parts[0] == "parlance" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


# Frames under which nearly every sample sits (event loop, thread and process entry): they
# would fill the top of the inclusive column and say nothing, so it leaves them out.
RUNNER_FILES = ("asyncio/base_events.py", "asyncio/events.py", "asyncio/runners.py", "threading.py")
RUNNER = re.compile(r"^(<module>|main) \(|\((?:" + "|".join(map(re.escape, RUNNER_FILES)) + r")\)$")


def top_frames(stacks: Counter[str], count: int) -> tuple[list[tuple[str, int]], ...]:
    """(by self time, by inclusive time, self time by package), biggest first."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    for stack, samples in stacks.items():
        frames = stack.split(";")
        own[frame_name(frames[-1])] += samples
        packages[package(frames[-1])] += samples
        # A recursive function counts once per stack, or inclusive time would pass 100 %.
        for name in {frame_name(f) for f in frames}:
            if not RUNNER.search(name):
                inclusive[name] += samples
    return own.most_common(count), inclusive.most_common(count), packages.most_common(count)


def profile_section(steps: list[tuple[int, list[Profile]]], rows: int = 8) -> list[str]:
    lines = [
        "## Profiles (py-spy)",
        "",
        f"`py-spy record --rate {PROFILE_RATE_HZ} --nonblocking --format speedscope "
        "--full-filenames` on each service during the middle half of each step; idle threads "
        "are not sampled, so "
        f"`active` = samples / ({PROFILE_RATE_HZ} Hz x seconds) is roughly the share of one "
        "core the process's Python threads were running (above 100 % with several busy "
        "threads). Time in C extensions (grpc's Cython core, the classifier, SQLite) shows as "
        "self time of the Python function that called it. Frames are grouped by function "
        "(lines merged); the inclusive column leaves out the event loop, thread and entry "
        "frames (`<module>`, `main`, asyncio's base_events/events/runners, threading) that hold "
        "nearly every sample.",
    ]
    for concurrency, profiles in steps:
        for profile in profiles:
            lines += ["", *profile_table(concurrency, profile, rows)]
    return lines


def profile_table(concurrency: int, profile: Profile, rows: int) -> list[str]:
    heading = f"### N={concurrency}, {profile.service}"
    if profile.error:
        return [heading, "", f"py-spy failed: {profile.error}"]
    total_samples = sum(profile.stacks.values())
    if not total_samples:
        return [heading, "", "no samples (idle all along, or py-spy could not read it)"]
    active = total_samples / (PROFILE_RATE_HZ * profile.seconds)
    own, inclusive, packages = top_frames(profile.stacks, rows)
    lines = [
        heading,
        "",
        f"{total_samples} samples in {profile.seconds:g} s: active {active:.0%}. Self time by "
        "package: "
        + ", ".join(f"{name} {n / total_samples:.0%}" for name, n in packages[:6])
        + ".",
        "",
        "| top by self time | % | top by inclusive time | % |",
        "|---|---|---|---|",
    ]
    for i in range(max(len(own), len(inclusive))):
        cells = []
        for table in (own, inclusive):
            if i < len(table):
                name, n = table[i]
                cells += [f"`{name}`".replace("|", "\\|"), f"{n / total_samples:.0%}"]
            else:
                cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    kept = ", ".join(f"`{path.name}`" for path in profile.files)
    if kept:
        lines += ["", f"Files: {kept}."]
    if profile.dropped:
        lines += ["", f"Left out (1 MB or more): {', '.join(profile.dropped)}."]
    return lines
