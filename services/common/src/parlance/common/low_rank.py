"""Low-rank deltas of a fine-tuned encoder (LoRA trained with a head), shared by the services
that ship one: the generator's intent encoders and the safety service's MiniLM heads. Merged
into the weights at load, so the fine-tuned encoder runs at the frozen one's cost."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy comes with the services that load deltas, not with this package
    import numpy as np


@dataclass(frozen=True)
class LowRankDelta:
    """A fine-tuned change of one linear layer: W += scale * b @ a."""

    module: str  # e.g. "encoder.layer.0.attention.self.query"
    a: np.ndarray  # [rank x in features]
    b: np.ndarray  # [out features x rank]
    scale: float


def merge_deltas(model: Any, deltas: Sequence[LowRankDelta]) -> None:
    """Adds each delta to its linear layer's weight (W += scale * b @ a). ValueError when a
    delta names a layer the model lacks or one of another shape."""
    import torch

    for delta in deltas:
        try:
            layer = model.get_submodule(delta.module)
        except AttributeError:
            raise ValueError(f"the model has no layer {delta.module!r}") from None
        shape = (delta.b.shape[0], delta.a.shape[1])
        if not isinstance(layer, torch.nn.Linear) or tuple(layer.weight.shape) != shape:
            raise ValueError(f"the model's {delta.module} is not a {shape} linear layer")
        with torch.no_grad():
            update = torch.from_numpy(delta.b) @ torch.from_numpy(delta.a)
            layer.weight += (delta.scale * update).to(layer.weight.dtype)
