"""The MiniLM classifier's encoder (deltas merged, mean pooling, L2 norm) exported to ONNX and
run by ONNX Runtime on the CPU, as the generator's embedding engine runs its encoders
(parlance.common.onnx_encoder).

Why: the encoder's forward pass is nearly all of the classifier's cost, and for sentence-length
units PyTorch's eager pass is half per-operator overhead; the exported graph computes the same
vectors (checked here before it serves) in about half the time
(bench/results/safety_onnx.md). The graph is kept in a cache folder keyed by the encoder's
files, the head's deltas and the library versions, so a restart skips the export (~2 s).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from parlance.common.low_rank import LowRankDelta
from parlance.common.onnx_cpu import agreement
from parlance.common.onnx_encoder import (
    MIN_AGREEMENT,
    GraphCache,
    OnnxEncoder,
    export_graph,
    graph_key,
)

log = logging.getLogger(__name__)

# Changed when the pooling below changes what a graph computes.
POOLING = "safety-mean-l2-v1"


def deltas_digest(deltas: Sequence[LowRankDelta]) -> str:
    """What the merged deltas are (their layers, scales and arrays), for the cache key."""
    digest = hashlib.sha256()
    for delta in deltas:
        digest.update(f"{delta.module}\n{delta.scale!r}\n".encode())
        for array in (delta.a, delta.b):
            digest.update(str((array.dtype, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def cache_key(model_path: Path, deltas: Sequence[LowRankDelta]) -> str:
    """The graph's key in the cache folder ("" when the encoder's files cannot be read)."""
    weights = [p for p in model_path.iterdir() if p.suffix in (".safetensors", ".bin")]
    try:
        return graph_key([model_path / "config.json", *weights], POOLING, deltas_digest(deltas))
    except OSError as exc:
        log.info("exported graph not cached: its files unreadable", extra={"error": str(exc)})
        return ""


def export_checked(
    torch: Any,
    model: Any,
    pool: Callable[[Any, Any, Any], Any],
    batch: tuple[np.ndarray, np.ndarray],
    reference: np.ndarray,
    graphs: GraphCache,
    key: str,
    n_threads: int,
) -> OnnxEncoder:
    """An ONNX Runtime encoder whose vectors of `batch` (ids, mask) match `reference` (the
    PyTorch path's): the cached graph when it runs and matches, else a fresh export (cached
    once it matched). ValueError when the fresh export does not match."""
    cached = graphs.get(key) if key else None
    for graph in ([cached] if cached else []) + [None]:
        fresh = graph is None
        try:
            graph = graph or export_graph(torch, model, pool)
            encoder = OnnxEncoder(graph, n_threads)
            found = agreement(reference, encoder(*batch))
        except Exception:
            if fresh:
                raise
            log.warning("a cached safety encoder graph could not be run; exporting it again")
            continue
        if found >= MIN_AGREEMENT:
            if fresh and key:
                graphs.put(key, graph)
            return encoder
        if fresh:
            raise ValueError(
                f"the exported graph's vectors differ from PyTorch's (cosine {found:.6f} < "
                f"{MIN_AGREEMENT})"
            )
        log.warning("a cached safety encoder graph did not match PyTorch; exporting it again")
    raise AssertionError("unreachable: the fresh export either returned or raised")
