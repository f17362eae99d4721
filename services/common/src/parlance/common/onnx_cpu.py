"""ONNX Runtime on the CPU, the way Parlance runs exported encoders: the generator's embedding
engine (parlance.common.onnx_encoder) and the gateway's local copy of the intent model
(intents/local_encoder.py) build their sessions and compare their vectors with these, so that
the two sides of ExportEncoder run the same graph the same way.

onnxruntime and numpy are imported when used: only the services that run a graph need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def cpu_session(graph: bytes, n_threads: int) -> Any:
    """An InferenceSession of `graph` on the CPU with `n_threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, n_threads)
    options.inter_op_num_threads = 1
    # Idle threads spinning for work would take CPU from the engines and event loops beside them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def agreement(reference: np.ndarray, other: np.ndarray) -> float:
    """The lowest cosine between matching rows of two sets of vectors (nan when either holds a
    nan: compare with `not found >= bound`)."""
    import numpy as np

    dots = (reference * other).sum(axis=1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1)
    return float((dots / np.maximum(norms, 1e-12)).min())
