"""LoRA adapter files: finding the one an engine serves in an adapter folder, its digest, and
the checks that refuse an adapter trained on another base before an engine touches it.

An adapter folder (parlance-train's output) may hold both forms: a GGUF LoRA for llama.cpp and
a PEFT folder for vLLM. Each engine takes its own from the folder itself or one of its direct
subfolders, and there must be exactly one (two would make the choice a guess).

The GGUF reader here reads only headers (metadata and tensor shapes), in pure Python: it runs
before llama.cpp loads anything, so that a wrong adapter gets a message naming the problem
(llama.cpp's own loader only logs it and returns NULL).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

GGUF_MAGIC = b"GGUF"
PEFT_CONFIG = "adapter_config.json"
# safetensors only: its header gives the shapes checked below without loading a pickle.
PEFT_WEIGHTS = "adapter_model.safetensors"


class AdapterError(ValueError):
    """The adapter cannot be served: missing, corrupt, or for another base (the message says)."""


def _candidates(folder: Path) -> Iterator[Path]:
    yield folder
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            yield child


def find_gguf_lora(folder: Path) -> Path:
    """The one GGUF file in the folder or its direct subfolders."""
    if folder.is_file():
        return folder
    found = [f for d in _candidates(folder) for f in sorted(d.glob("*.gguf")) if f.is_file()]
    if not found:
        raise AdapterError(f"no GGUF LoRA (*.gguf) in {folder} or its subfolders")
    if len(found) > 1:
        names = ", ".join(str(f.relative_to(folder)) for f in found)
        raise AdapterError(f"more than one GGUF file in {folder} ({names}); keep one")
    return found[0]


def find_peft_folder(folder: Path) -> Path:
    """The one PEFT adapter folder (adapter_config.json) among the folder and its subfolders."""
    found = [d for d in _candidates(folder) if (d / PEFT_CONFIG).is_file()]
    if not found:
        raise AdapterError(f"no PEFT adapter ({PEFT_CONFIG}) in {folder} or its subfolders")
    if len(found) > 1:
        names = ", ".join(str(d) for d in found)
        raise AdapterError(f"more than one PEFT adapter in {folder} ({names}); keep one")
    return found[0]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# parlance-train's manifest beside the adapter: base.gguf_digest is the sha256 of the GGUF the
# adapter was trained against (dequantized), for an adapter of a GGUF base.
MANIFEST = "manifest.json"


def manifest_base_gguf_digest(folder: Path) -> str | None:
    """The base GGUF digest ("sha256:<hex>") the adapter folder's manifest records, if any."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{path} is not readable JSON: {exc}") from None
    base = manifest.get("base") if isinstance(manifest, dict) else None
    digest = base.get("gguf_digest") if isinstance(base, dict) else None
    return digest if isinstance(digest, str) and digest else None


# -- GGUF headers ----------------------------------------------------------------------------

# GGUF value types: struct formats of the scalars; 8 = string, 9 = array.
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
# Arrays longer than this (a vocabulary) are skipped, not kept: headers only need scalars.
_KEEP_ARRAY_MAX = 64
# Arrays of arrays deeper than this are refused (real GGUF files nest at most one level): the
# reader recurses once per level.
_MAX_NESTING = 4
# The fewest bytes one item of each type takes (a string: its length; an array: type, count),
# to refuse a count the rest of the file cannot hold before reading any item.
_ITEM_MIN_BYTES = {kind: struct.calcsize("<" + fmt) for kind, fmt in _SCALARS.items()} | {
    _STRING: 8,
    _ARRAY: 12,
}


@dataclass(frozen=True, slots=True)
class GgufHeader:
    metadata: dict[str, Any]
    # Tensor name -> dims in GGUF order (ne[0] first: the row length).
    tensors: dict[str, tuple[int, ...]]


