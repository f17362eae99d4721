#!/usr/bin/env python3
"""The one lock file (requirements.lock) and what reads it.

    scripts/lockfile.py deps DIR[EXTRAS] ...   the third-party requirements of services, e.g.
                                              `deps services/common services/generator[llamacpp]`
                                              (the Dockerfiles install these, -c requirements.lock)
    scripts/lockfile.py finish LOCK            after pip-compile (`make lock`): drop the services'
                                              own editable lines, refuse CUDA wheels in the lock
    scripts/lockfile.py check                  every requirement of requirements.in's inputs has a
                                              pin in the lock that satisfies it, and the models
                                              of requirements-models.txt agree with it (`make lint`)

`deps` runs in the Docker build stages with the standard library alone; `check` needs
`packaging` (in the lock, through pip-tools).
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
LOCK_INPUT = ROOT / "requirements.in"
# Model carriers, installed with --no-deps beside the lock; where the lock pins one too (a
# service depends on it), the two versions must agree.
MODELS = ROOT / "requirements-models.txt"
# Distributions that only a CUDA build of torch (or vLLM) brings: a CPU install never needs them.
CUDA_ONLY = re.compile(r"^(nvidia-|triton==|cuda-)", re.IGNORECASE)
# "services/generator[llamacpp,vllm]" -> directory, extras.
SERVICE_SPEC = re.compile(r"^(?P<dir>[^\[\]]+?)(?:\[(?P<extras>[^\]]*)\])?$")


def service_requirements(spec: str, root: Path = ROOT) -> list[str]:
    """The requirements of one service's pyproject.toml (with the extras named; the folder
    relative to root), less the other Parlance distributions, which install from the tree."""
    match = SERVICE_SPEC.match(spec.strip())
    if match is None:
        raise SystemExit(f"not a service: {spec!r} (DIR or DIR[extra,...])")
    with open(root / match["dir"] / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    extras = [e.strip() for e in (match["extras"] or "").split(",") if e.strip()]
    optional = project.get("optional-dependencies", {})
    requirements = list(project.get("dependencies", []))
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"{match['dir']}: no extra {extra!r}")
        requirements += optional[extra]
    return [r for r in requirements if not r.lower().startswith("parlance-")]


def requirement_lines(path: Path) -> Iterator[tuple[str, str]]:
    """(line, where) for each requirement of a pip requirements file, following -r and the
    services named by -e; options and comments skipped."""
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            yield from requirement_lines(path.parent / line.split(None, 1)[1])
        elif line.startswith(("-e ", "--editable ")):
            spec = line.split(None, 1)[1]
            for requirement in service_requirements(spec, path.parent):
                yield requirement, f"{spec}/pyproject.toml"
        elif not line.startswith("-"):
            yield line, path.name


def lock_pins(path: Path = LOCK) -> dict[str, str]:
    """Canonical name -> pinned version, from the lock's `name==version` lines."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[canonical(name)] = version.split(";", 1)[0].strip()
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().split("[", 1)[0].strip()


def check(lock: Path = LOCK, lock_input: Path = LOCK_INPUT, models: Path = MODELS) -> int:
    from packaging.requirements import Requirement
    from packaging.version import Version

    pins = lock_pins(lock)
    problems = []
    for line, where in requirement_lines(lock_input):
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        pinned = pins.get(canonical(requirement.name))
        if pinned is None:
            problems.append(f"{where}: {line} is not in requirements.lock")
        elif not requirement.specifier.contains(Version(pinned), prereleases=True):
            problems.append(f"{where}: {line}, but requirements.lock pins {pinned}")
    for line, where in requirement_lines(models):
        name, _, version = line.partition("==")
        pinned = pins.get(canonical(name))
        if pinned is not None and pinned != version.strip():
            problems.append(f"{where}: {line}, but requirements.lock pins {pinned}")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print("requirements.lock is stale: run `make lock` and commit it", file=sys.stderr)
        return 1
    print(f"requirements.lock covers requirements.in ({len(pins)} pins)")
    return 0


def finish(path: Path) -> int:
    """pip-compile writes the editable services into the lock with this machine's absolute
    paths; they install from the tree, so their lines go. A CUDA wheel means that torch came
    from PyPI's default (CUDA) build instead of the CPU one requirements.in asks for."""
    kept: list[str] = []
    dropping = False
    for line in path.read_text().splitlines(keepends=True):
        # An editable line and its indented "# via ..." annotation lines go together.
        dropping = line.startswith("-e ") or (dropping and line.startswith((" ", "\t")))
        if not dropping:
            kept.append(line)
    cuda = sorted({canonical(line.split("==")[0]) for line in kept if CUDA_ONLY.match(line)})
    path.write_text("".join(kept))
    if cuda:
        print(
            f"{path.name} holds CUDA wheels ({', '.join(cuda)}): torch must be the CPU build",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    if command == "deps" and args:
        for spec in args:
            print(*service_requirements(spec), sep="\n")
        return 0
    if command == "finish" and len(args) == 1:
        return finish(Path(args[0]))
    if command == "check" and not args:
        return check()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
