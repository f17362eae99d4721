"""TransformersRewardEngine: a reward model (task "reward") with plain Hugging Face transformers.

It loads a folder written by `parlance-train reward` (or any sequence-classification model with
one output and a chat template) and scores candidate answers to a conversation: each candidate
is appended to the conversation as an assistant turn, rendered with the folder's own chat
template (the one the trainer rendered the pairs with), and the model's one logit is its score.

A sequence longer than the model's window keeps its first token (the template's [CLS] or bos)
and its last max_model_len - 1 tokens, the trainer's rule (model_card.json, serving.truncation):
the candidate and the newest turns stay, the start of a long conversation goes. Concurrent
calls are micro-batched with the embedding engine's batcher (batcher.py); within a batch the
sequences are sorted by length so that padding stays small. Weights load from safetensors only
(no pickles), with local files only: nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from parlance.common.batcher import BatchStats, MicroBatcher
from parlance.common.errors import InvalidArgument
from parlance.generator import metrics
from parlance.generator.engine.base import (
    ModelInfo,
    ModelTask,
    RewardEngine,
    ScoreRequest,
    ScoreResult,
)
from parlance.generator.engine.hf_batches import (
    MicroBatchedEngine,
    load_local,
    padded_batches,
    run_per_call,
)

log = logging.getLogger(__name__)

ENGINE_NAME = "transformers"
# The trainer's truncation rule (parlance.trainer.base.encode); a folder naming another one is
# refused rather than scored differently from how it was trained.
TRUNCATION_RULE = "keep-first-token-and-tail"
_ROLES = {"developer": "system"}


def read_card(folder: Path) -> dict[str, Any]:
    """The folder's model_card.json ({} when it has none: a reward model from elsewhere)."""
    try:
        card = json.loads((folder / "model_card.json").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}/model_card.json is unreadable: {exc}") from None
    return card if isinstance(card, dict) else {}


def chat_ids(tokenizer: Any, conversation: list[dict[str, str]]) -> list[int]:
    """The token ids of a rendered conversation. transformers 5 (the GPU image's) returns a
    mapping from apply_chat_template(tokenize=True) where 4.x (the lock's) returned the ids."""
    out = tokenizer.apply_chat_template(conversation, tokenize=True)
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


