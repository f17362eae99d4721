"""An encoder's forward pass and pooling exported from PyTorch and run by ONNX Runtime on the
CPU: the generator's embedding engine (engine/transformers_embed.py) and the safety service's
MiniLM classifier (classifier/minilm.py) serve their encoders this way.

Why: a short message's vector is the intent router's whole cost before the first token, and
at ~10 tokens PyTorch's eager forward pass of all-MiniLM-L6-v2 is half per-operator overhead;
ONNX Runtime runs the same graph (with its fused attention and layer norms) in about half the
time (bench/results/embed_runtime.md). The graph is exported at load from the model as loaded,
after any deltas were merged, so it computes exactly what the PyTorch path serves; its user
compares the two on sample texts before it serves the exported one.

torch, onnx and onnxruntime are imported when used: they are the generator's `embed` extra and
the safety service's dependencies, not parlance-common's.

The TorchScript-based exporter (`dynamo=False`) is used: it exports this model in ~1.5-2.5 s,
against ~13 s for the dynamo exporter, whose graph also ran slower here. Exported graphs are
kept in a cache folder (GraphCache), keyed by what they were exported from, so that a restart
skips the export; a cached graph is checked against PyTorch like a fresh one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from parlance.common.onnx_cpu import cpu_session

log = logging.getLogger(__name__)

# Vectors of the exported graph against PyTorch's on the same texts: float32 both ways,
# measured at 1 - 1e-7; a graph further off than this is not served.
MIN_AGREEMENT = 0.99999


def onnx_runtime_available() -> bool:
    """Whether the packages the export and the runtime need are installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


# The int8 graph's vectors against PyTorch's float32 ones: dynamic quantization with
# per-channel scales moves them a little (cosine 0.992-0.998 measured on short messages), so
# this bound catches a broken or badly quantized graph (per-matrix scales: 0.94-0.99;
# unrelated vectors ~0.1-0.7); what the drift costs is measured on labelled sets
# (bench/results/intent_int8.md), not here.
MIN_AGREEMENT_INT8 = 0.98


def quantize_int8(graph: bytes) -> bytes:
    """The graph with its matrix weights stored as int8 and its activations quantized on the
    fly (ONNX Runtime's dynamic quantization): ~4x smaller, ~2-2.5x faster on one thread for a
    short message (VNNI-class CPUs)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "float32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(graph)
        root = logging.getLogger()
        root.addFilter(_no_preprocessing_advice)
        try:
            # One scale per output channel, not per matrix: cosine to float32 0.992-0.998 on
            # short messages against 0.94-0.99, for ~0.2 ms more (bench/results/intent_int8.md).
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            root.removeFilter(_no_preprocessing_advice)
        return target.read_bytes()


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    # quantize_dynamic advises shape inference first (on the root logger); that concerns
    # static quantization, not this. It also logs a line per tensor it leaves in float (about
    # 40 INFO lines for MiniLM, on the root logger): what it leaves is by design, not news.
    if record.name == "root" and record.levelno < logging.WARNING:
        return False
    return "pre-processing before quantization" not in record.getMessage()


class OnnxEncoder:
    """Unit-length vectors of padded batches (int64 ids and mask, numpy), as `pool` computes
    them from the PyTorch model's output, from the exported graph."""

    def __init__(self, graph: bytes, n_threads: int) -> None:
        self._session = cpu_session(graph, n_threads)
        self.graph_bytes = len(graph)

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        (vectors,) = self._session.run(None, {"ids": ids, "mask": mask})
        return np.asarray(vectors, dtype=np.float32)


def export_graph(torch: Any, model: Any, pool: Any) -> bytes:
    """The ONNX graph of `pool(model, ids, mask)` for any batch size and length."""

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: Any, mask: Any) -> Any:
            return pool(self.model, ids, mask)

    sample = torch.ones((1, 4), dtype=torch.long)
    buffer = io.BytesIO()
    # The exporter warns that it is the legacy one (the module docstring says why; the pinned
    # torch has it) and that the attention mask's constant 1.0 is traced as a constant; the
    # graph is checked against PyTorch at other lengths and batch sizes before it serves.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            Pooled().eval(),
            (sample, sample),
            buffer,
            input_names=["ids", "mask"],
            output_names=["vectors"],
            dynamic_axes={"ids": {0: "batch", 1: "tokens"}, "mask": {0: "batch", 1: "tokens"}},
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


class GraphCache:
    """Exported graphs in a folder, one file per key (None: no cache). A folder that cannot
    be written (a read-only image) only costs the export at every start."""

    def __init__(self, folder: str | None) -> None:
        self.folder: Path | None = None
        if folder:
            try:
                self.folder = Path(folder).expanduser()
            except RuntimeError:  # "~" with no home directory: no cache
                log.info("no folder for exported graphs", extra={"folder": folder})

    def get(self, key: str) -> bytes | None:
        if self.folder is None:
            return None
        try:
            return (self.folder / f"{key}.onnx").read_bytes()
        except OSError:
            return None

    def has(self, key: str) -> bool:
        return bool(key) and self.folder is not None and (self.folder / f"{key}.onnx").is_file()

    def put(self, key: str, graph: bytes) -> None:
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # Written aside, then renamed: a reader never sees half a graph.
            fd, temporary = tempfile.mkstemp(dir=self.folder, suffix=".part")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(graph)
                os.replace(temporary, self.folder / f"{key}.onnx")
            finally:
                Path(temporary).unlink(missing_ok=True)
        except OSError as exc:
            log.info(
                "exported graph not cached", extra={"folder": str(self.folder), "error": str(exc)}
            )


# Changed when the export or the pooling code changes what a graph computes.
EXPORT_VERSION = "1"


def graph_key(files: list[Path], *settings: str) -> str:
    """What a graph was exported from: the contents of the files (the model's weights and
    config, a deltas file; ~0.1 s for all-MiniLM-L6-v2's 90 MB), the settings, and the versions
    of the libraries that trace and export it. Content, not paths: every checkout of the same
    model shares one graph, so the cache holds one per model and setting."""
    import onnx
    import torch
    import transformers

    digest = hashlib.sha256()
    for path in sorted(files):
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    versions = (torch.__version__, transformers.__version__, onnx.__version__)
    for part in (*settings, *versions, "opset17", EXPORT_VERSION):
        digest.update(f"{part}\n".encode())
    return digest.hexdigest()[:32]
