"""The reward model as the benchmarks use it: one trained in process on simulated users'
preferences (parlance.trainer.synthetic), and its scoring rate on the generator's own engine
class in this process (TransformersRewardEngine, no gRPC), in a closed loop.

Needs the trainer and the generator installed (the .venv); imported only by the scenarios
that train or score (best_of_bench.py, adapter_train_bench.py reward).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib.loop import closed_loop

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def train(work: Path, name: str, steps: int, prompts: int = 120, seed: int = 11) -> Path:
    """A reward model on all-MiniLM-L6-v2 for the `bullets` trait, trained in this process
    (`parlance-train reward`'s job): its folder under `work`."""
    from parlance.trainer import reward, synthetic
    from parlance.trainer.source import Loaded

    records = synthetic.pairs(prompts, trait="bullets", seed=seed)
    job = reward.RewardJob(
        base="all-MiniLM-L6-v2",
        out=work,
        name=name,
        max_steps=steps,
        batch_size=8,
        eval_fraction=0.2,
        max_length=128,
    )
    return reward.run(job, Loaded(synthetic.jsonl(records).encode(), "synthetic"))


async def candidates_per_s(
    folder: Path, request: Callable[[int], Any], calls: int, concurrency: int, name: str = ""
) -> float:
    """Candidates/s of `calls` Score calls (`request(i)`: a ScoreRequest, all of as many
    candidates) on the engine the generator serves a reward model with (one torch thread, its
    default), `concurrency` at a time; one warm-up call first."""
    from parlance.generator.engine.reward import TransformersRewardEngine

    engine = TransformersRewardEngine(
        served_model_name=name or folder.name, model_path=str(folder), n_threads=1
    )
    await engine.start()
    try:
        await engine.score(request(-1))
        started = time.perf_counter()
        await closed_loop(lambda _, i: engine.score(request(i)), concurrency, count=calls)
        elapsed = time.perf_counter() - started
    finally:
        await engine.close()
    return len(request(0).candidates) * calls / elapsed


def score_request(i: int, prompt: str, candidates: tuple[str, ...]) -> Any:
    """A ScoreRequest of one user turn and its candidates."""
    from parlance.generator.engine.base import ChatMessage, ScoreRequest

    return ScoreRequest(
        request_id=str(i), messages=(ChatMessage("user", prompt),), candidates=candidates
    )
