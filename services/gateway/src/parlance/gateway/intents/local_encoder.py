"""The intent router's embedding model run in the gateway's own process.

Why: through the generator's Embed RPC, a message's classification costs ~2-3 ms of gRPC and
message handling around a ~4 ms forward pass, all of it before the first token
(bench/results/intent_ttft_*.md). When the generator serves the model from an exported ONNX
graph, the gateway fetches that graph and the tokenizer once (ExportEncoder) and runs them
with ONNX Runtime in a worker thread of its own: the same graph on the same runtime, so the
same vectors. The gateway checks that on sample texts against the generator's Embed before it
uses its copy, and keeps calling the generator whenever the copy cannot be had or used: a
generator that serves the model with PyTorch or vLLM, an older generator, a copy that
disagrees, a batch that fails (each logged).

The copy is taken once, at start-up, like the router's choice of model (router.py: a route
file that names another model needs a restart).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence

import numpy as np

from parlance.common.batcher import MicroBatcher
from parlance.common.onnx_cpu import agreement, cpu_session
from parlance.common.request_id import new_request_id
from parlance.gateway.clients import GeneratorClient
from parlance.gateway.clients.generator import EncoderNotExportable
from parlance.gateway.errors import APIError
from parlance.gateway.intents.embedder import GeneratorEmbedder
from parlance.gateway.metrics import INTENT_ENCODER_LOCAL
from parlance.generator.v1 import generator_pb2

log = logging.getLogger(__name__)

# The copy's vectors against the generator's on the sample texts: the same graph on the same
# runtime gives 1.0 up to float rounding (the generator's export check uses the same bound).
MIN_AGREEMENT = 0.99999
# Short, long (cut to the model's window), several scripts: what routing sees.
CHECK_TEXTS = (
    "hi",
    "why does my python script throw a KeyError here",
    "¿cómo se dice 'tengo alergia a los cacahuetes' en tailandés?",
    "我的账户被锁定了，怎么办",
    "please proofread: " + "the quick brown fox jumps over the lazy dog, " * 40,
)
# Texts per forward pass: a route file's examples arrive as one call of ~50-150.
MAX_BATCH = 32


class LocalEncoder:
    """Unit-length vectors from an exported graph (generator ExportEncoder), tokenized as the
    generator's Embed does (embed_inputs.encode_inputs: no special tokens, cut to the window,
    then wrapped); concurrent calls share forward passes (one worker thread owns the session
    and the tokenizer)."""

    def __init__(self, spec: generator_pb2.EncoderSpec, graph: bytes, *, n_threads: int) -> None:
        from tokenizers import Tokenizer

        if len(graph) != spec.graph_bytes or hashlib.sha256(graph).hexdigest() != spec.graph_sha256:
            raise ValueError(
                f"the exported graph arrived damaged ({len(graph)} of {spec.graph_bytes} bytes, "
                "or another digest)"
            )
        self._session = cpu_session(graph, n_threads)
        self._tokenizer = Tokenizer.from_str(spec.tokenizer_json)
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.model = spec.model
        self.dimensions = spec.dimensions
        self._prefix = list(spec.prefix)
        self._suffix = list(spec.suffix)
        self._room = spec.max_model_len - len(self._prefix) - len(self._suffix)
        self._pad = spec.pad_token_id
        # No wait for company: a lone message goes at once; under load the calls that queued
        # while a pass ran share the next one.
        self._batcher: MicroBatcher[list[str], np.ndarray] = MicroBatcher(
            self._run, max_batch_size=MAX_BATCH, max_wait_s=0.0, name="intent-encoder"
        )
        self._batcher.start()

    async def embed(self, texts: list[str]) -> np.ndarray:
        return await self._batcher.submit(texts, len(texts))

    async def close(self) -> None:
        await self._batcher.close()

    def _run(self, calls: list[list[str]]) -> list[np.ndarray | Exception]:
        """One batch, in the worker thread: every call's texts in passes of MAX_BATCH, sorted
        by length so that a long message pads only its neighbours in length."""
        texts = [text for call in calls for text in call]
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        sequences = [[*self._prefix, *e.ids[: self._room], *self._suffix] for e in encodings]
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        vectors = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(order), MAX_BATCH):
            rows = order[start : start + MAX_BATCH]
            vectors[rows] = self._forward([sequences[i] for i in rows])
        out: list[np.ndarray | Exception] = []
        start = 0
        for call in calls:
            out.append(vectors[start : start + len(call)])
            start += len(call)
        return out

    def _forward(self, sequences: list[list[int]]) -> np.ndarray:
        width = max(len(s) for s in sequences)
        ids = np.full((len(sequences), width), self._pad, dtype=np.int64)
        mask = np.zeros((len(sequences), width), dtype=np.int64)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = sequence
            mask[row, : len(sequence)] = 1
        (vectors,) = self._session.run(None, {"ids": ids, "mask": mask})
        return np.asarray(vectors, dtype=np.float32)


class LocalFirstEmbedder:
    """The router's Embedder: the local copy of the generator's model once `start` fetched and
    checked it, the generator's Embed before that and whenever the copy is off or failing.

    Start-up does not wait for the copy (an optimisation must not hold the gateway's health):
    `start_in_background` fetches it while the generator embeds; a generator that cannot export
    the model is final, other failures (the generator busy, restarting) are tried again after
    a pause, a few times."""

    # Fetch, load and check together (~2-3 s with a 90 MB graph between containers).
    START_TIMEOUT_S = 30.0
    # Pauses before the next attempts after a failure that may pass.
    RETRY_PAUSES_S = (2.0, 10.0, 30.0, 120.0)
    # A local pass longer than this hands its message to the generator.
    EMBED_TIMEOUT_S = 10.0
    # Failed passes in a row after which the copy is dropped (until a restart).
    MAX_FAILURES = 3

    def __init__(self, remote: GeneratorEmbedder, generator: GeneratorClient, n_threads: int):
        self.remote = remote
        self.generator = generator
        self.n_threads = n_threads
        self.local: LocalEncoder | None = None
        self._starting: asyncio.Task[bool] | None = None
        self._failures = 0

    @property
    def model(self) -> str:
        return self.remote.model

    async def ready(self) -> str:
        return await self.remote.ready()

    def start_in_background(self) -> asyncio.Task[bool]:
        self._starting = asyncio.create_task(self._start_with_retries())
        return self._starting

    async def _start_with_retries(self) -> bool:
        for pause in (*self.RETRY_PAUSES_S, None):
            outcome = await self.start()
            if outcome is not None:
                return outcome
            if pause is None:
                break
            await asyncio.sleep(pause)
        log.warning("intent encoder not run in the gateway: every attempt failed")
        return False

    async def start(self) -> bool | None:
        """Fetches, loads and checks the copy: True once it serves; False (logged) when the
        generator cannot export the model (final); None after a failure that may pass."""
        encoder: LocalEncoder | None = None
        model = self.remote.model
        try:
            async with asyncio.timeout(self.START_TIMEOUT_S):
                model = await self.remote.ready()
                request = generator_pb2.ExportEncoderRequest(
                    request_id=new_request_id(), model=model
                )
                spec, graph = await self.generator.export_encoder(request)
                encoder = await asyncio.to_thread(
                    LocalEncoder, spec, graph, n_threads=self.n_threads
                )
                texts = list(CHECK_TEXTS)
                reference = np.asarray(await self.remote.embed(texts), dtype=np.float32)
                found = agreement(reference, await encoder.embed(texts))
            if not found >= MIN_AGREEMENT:
                raise CopyDisagrees(
                    f"its vectors differ from the generator's (cosine {found:.6f} < "
                    f"{MIN_AGREEMENT})"
                )
        except BaseException as exc:
            if encoder is not None:
                await encoder.close()
            if not isinstance(exc, Exception):
                raise  # cancelled (shutdown)
            INTENT_ENCODER_LOCAL.set(0)
            reason = getattr(exc, "message", None) or str(exc) or repr(exc)
            extra = {"model": model, "reason": reason}
            if isinstance(exc, EncoderNotExportable | CopyDisagrees | ValueError):
                log.warning(
                    "intent encoder not run in the gateway; the generator embeds", extra=extra
                )
                return False
            log.warning(
                "intent encoder not fetched yet; the generator embeds meanwhile",
                extra=extra,
                exc_info=not isinstance(exc, APIError | TimeoutError),
            )
            return None
        self.local = encoder
        self._failures = 0
        INTENT_ENCODER_LOCAL.set(1)
        log.info(
            "intent encoder runs in the gateway",
            extra={"model": model, "graph_bytes": len(graph), "threads": self.n_threads},
        )
        return True

    async def embed(self, texts: list[str]) -> list[Sequence[float]]:
        local = self.local
        if local is not None:
            try:
                async with asyncio.timeout(self.EMBED_TIMEOUT_S):
                    vectors = await local.embed(texts)
                self._failures = 0
                # Rows copied: the vector cache keeps them, not the whole batch's array.
                return [row.copy() for row in vectors]
            except Exception:
                self._failures += 1
                log.warning("the local intent encoder failed; the generator embeds", exc_info=True)
                if self._failures >= self.MAX_FAILURES and self.local is local:
                    log.error("the local intent encoder is dropped after repeated failures")
                    self.local = None
                    INTENT_ENCODER_LOCAL.set(0)
                    await local.close()
        return await self.remote.embed(texts)

    async def close(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        local, self.local = self.local, None
        INTENT_ENCODER_LOCAL.set(0)
        if local is not None:
            await local.close()


class CopyDisagrees(Exception):
    """The local copy's vectors are not the generator's."""
