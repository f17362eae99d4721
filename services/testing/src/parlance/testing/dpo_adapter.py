"""One DPO adapter per test session, trained by the real `parlance-train dpo` (TRL's DPOTrainer
with a PEFT LoRA on the embedded SmolLM2-135M-Instruct, converted to a GGUF LoRA by llama.cpp's
converter), bounded: 16 prompts of simulated users who prefer bulleted answers (seed 11, about
two dozen pairs), 5 steps of 2 pairs at 64 tokens, one torch thread. DPO costs minutes of CPU
on a busy 2-core machine, so the suites that need a trained adapter share this one run: the
trainer's tests check what it wrote, tests/test_adapter_loop.py registers and serves a copy.

One torch thread: two spin against the other processes of a busy 2-core machine (the reward
trainer's 16 steps took 107 s with 2 threads against 30 s with 1 at load 12).

The run starts in a subprocess as soon as pytest has collected a test that uses it
(start_dpo_training, from the plugin), at a low priority (nice 10): it trains on what the
session's other tests leave of the CPU (they wait on processes and timeouts much of the time)
and is usually done when the first test that reads it starts. That test then waits for it
(finished_dpo_adapter), at normal priority again. Run alone: `python -m
parlance.testing.dpo_adapter WORKDIR`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

NAME = "dpo-bullets"
PROMPTS = 16
DATA_SEED = 11
ARGS = ["--max-steps", "5", "--batch-size", "2", "--max-length", "64"]
ARGS += ["--learning-rate", "1e-3", "--eval-fraction", "0.25", "--seed", "0", "--threads", "1"]
# Greedy parity on 4 prompts, not the default 8: ~12 CPU seconds instead of ~25 on this machine.
PARITY_PROMPTS = 4
ARGS += ["--parity-prompts", str(PARITY_PROMPTS)]


@dataclass(frozen=True)
class DpoAdapter:
    """The session's adapter: its folder (as parlance-train writes it), the JSONL it was
    trained on and the --out directory (which holds nothing else)."""

    folder: Path
    data: Path
    out: Path


def train_dpo_adapter(workdir: Path) -> DpoAdapter:
    """Runs the trainer's CLI in process on synthetic preferences written into workdir."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Imported here: only the suites that train pay for torch, TRL and PEFT.
    from parlance.trainer import synthetic
    from parlance.trainer.cli import main

    data = workdir / "pairs.jsonl"
    data.write_text(synthetic.jsonl(synthetic.pairs(PROMPTS, trait="bullets", seed=DATA_SEED)))
    out = workdir / "adapters"
    code = main(["dpo", "--data", str(data), "--out", str(out), "--name", NAME, *ARGS])
    if code != 0:
        raise RuntimeError(f"parlance-train dpo exited with {code} (its stderr is above)")
    [folder] = list(out.iterdir())
    return DpoAdapter(folder, data, out)


# Below the tests' own processes: the training takes what they leave of the CPU.
BACKGROUND_NICE = 10
LOG = "train.log"


def start_dpo_training(workdir: Path) -> subprocess.Popen[bytes]:
    """train_dpo_adapter(workdir) in a subprocess at nice BACKGROUND_NICE; its output goes to
    workdir/train.log."""
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / LOG).open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "parlance.testing.dpo_adapter", str(workdir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            # Its own process group (the session's end kills the group: the llama.cpp converter
            # it starts included), and it dies with pytest even when pytest is killed (a CI
            # timeout, SIGTERM): a killed session left minutes of training running otherwise.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent dies (Linux's PR_SET_PDEATHSIG;
    elsewhere nothing, and the session's end still kills the group)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_dpo_training(process: subprocess.Popen[bytes]) -> None:
    """Kills the training and whatever it started (its process group), and waits for it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.wait(10)


def _normal_priority(pid: int) -> None:
    """Nice 0 again for every thread of the training (a test waits for it now). Lowering a
    nice value needs root (CAP_SYS_NICE); elsewhere it stays at BACKGROUND_NICE."""
    try:
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        threads = [pid]
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 0)
        except OSError:
            pass


def finished_dpo_adapter(workdir: Path, process: subprocess.Popen[bytes]) -> DpoAdapter:
    """Waits for start_dpo_training's run; its log's tail in the error when it failed."""
    if process.poll() is None:
        _normal_priority(process.pid)
    code = process.wait()
    if code != 0:
        tail = (workdir / LOG).read_text(errors="replace").splitlines()[-40:]
        raise RuntimeError(f"parlance-train dpo exited with {code}:\n" + "\n".join(tail))
    out = workdir / "adapters"
    [folder] = list(out.iterdir())
    return DpoAdapter(folder, workdir / "pairs.jsonl", out)


if __name__ == "__main__":
    os.nice(BACKGROUND_NICE)
    train_dpo_adapter(Path(sys.argv[1]))
