"""What differs between the transformers of the lock (4.57, CPU) and of the GPU image (5.x),
for the trainers' arguments, so that one trainer runs on both."""

from __future__ import annotations

from typing import Any


def warmup(ratio: float) -> dict[str, Any]:
    """The learning-rate warm-up as a share of the steps: `warmup_ratio` in transformers 4,
    folded into `warmup_steps` in 5 (where a value below 1 is a ratio)."""
    from transformers import TrainingArguments

    if "warmup_ratio" in TrainingArguments.__dataclass_fields__:
        return {"warmup_ratio": ratio}
    return {"warmup_steps": ratio}
