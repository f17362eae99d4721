"""The production classifier: Detoxify (unitaryai), transformer models trained on Jigsaw data.

Loading goes through Detoxify's own code (`detoxify.Detoxify(...)`): its checkpoint format (a
dict with the training "config" — arch args naming the transformers model and tokenizer classes,
the class names — and the "state_dict") and its class-name normalisation. Scoring does not use
`Detoxify.predict()`, which truncates at the model's length: texts are split into token windows
here, all windows of a batch go through the model in forward passes of at most
`max_batch_size` windows, and a text's score per label is the maximum over its windows, so a
toxic tail after the first 512 tokens is caught. Windows overlap by WINDOW_OVERLAP tokens so that
a phrase cut by a window boundary is still seen whole in one of them.

Detoxify's labels mapped onto OpenAI's moderation categories (a category scores the maximum of
its labels). Label definitions are the Jigsaw annotators' ones.

Detoxify label -> OpenAI category, and why:
- toxicity -> harassment: "a rude, disrespectful or unreasonable comment likely to make people
  leave a discussion", abuse aimed at the people in the conversation.
- severe_toxicity -> harassment: the same, "very hateful, aggressive, disrespectful".
- insult -> harassment: "an insulting, inflammatory or negative comment towards a person".
- threat -> harassment/threatening and violence: "describes an intention to inflict pain,
  injury or violence against an individual or group": threatening harassment, and content that
  promotes violence.
- identity_attack -> hate: "a negative or hateful comment targeting someone because of their
  identity" (race, religion, gender, ...). The original model calls it identity_hate; Detoxify
  renames it.
- sexual_explicit -> sexual: "references to sexual acts, body parts or other lewd content"
  (unbiased and multilingual only).
- obscene -> nothing: "swear words, curse words, or other obscene or profane language" is
  vulgarity, neither sexual content nor aimed at anyone; profanity aimed at someone already
  scores on toxicity and insult.
- unbiased's identity labels (male, female, christian, ...) -> nothing: they say which identity
  a text mentions, not whether it is harmful.

Not evaluated by any Detoxify model, so never claimed: hate/threatening (no label for a threat
aimed at a group: threat and identity_attack both high can come from two separate sentences),
illicit, illicit/violent, self-harm (all three), sexual/minors, violence/graphic. The original
models have no sexual_explicit label, so they do not claim "sexual" either.

Violence is covered only where it is threatened (the threat label): graphic descriptions of
violence without a threat are not what the model was trained on.

The default threshold is 0.5, Detoxify's own cut (a sigmoid output per label, trained with
binary cross-entropy); the released checkpoints are not reachable from the machine this was
written on, so it has not been re-measured here: tune per category with SAFETY_*_THRESHOLDS.

Offline loading: Detoxify 0.5.4 still reads the base model's config by the checkpoint's arch
name (`config_class.from_pretrained("bert-base-uncased")`, unitaryai/detoxify#126) even when
`huggingface_config_path` is given; that name must be resolvable offline too, from the Hugging
Face cache (HF_HUB_OFFLINE=1 with the cache baked into the image) or as a local folder.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from parlance.safety import metrics
from parlance.safety.categories import (
    HARASSMENT,
    HARASSMENT_THREATENING,
    HATE,
    OPENAI_CATEGORIES,
    SEXUAL,
    VIOLENCE,
)
from parlance.safety.classifier.base import Classifier

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
# Tokens two consecutive windows share; a toxic phrase shorter than this is never cut in two.
WINDOW_OVERLAP = 64

# Detoxify label (after Detoxify's own renaming) -> OpenAI categories; see the table above.
LABEL_CATEGORIES: dict[str, tuple[str, ...]] = {
    "toxicity": (HARASSMENT,),
    "severe_toxicity": (HARASSMENT,),
    "insult": (HARASSMENT,),
    "threat": (HARASSMENT_THREATENING, VIOLENCE),
    "identity_attack": (HATE,),
    "sexual_explicit": (SEXUAL,),
    "obscene": (),
}

_ORIGINAL_LABELS = ("toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack")
_UNBIASED_LABELS = (*_ORIGINAL_LABELS, "sexual_explicit")
# The toxicity labels each released model type is trained on (unbiased also has identity
# labels, which are not mapped).
MODEL_TYPE_LABELS: dict[str, tuple[str, ...]] = {
    "original": _ORIGINAL_LABELS,
    "original-small": _ORIGINAL_LABELS,
    "unbiased": _UNBIASED_LABELS,
    "unbiased-small": _UNBIASED_LABELS,
    "multilingual": _UNBIASED_LABELS,
}
# Position ids of these architectures start after the padding index, so they take two
# positions fewer than max_position_embeddings says.
_POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}


def categories_for_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """The OpenAI categories the labels evaluate, in OPENAI_CATEGORIES order."""
    covered = {c for label in labels for c in LABEL_CATEGORIES.get(label, ())}
    return tuple(c for c in OPENAI_CATEGORIES if c in covered)


class DetoxifyClassifier(Classifier):
    def __init__(
        self,
        model_type: str = "original",
        *,
        checkpoint: str | None = None,
        huggingface_config_path: str | None = None,
        device: str = "cpu",
        max_batch_size: int = 32,
    ) -> None:
        if model_type not in MODEL_TYPE_LABELS:
            raise ValueError(
                f"unknown Detoxify model type {model_type!r}; "
                f"choose one of {sorted(MODEL_TYPE_LABELS)}"
            )
        self.model_type = model_type
        self.checkpoint = checkpoint
        self.huggingface_config_path = huggingface_config_path
        self.device = device
        self.max_batch_size = max_batch_size
        # Known before loading (the policy is built from it) and checked against the
        # checkpoint's class names at load.
        self._categories = categories_for_labels(MODEL_TYPE_LABELS[model_type])
        self._model: Any = None
        self._tokenizer: Any = None
        self._torch: Any = None
        # (label index, categories) for the labels that map somewhere.
        self._label_map: list[tuple[int, tuple[str, ...]]] = []
        self._max_length = 0
        # Forward passes made; the metric is process-wide, this one is per classifier.
        self.forward_passes = 0

    @property
    def name(self) -> str:
        return f"detoxify-{self.model_type}"

    @property
    def evaluated_categories(self) -> tuple[str, ...]:
        return self._categories

    @property
    def default_threshold(self) -> float:
        return DEFAULT_THRESHOLD

    async def load(self) -> None:
        # Loading reads (or downloads) hundreds of MB; a thread keeps the event loop, and so the
        # health service, responsive. After this only the inference worker touches the model.
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        import detoxify
        import torch

        self._torch = torch
        loaded = detoxify.Detoxify(
            model_type=self.model_type,
            checkpoint=self.checkpoint,
            device=self.device,
            huggingface_config_path=self.huggingface_config_path,
        )
        model, tokenizer, class_names = loaded.model, loaded.tokenizer, list(loaded.class_names)
        missing = [
            label for label in MODEL_TYPE_LABELS[self.model_type] if label not in class_names
        ]
        if missing:
            raise ValueError(
                f"the checkpoint's classes {class_names} lack {missing}, which model type "
                f"{self.model_type!r} has; is SAFETY_DETOXIFY_MODEL_TYPE right?"
            )
        self._label_map = [
            (index, LABEL_CATEGORIES[label])
            for index, label in enumerate(class_names)
            if LABEL_CATEGORIES.get(label)
        ]
        model.eval()
        config = model.config
        limits = [config.max_position_embeddings - _POSITION_OFFSET.get(config.model_type, 0)]
        # Tokenizers saved without a limit report a huge sentinel value.
        if 0 < tokenizer.model_max_length < 100_000:
            limits.append(tokenizer.model_max_length)
        self._max_length = min(limits)
        self._model, self._tokenizer = model, tokenizer
        log.info(
            "detoxify loaded",
            extra={
                "model_type": self.model_type,
                "architecture": type(model).__name__,
                "classes": class_names,
                "max_length": self._max_length,
                "device": str(self.device),
            },
        )

    def _windows(self, token_ids: list[int]) -> Iterator[list[int]]:
        """Token windows of one text, each with the model's special tokens, each at most
        max_length long; an empty text is one window of special tokens only."""
        tokenizer = self._tokenizer
        size = self._max_length - tokenizer.num_special_tokens_to_add(pair=False)
        step = max(1, size - WINDOW_OVERLAP)
        start = 0
        while True:
            yield tokenizer.build_inputs_with_special_tokens(token_ids[start : start + size])
            if start + size >= len(token_ids):
                return
            start += step

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        if self._model is None:
            raise RuntimeError("DetoxifyClassifier.score() called before load()")
        torch = self._torch
        tokenizer = self._tokenizer
        # No truncation: long texts become several windows (verbose=False: the "longer than
        # the maximum" warning is expected here).
        encoded = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)
        windows: list[tuple[int, list[int]]] = []
        for text_index, token_ids in enumerate(encoded["input_ids"]):
            text_windows = list(self._windows(token_ids))
            metrics.WINDOWS_PER_TEXT.observe(len(text_windows))
            windows.extend((text_index, window) for window in text_windows)
        # Similar lengths together: less padding per forward pass.
        windows.sort(key=lambda item: len(item[1]))

        label_scores = torch.zeros((len(texts), len(self._label_map)))
        label_indices = torch.tensor([index for index, _ in self._label_map], dtype=torch.long)
        with torch.inference_mode():
            for start in range(0, len(windows), self.max_batch_size):
                chunk = windows[start : start + self.max_batch_size]
                batch = tokenizer.pad(
                    {"input_ids": [ids for _, ids in chunk]}, padding=True, return_tensors="pt"
                ).to(self._model.device)
                logits = self._model(**batch).logits
                probabilities = torch.sigmoid(logits.float()).cpu()[:, label_indices]
                self.forward_passes += 1
                metrics.FORWARD_PASSES.inc()
                metrics.FORWARD_BATCH_WINDOWS.observe(len(chunk))
                owners = torch.tensor([text_index for text_index, _ in chunk], dtype=torch.long)
                # Max over each text's windows (scores are >= 0, so zeros are a neutral start).
                label_scores.scatter_reduce_(
                    0, owners.unsqueeze(1).expand_as(probabilities), probabilities, "amax"
                )

        results: list[dict[str, float]] = []
        for row in label_scores.tolist():
            scores = dict.fromkeys(self._categories, 0.0)
            for (_, categories), value in zip(self._label_map, row, strict=True):
                for category in categories:
                    scores[category] = max(scores[category], value)
            results.append(scores)
        return results

    async def close(self) -> None:
        self._model = None
        self._tokenizer = None
