"""A PEFT LoRA as a GGUF LoRA for the llama.cpp engine, by llama.cpp's own converter
(`convert_lora_to_gguf.py` with the `conversion/` package it imports).

The converter is not on PyPI as a module: it ships in llama-cpp-python's source distribution,
at the version the generator serves with (the same llama.cpp reads what it wrote). It is taken
from that sdist once, checked against the digest pinned here, and kept in the cache
(<cache>/llama-cpp-convert-<version>-2/, with llama.cpp's MIT licence beside it); nothing of it
is copied into this repository. It runs in a subprocess of this interpreter with the sdist's
own gguf-py (the script puts it first on its path): PyPI's gguf 0.19.0 lacks what this
converter uses (gguf.LazyChunkedTensor).

Where the sdist comes from: $PARLANCE_LLAMA_CPP_SDIST (a downloaded file), else
`pip download --no-deps --no-binary :all: llama-cpp-python==<version>` (PyPI, once).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

from parlance.trainer.errors import TrainError
from parlance.trainer.lm_base import cache_root

log = logging.getLogger(__name__)

# services/generator/pyproject.toml pins llama-cpp-python at this version (a test checks).
LLAMA_CPP_PYTHON = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SCRIPT = "convert_lora_to_gguf.py"
_PREFIX = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
# What the converter needs from the sdist, relative to llama.cpp's folder.
_MEMBERS = (SCRIPT, "LICENSE")
_PACKAGE = "conversion/"
# The converter's own gguf library (the script imports it from beside itself).
_GGUF_PY = "gguf-py/gguf/"
# llama.cpp's converter tail shown in an error (its log says what it refused).
_ERROR_LINES = 15


def _sdist() -> tuple[Path, Path | None]:
    """The sdist file, and a temporary folder to delete afterwards (None: the user's file)."""
    given = os.environ.get("PARLANCE_LLAMA_CPP_SDIST")
    if given:
        return Path(given), None
    scratch = Path(tempfile.mkdtemp(prefix="parlance-sdist-"))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    command += ["--quiet", "-d", str(scratch), f"llama-cpp-python=={LLAMA_CPP_PYTHON}"]
    log.info("downloading llama-cpp-python %s's sdist for its LoRA converter", LLAMA_CPP_PYTHON)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    files = list(scratch.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not files:
        shutil.rmtree(scratch, ignore_errors=True)
        raise TrainError(
            f"cannot get llama.cpp's LoRA converter: pip download of llama-cpp-python=="
            f"{LLAMA_CPP_PYTHON} failed ({done.stderr.strip()[-300:]}); download the sdist "
            "elsewhere and set PARLANCE_LLAMA_CPP_SDIST to its path"
        )
    return files[0], scratch


def _extract(sdist: Path, target: Path) -> None:
    h = hashlib.sha256()
    try:
        with sdist.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise TrainError(f"cannot read {sdist}: {exc.strerror or exc}") from None
    if h.hexdigest() != SDIST_SHA256:
        raise TrainError(
            f"{sdist} is not llama-cpp-python {LLAMA_CPP_PYTHON}'s sdist (sha256 "
            f"{h.hexdigest()}, expected {SDIST_SHA256})"
        )
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            rel = member.name.removeprefix(_PREFIX)
            if rel == member.name or not member.isfile():
                continue
            wanted = rel.startswith(_PACKAGE) and rel.endswith(".py")
            if rel in _MEMBERS or wanted or rel.startswith(_GGUF_PY):
                member.name = rel
                tar.extract(member, target, filter="data")


def converter_dir() -> Path:
    """The folder holding llama.cpp's converter, made on first use (atomically, like
    lm_base.converted_folder)."""
    # "-2": the first layout of this cache lacked gguf-py.
    target = cache_root() / f"llama-cpp-convert-{LLAMA_CPP_PYTHON}-2"
    if (target / SCRIPT).is_file():
        return target
    sdist, scratch = _sdist()
    staging = target.parent / f".partial-{uuid.uuid4().hex}"
    try:
        staging.mkdir(parents=True)
        _extract(sdist, staging)
        if not (staging / SCRIPT).is_file() or not (staging / _PACKAGE).is_dir():
            raise TrainError(f"{sdist} has no vendor/llama.cpp/{SCRIPT}")
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / SCRIPT).is_file():
                raise
    except (OSError, tarfile.TarError) as exc:
        raise TrainError(f"cannot unpack llama.cpp's LoRA converter from {sdist}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def convert(peft_dir: Path, base_folder: Path, outfile: Path) -> None:
    """Writes the GGUF LoRA (float32 tensors: the PEFT weights as they are) of peft_dir."""
    script = converter_dir() / SCRIPT
    command = [sys.executable, str(script), "--base", str(base_folder), "--outtype", "f32"]
    command += ["--outfile", str(outfile), str(peft_dir)]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0 or not outfile.is_file():
        tail = "\n  ".join(done.stderr.strip().splitlines()[-_ERROR_LINES:])
        raise TrainError(f"llama.cpp's {SCRIPT} refused the adapter:\n  {tail}")
    check(outfile)


def check(path: Path) -> dict[str, object]:
    """The GGUF LoRA's header fields; TrainError unless it reads as a LoRA adapter."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as exc:
        raise TrainError(f"{path} is not a readable GGUF file: {exc}") from None
    fields = {}
    for key in ("general.type", "adapter.type", "general.architecture", "adapter.lora.alpha"):
        field = reader.get_field(key)
        if field is not None:
            fields[key] = field.contents()
    if fields.get("general.type") != "adapter" or fields.get("adapter.type") != "lora":
        raise TrainError(f"{path} is not a GGUF LoRA adapter ({fields})")
    fields["tensors"] = len(reader.tensors)
    return fields
