"""What the two plain Hugging Face transformers engines (embeddings: transformers_embed.py,
reward models: reward.py) share: loading a local folder (on the CPU, or on a GPU with the
model setting torch_device), and one forward pass over the sequences of many micro-batched
calls, as length-sorted padded batches, handed back per call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from parlance.common.batcher import MicroBatcher
from parlance.generator.engine.base import EngineStats

Encoded = TypeVar("Encoded")
Output = TypeVar("Output")
Result = TypeVar("Result")


def load_local(
    folder: Path, auto_class: str, n_threads: int | None, device: str = "cpu", **model_kwargs: Any
) -> tuple[Any, Any, Any]:
    """(torch, tokenizer, model in eval mode on `device`) from a local folder: nothing is
    downloaded. auto_class names the transformers Auto class (AutoModel,
    AutoModelForSequenceClassification). ValueError for a device torch cannot use."""
    import torch
    import transformers

    if n_threads:
        torch.set_num_threads(n_threads)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = getattr(transformers, auto_class).from_pretrained(
        folder, local_files_only=True, **model_kwargs
    )
    if device != "cpu":
        try:
            model = model.to(device)
        except (RuntimeError, AssertionError) as exc:  # no CUDA build, no such GPU
            raise ValueError(f"cannot place the model on {device!r}: {exc}") from None
    return torch, tokenizer, model.eval()


class MicroBatchedEngine:
    """The life cycle both engines share: load in a worker thread, then serve through their
    MicroBatcher (its queue is the engine's stats). A subclass sets `_batcher` and `_load`."""

    _batcher: MicroBatcher[Any, Any]

    def _load(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        self._batcher.start()

    async def close(self) -> None:
        await self._batcher.close()

    def stats(self) -> EngineStats:
        return EngineStats(running=self._batcher.running, waiting=self._batcher.waiting)

    @property
    def batches(self) -> int:
        """Forward batches run so far (tests see concurrent calls share one)."""
        return self._batcher.batches


def padded_batches(
    torch: Any, sequences: list[list[int]], pad: int, batch_size: int, device: str = "cpu"
) -> Iterator[tuple[list[int], Any, Any]]:
    """(indices into sequences, input ids, attention mask on `device`) per batch of at most
    batch_size, the sequences sorted by length so that padding stays small."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(sequences[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            n = len(sequences[i])
            ids[row, :n] = torch.tensor(sequences[i], dtype=torch.long)
            mask[row, :n] = 1
        yield chunk, ids.to(device), mask.to(device)


def run_per_call(
    encoded: list[Encoded | Exception],
    sequences_of: Callable[[Encoded], list[list[int]]],
    forward: Callable[[list[list[int]]], list[Output]],
    result: Callable[[Encoded, list[Output]], Result],
) -> list[Result | Exception]:
    """One forward pass over the sequences of every call that encoded (a call that failed to
    encode keeps its exception and fails alone), the outputs handed back per call in order."""
    sequences = [
        ids for item in encoded if not isinstance(item, Exception) for ids in sequences_of(item)
    ]
    outputs = forward(sequences) if sequences else []
    results: list[Result | Exception] = []
    offset = 0
    for item in encoded:
        if isinstance(item, Exception):
            results.append(item)
            continue
        count = len(sequences_of(item))
        results.append(result(item, outputs[offset : offset + count]))
        offset += count
    return results
