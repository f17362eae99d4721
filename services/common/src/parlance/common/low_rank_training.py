"""Training side of low_rank.py: trainable low-rank deltas (LoRA) wrapped around an encoder's
linear layers, for the training scripts of the generator's intent encoders and the safety
service's MiniLM heads. Imports torch: only those scripts import this module."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from parlance.common.low_rank import LowRankDelta


class LowRankLinear(torch.nn.Module):
    """A frozen linear layer plus a trainable low-rank delta: base(x) + scale * x A^T B^T."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.a = torch.nn.Parameter(torch.empty(rank, base.in_features))
        self.b = torch.nn.Parameter(torch.zeros(base.out_features, rank))
        # As LoRA starts: A like a linear layer's weight, B zero, so training starts from the
        # frozen encoder exactly.
        torch.nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.a.T) @ self.b.T)


def add_low_rank(
    model: Any, targets: Sequence[str], rank: int, alpha: float
) -> dict[str, LowRankLinear]:
    """Wraps each of `targets` (names inside a block, e.g. "attention.self.query") in each
    encoder block, block by block; the rest of the model is frozen."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    wrapped = {}
    for index in range(model.config.num_hidden_layers):
        for target in targets:
            name = f"encoder.layer.{index}.{target}"
            parent_name, _, attribute = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            layer = LowRankLinear(getattr(parent, attribute), rank, alpha)
            setattr(parent, attribute, layer)
            wrapped[name] = layer
    return wrapped


def learned_deltas(wrapped: dict[str, LowRankLinear]) -> list[LowRankDelta]:
    """The trained deltas as the services merge them (copies, detached from training)."""
    return [
        LowRankDelta(
            name, layer.a.detach().numpy().copy(), layer.b.detach().numpy().copy(), layer.scale
        )
        for name, layer in wrapped.items()
    ]