class _Reader:
    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self._handle = handle
        self._path = path
        self._size = os.fstat(handle.fileno()).st_size

    def take(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        raw = self._handle.read(size)
        if len(raw) != size:
            raise AdapterError(f"{self._path} is truncated (its GGUF header ends early)")
        return struct.unpack("<" + fmt, raw)[0]

    def string(self) -> str:
        length = self.take("Q")
        if length > 1 << 24:
            raise AdapterError(f"{self._path} is corrupt (a GGUF string of {length} bytes)")
        raw = self._handle.read(length)
        if len(raw) != length:
            raise AdapterError(f"{self._path} is truncated (its GGUF header ends early)")
        return raw.decode("utf-8", errors="replace")

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            return self.array(depth)
        raise AdapterError(f"{self._path} is corrupt (unknown GGUF value type {kind})")

    def array(self, depth: int) -> list[Any] | None:
        """A short array's items; a long one skipped (None), scalars by seeking past them."""
        if depth >= _MAX_NESTING:
            raise AdapterError(f"{self._path} is corrupt (GGUF arrays nested over {depth} deep)")
        item_kind, count = self.take("I"), self.take("Q")
        # An unknown item type is refused by value() at the first item.
        if count * _ITEM_MIN_BYTES.get(item_kind, 1) > self._size - self._handle.tell():
            raise AdapterError(f"{self._path} is truncated or corrupt (a GGUF array of {count})")
        if count <= _KEEP_ARRAY_MAX:
            return [self.value(item_kind, depth + 1) for _ in range(count)]
        if item_kind in _SCALARS:
            self._handle.seek(count * _ITEM_MIN_BYTES[item_kind], os.SEEK_CUR)
        else:
            for _ in range(count):
                self.value(item_kind, depth + 1)
        return None


def read_gguf_header(path: Path) -> GgufHeader:
    """Metadata (long arrays left out) and tensor shapes; AdapterError for a file that is not
    a readable GGUF."""
    try:
        with path.open("rb") as handle:
            if handle.read(4) != GGUF_MAGIC:
                raise AdapterError(f"{path} is not a GGUF file (bad magic bytes)")
            reader = _Reader(handle, path)
            version = reader.take("I")
            if version not in (2, 3):
                raise AdapterError(f"{path}: unsupported GGUF version {version}")
            n_tensors, n_kv = reader.take("Q"), reader.take("Q")
            if n_tensors > 1 << 20 or n_kv > 1 << 20:
                raise AdapterError(f"{path} is corrupt (implausible GGUF header counts)")
            metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key = reader.string()
                value = reader.value(reader.take("I"))
                if value is not None:
                    metadata[key] = value
            tensors: dict[str, tuple[int, ...]] = {}
            for _ in range(n_tensors):
                name = reader.string()
                n_dims = reader.take("I")
                if n_dims > 4:
                    raise AdapterError(f"{path} is corrupt (a tensor of {n_dims} dimensions)")
                dims = tuple(reader.take("Q") for _ in range(n_dims))
                reader.take("I")  # type
                reader.take("Q")  # offset
                tensors[name] = dims
    except OSError as exc:
        raise AdapterError(f"cannot read {path}: {exc.strerror or exc}") from None
    return GgufHeader(metadata, tensors)


def check_gguf_lora(adapter: GgufHeader, base: GgufHeader, *, where: str) -> None:
    """The checks llama.cpp makes when it loads a LoRA (llama-adapter.cpp), made first so that
    a refusal names its reason: an adapter file, for the base's architecture, each A/B pair
    matching a base tensor's shape."""
    meta = adapter.metadata
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        raise AdapterError(
            f"{where} is not a GGUF LoRA adapter (general.type={meta.get('general.type')!r}, "
            f"adapter.type={meta.get('adapter.type')!r})"
        )
    arch, base_arch = meta.get("general.architecture"), base.metadata.get("general.architecture")
    if arch != base_arch:
        raise AdapterError(
            f"{where} is a LoRA for the {arch!r} architecture; the parent model is {base_arch!r}"
        )
    pairs = {n[: -len(".lora_a")] for n in adapter.tensors if n.endswith(".lora_a")}
    if not pairs:
        raise AdapterError(f"{where} holds no LoRA tensors")
    for name in sorted(pairs):
        a, b = adapter.tensors[f"{name}.lora_a"], adapter.tensors.get(f"{name}.lora_b")
        target = base.tensors.get(name)
        if b is None:
            raise AdapterError(f"{where}: LoRA tensor {name!r} has no lora_b")
        if target is None:
            raise AdapterError(
                f"{where}: LoRA tensor {name!r} has no counterpart in the parent model "
                "(an adapter trained on another base)"
            )
        # 2-D each (a norm or bias target is 1-D), and A/B chained onto the target's shape.
        fits = min(len(a), len(b), len(target)) >= 2 and target[:2] == (a[0], b[1])
        if not fits or a[1] != b[0]:
            raise AdapterError(
                f"{where}: LoRA tensor {name!r} (A {list(a)}, B {list(b)}) does not fit the "
                f"parent's {list(target)} (an adapter trained on another base)"
            )


# -- PEFT folders (vLLM) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeftAdapter:
    folder: Path
    weights: Path
    rank: int
    base_model: str
    # (module path without the PEFT prefix, "A" or "B") -> shape, from the safetensors header.
    shapes: dict[tuple[str, str], tuple[int, ...]]


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with path.open("rb") as handle:
            raw = handle.read(8)
            if len(raw) != 8:
                raise AdapterError(f"{path} is truncated")
            (length,) = struct.unpack("<Q", raw)
            if length > 1 << 26:
                raise AdapterError(f"{path} is corrupt (a {length}-byte safetensors header)")
            header = json.loads(handle.read(length))
    except OSError as exc:
        raise AdapterError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise AdapterError(f"{path} is corrupt (its safetensors header is not JSON)") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{path} is corrupt (its safetensors header is not a JSON object)")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, dict) or "shape" not in entry:
            continue
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(
            type(d) is int and d >= 0 for d in shape
        ):  # type() is int: a bool is not a dimension
            raise AdapterError(f"{path} is corrupt (tensor {name!r} has the shape {shape!r})")
        shapes[name] = tuple(shape)
    return shapes


def read_peft_adapter(folder: Path) -> PeftAdapter:
    """The adapter's config and tensor shapes; AdapterError for what vLLM would refuse or
    could not load."""
    try:
        config = json.loads((folder / PEFT_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{folder / PEFT_CONFIG} is not readable JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise AdapterError(f"{folder} is not a PEFT LoRA adapter (peft_type is not 'LORA')")
    if config.get("modules_to_save"):
        raise AdapterError(
            f"{folder}: modules_to_save {config['modules_to_save']} is set; vLLM serves LoRA "
            "weights only (train without modules_to_save)"
        )
    weights = folder / PEFT_WEIGHTS
    if not weights.is_file():
        raise AdapterError(f"{folder} has no {PEFT_WEIGHTS} (PEFT's safetensors weights)")
    shapes: dict[tuple[str, str], tuple[int, ...]] = {}
    for name, shape in _safetensors_shapes(weights).items():
        for part in ("A", "B"):
            marker = f".lora_{part}.weight"
            if name.endswith(marker):
                module = name[: -len(marker)].removeprefix("base_model.model.")
                shapes[(module, part)] = shape
    if not shapes:
        raise AdapterError(f"{weights} holds no lora_A/lora_B tensors")
    try:
        rank = int(config.get("r") or 0)
    except (TypeError, ValueError):
        raise AdapterError(
            f"{folder / PEFT_CONFIG}: r must be an integer rank, not {config.get('r')!r}"
        ) from None
    return PeftAdapter(
        folder=folder,
        weights=weights,
        rank=rank,
        base_model=str(config.get("base_model_name_or_path") or ""),
        shapes=shapes,
    )


def llama_linear_shapes(hf_config: Any) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of the linear layers of a llama-family decoder (llama,
    mistral, qwen2...), by module name, from its HF config."""
    hidden = int(hf_config.hidden_size)
    heads = int(hf_config.num_attention_heads)
    kv_heads = int(getattr(hf_config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(hf_config, "head_dim", None) or hidden // heads)
    inter = int(getattr(hf_config, "intermediate_size", 0) or 0)
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def check_peft_adapter(adapter: PeftAdapter, hf_config: Any, *, max_rank: int) -> None:
    """Refuses what would fail inside vLLM's engine core (a rank over max_lora_rank) or corrupt
    its batch (LoRA weights whose shapes do not fit the base's layers: vLLM copies them into
    its stacked buffers only when a request first uses the adapter)."""
    if adapter.rank < 1:
        raise AdapterError(f"{adapter.folder}: adapter_config.json has no rank r")
    if adapter.rank > max_rank:
        raise AdapterError(
            f"{adapter.folder}: rank {adapter.rank} is over this engine's max_lora_rank "
            f"{max_rank} (raise the parent's setting max_lora_rank)"
        )
    linear = llama_linear_shapes(hf_config)
    layers = int(getattr(hf_config, "num_hidden_layers", 0) or 0)
    for (module, part), shape in sorted(adapter.shapes.items()):
        leaf = module.rsplit(".", 1)[-1]
        _check_layer_index(module, layers, adapter.folder)
        if leaf not in linear or len(shape) != 2:
            continue  # not a llama-family linear: vLLM's own loader checks it
        fan_in, fan_out = linear[leaf]
        # A is (rank, in), B is (out, rank); a rank_pattern may give modules their own rank.
        rank, fits = (
            (shape[0], shape[1] == fan_in) if part == "A" else (shape[1], shape[0] == fan_out)
        )
        if rank > max_rank:
            raise AdapterError(
                f"{adapter.folder}: {module} has rank {rank}, over this engine's max_lora_rank "
                f"{max_rank} (raise the parent's setting max_lora_rank)"
            )
        if not fits:
            needed = f"[r, {fan_in}]" if part == "A" else f"[{fan_out}, r]"
            raise AdapterError(
                f"{adapter.folder}: lora_{part} of {module} is {list(shape)}, the parent needs "
                f"{needed} (an adapter trained on another base)"
            )


def _check_layer_index(module: str, layers: int, folder: Path) -> None:
    parts = module.split(".")
    if "layers" in parts and layers:
        index = parts.index("layers") + 1
        if index < len(parts) and parts[index].isdigit() and int(parts[index]) >= layers:
            raise AdapterError(
                f"{folder}: {module} is past the parent's {layers} layers (an adapter trained "
                "on another base)"
            )
