"""Another commit's code beside this tree's, for before/after runs in one process tree: the
sources of some services at git commit REF, exported with `git archive` (no worktree needed),
put first on a process's PYTHONPATH (the editable installs come after PYTHONPATH on sys.path).
"""

from __future__ import annotations

import os
import subprocess

from lib.report import ROOT


def export(ref: str, into: str, services: tuple[str, ...]) -> str:
    """`services/<name>/src` of each service at `ref`, under `into`: their PYTHONPATH."""
    parts = [f"services/{name}/src" for name in services]
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, *parts],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return os.pathsep.join(os.path.join(into, part) for part in parts)


def short(ref: str) -> str:
    """The abbreviated commit id of `ref` ("?" when git does not know it)."""
    command = ["git", "-C", str(ROOT), "rev-parse", "--short", ref]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return done.stdout.strip() or "?"
