"""Bakes a Detoxify model into the safety image at build time (services/safety/Dockerfile).

    python bake_detoxify.py --manifest detoxify-weights.txt --model-type original \
        --out /opt/detoxify [--sha256 <digest>]

1. Downloads the model type's checkpoint from the URL in the manifest and checks its SHA-256
   against the manifest (or --sha256, which wins); with neither, it refuses to bake.
2. Downloads the base model's Hugging Face config and tokenizer files (no weights) into the
   Hugging Face cache (HF_HOME). Detoxify 0.5.4 reads the base config by hub name even when
   given a local folder (unitaryai/detoxify#126), so the cache must hold it for offline starts.
3. Writes OUT/hf: the base config with the checkpoint's number of labels (the hub's config has
   two, the checkpoints six or more, which would not load) and the tokenizer files: the folder
   SAFETY_DETOXIFY_HF_CONFIG_PATH points at.
4. Loads the result through Detoxify, offline, and scores a text, so that weights that would
   fail at start fail the build instead.

OUT/checkpoint.ckpt is the checkpoint (SAFETY_DETOXIFY_CHECKPOINT). Standard library only before
the checksum has passed: the checkpoint is a pickle, and nothing unpickles it unverified.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# The config and tokenizer files of the base models Detoxify builds on (bert-base-uncased,
# roberta-base, xlm-roberta-base, albert-base-v2): *.model are the SentencePiece ones.
HF_FILES = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",
]
# torch.hub's convention, which Detoxify's release files follow: "name-<sha256 prefix>.ext".
HASH_PREFIX = re.compile(r"-([a-f0-9]{8,})\.")
UNPINNED = "-"
# Detoxify's own loader, offline: the image's build runs this before the service is installed
# (the Dockerfile checks the service's code path again, as the runtime user).
SMOKE_TEST = """
import sys
from detoxify import Detoxify
model = Detoxify(sys.argv[1], checkpoint=sys.argv[2], huggingface_config_path=sys.argv[3])
print("smoke test scores:", model.predict("Hello, how are you today?"))
"""


@dataclass(frozen=True)
class Weights:
    model_type: str
    url: str
    # None where the manifest pins no digest.
    sha256: str | None


def read_manifest(path: Path) -> dict[str, Weights]:
    entries: dict[str, Weights] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 3:
            raise ValueError(f"{path}:{number}: expected model_type, url, sha256: {line!r}")
        model_type, url, digest = fields
        if digest != UNPINNED and not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"{path}:{number}: {digest!r} is not a SHA-256 hex digest")
        if model_type in entries:
            raise ValueError(f"{path}:{number}: {model_type} listed twice")
        entries[model_type] = Weights(model_type, url, None if digest == UNPINNED else digest)
    return entries


def expected_digest(weights: Weights, override: str | None) -> str:
    digest = (override or "").strip().lower() or weights.sha256
    if not digest:
        raise SystemExit(
            f"no SHA-256 pinned for Detoxify {weights.model_type!r} in the manifest: pass "
            "--build-arg DETOXIFY_SHA256=<digest of the checkpoint> (or pin it in "
            "services/safety/detoxify-weights.txt); refusing to bake unverified weights"
        )
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise SystemExit(f"{digest!r} is not a SHA-256 hex digest")
    prefix = HASH_PREFIX.search(weights.url.rsplit("/", 1)[-1])
    if prefix and not digest.startswith(prefix.group(1)):
        raise SystemExit(
            f"the pinned SHA-256 {digest} does not start with {prefix.group(1)}, the prefix "
            f"in the release file's name ({weights.url}): wrong digest for this file"
        )
    return digest


def download(url: str, target: Path, digest: str) -> None:
    """Streams url to target, hashing as it goes; a mismatch leaves no file behind."""
    partial = target.with_suffix(".partial")
    sha = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
        while chunk := response.read(1 << 20):
            sha.update(chunk)
            out.write(chunk)
    if sha.hexdigest() != digest:
        partial.unlink()
        raise SystemExit(f"SHA-256 mismatch for {url}: got {sha.hexdigest()}, pinned {digest}")
    partial.replace(target)
    print(f"downloaded {url} ({target.stat().st_size} bytes), SHA-256 verified")


def write_hf_folder(checkpoint: Path, out: Path) -> str:
    """Fetches the base model's config and tokenizer into the HF cache and writes `out`;
    returns the base model's name."""
    import torch
    import transformers
    from huggingface_hub import snapshot_download

    # weights_only=False: Detoxify's checkpoints hold their training config as plain objects;
    # the file's digest was verified above.
    args = torch.load(checkpoint, map_location="cpu", weights_only=False)["config"]["arch"]["args"]
    base = args["model_type"]
    # The released checkpoints name a hub model; a local folder (the tests' checkpoints) needs
    # no download.
    if not Path(base).is_dir():
        snapshot_download(repo_id=base, allow_patterns=HF_FILES)
    model_class = getattr(transformers, args["model_name"])
    config = model_class.config_class.from_pretrained(base, num_labels=args["num_classes"])
    config.save_pretrained(out)
    getattr(transformers, args["tokenizer_name"]).from_pretrained(base).save_pretrained(out)
    return base


def smoke_test(model_type: str, checkpoint: Path, hf_dir: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    subprocess.run(
        [sys.executable, "-c", SMOKE_TEST, model_type, str(checkpoint), str(hf_dir)],
        env=env,
        check=True,
    )


def bake(manifest: Path, model_type: str, out: Path, sha256: str | None) -> None:
    entries = read_manifest(manifest)
    if model_type not in entries:
        raise SystemExit(f"no Detoxify model type {model_type!r} in {manifest}: {sorted(entries)}")
    weights = entries[model_type]
    digest = expected_digest(weights, sha256)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.ckpt"
    download(weights.url, checkpoint, digest)
    base = write_hf_folder(checkpoint, out / "hf")
    print(f"wrote {out / 'hf'} from {base}")
    smoke_test(model_type, checkpoint, out / "hf")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--model-type", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sha256", help="the checkpoint's digest; wins over the manifest's")
    options = parser.parse_args(argv)
    bake(options.manifest, options.model_type, options.out, options.sha256)


if __name__ == "__main__":
    main()