class TransformersRewardEngine(MicroBatchedEngine, RewardEngine):
    name = ENGINE_NAME

    def __init__(
        self,
        *,
        served_model_name: str,
        model_path: str,
        max_model_len: int | None = None,
        max_batch_size: int = 16,
        max_wait_s: float = 0.002,
        max_candidates: int = 16,
        max_chars: int = 100_000,
        n_threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        self._served_model_name = served_model_name
        self._folder = Path(model_path)
        self._device = device
        self._configured_len = max_model_len
        self._n_threads = n_threads
        self._max_batch_size = max_batch_size
        self._max_candidates = max_candidates
        self._max_chars = max_chars
        self._batcher: MicroBatcher[ScoreRequest, ScoreResult] = MicroBatcher(
            self._run,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_s,
            name=f"reward-{served_model_name}",
            on_batch=self._observe,
        )
        self._tokenizer: Any = None
        self._model: Any = None
        self._torch: Any = None
        self._max_len = 0
        self._created = 0

    # --- life cycle ---------------------------------------------------------------------

    def _window(self, card: dict[str, Any], config: Any) -> int:
        serving = card.get("serving") or {}
        rule = serving.get("truncation", TRUNCATION_RULE)
        if rule != TRUNCATION_RULE:
            raise ValueError(f"{self._folder}: unknown truncation rule {rule!r}")
        trained = serving.get("max_length")
        window = int(getattr(config, "max_position_embeddings", 0) or 0) or 512
        length = self._configured_len or (trained if isinstance(trained, int) else window)
        return min(length, window)

    def _load(self) -> None:
        if not (self._folder / "config.json").is_file():
            raise ValueError(f"{self._folder} is not a model folder (no config.json)")
        card = read_card(self._folder)
        if card and card.get("task") != "reward":
            raise ValueError(
                f"{self._folder} holds a {card.get('task')!r} model, not a reward model"
            )
        started = time.perf_counter()
        torch, tokenizer, model = load_local(
            self._folder,
            "AutoModelForSequenceClassification",
            self._n_threads,
            self._device,
            use_safetensors=True,
        )
        if model.config.num_labels != 1:
            raise ValueError(
                f"{self._folder}: a reward model has one output; this one has "
                f"{model.config.num_labels} (a classifier, not a reward model)"
            )
        if not tokenizer.chat_template:
            raise ValueError(f"{self._folder}: its tokenizer has no chat template")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"{self._folder}: its tokenizer has no pad token")
        self._tokenizer, self._model, self._torch = tokenizer, model, torch
        self._max_len = self._window(card, model.config)
        self._created = int(time.time())
        log.info(
            "reward model loaded",
            extra={
                "model": self._served_model_name,
                "max_model_len": self._max_len,
                "load_s": round(time.perf_counter() - started, 2),
            },
        )

    def model_info(self) -> ModelInfo:
        return ModelInfo(
            id=self._served_model_name,
            created=self._created,
            max_model_len=self._max_len,
            engine=ENGINE_NAME,
            task=ModelTask.REWARD,
        )

    # --- scoring --------------------------------------------------------------------------

    async def score(self, request: ScoreRequest) -> ScoreResult:
        if len(request.candidates) > self._max_candidates:
            raise InvalidArgument(
                f"{len(request.candidates)} candidates in one call; the limit is "
                f"{self._max_candidates}",
                param="candidates",
            )
        chars = sum(len(m.content) for m in request.messages) + sum(
            len(c) for c in request.candidates
        )
        if chars > self._max_chars:
            raise InvalidArgument(
                f"the conversation and candidates hold {chars} characters; model "
                f"{self._served_model_name!r} takes at most {self._max_chars} per call",
                param="messages",
            )
        return await self._batcher.submit(request, len(request.candidates))

    def _observe(self, stats: BatchStats) -> None:
        metrics.REWARD_BATCH_SEQUENCES.labels(self._served_model_name).observe(stats.inputs)
        for wait in stats.queue_waits_s:
            metrics.REWARD_QUEUE_TIME.labels(self._served_model_name).observe(wait)

    def _run(self, requests: list[ScoreRequest]) -> list[ScoreResult | Exception]:
        """One batch, in the worker thread: render and tokenize every call (a bad call fails
        alone), one pass over all their sequences, the scores handed back per call."""
        encoded: list[tuple[list[list[int]], int] | Exception] = []
        for request in requests:
            try:
                encoded.append(self._encode(request))
            except Exception as exc:  # the chat template refused this call's turns: it fails alone
                encoded.append(
                    InvalidArgument(f"cannot render the conversation: {exc}", param="messages")
                )
        return run_per_call(
            encoded,
            lambda item: item[0],
            self._forward,
            lambda item, scores: ScoreResult(
                scores=scores, token_counts=[len(ids) for ids in item[0]], truncated=item[1]
            ),
        )

    def _encode(self, request: ScoreRequest) -> tuple[list[list[int]], int]:
        turns = [
            {"role": _ROLES.get(m.role, m.role), "content": m.content} for m in request.messages
        ]
        sequences, truncated = [], 0
        for candidate in request.candidates:
            conversation = [*turns, {"role": "assistant", "content": candidate}]
            ids = chat_ids(self._tokenizer, conversation)
            if len(ids) > self._max_len:
                ids = ids[:1] + ids[len(ids) - (self._max_len - 1) :]
                truncated += 1
            sequences.append(ids)
        return sequences, truncated

    def _forward(self, sequences: list[list[int]]) -> list[float]:
        torch = self._torch
        pad = self._tokenizer.pad_token_id
        out = [0.0] * len(sequences)
        with torch.inference_mode():
            batches = padded_batches(torch, sequences, pad, self._max_batch_size, self._device)
            for chunk, ids, mask in batches:
                logits = self._model(input_ids=ids, attention_mask=mask).logits
                for row, value in zip(chunk, logits[:, 0].float().tolist(), strict=True):
                    out[row] = value
        return out
