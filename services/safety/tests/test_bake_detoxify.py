"""docker/bake_detoxify.py, the build step of the Detoxify safety image, run as the Dockerfile
runs it, on the small checkpoint served from a file:// URL (the released ones cannot be
downloaded here; nor can `docker build` run)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from detoxify_checkpoint import build_small_checkpoint

from parlance.safety.classifier.detoxify import MODEL_TYPE_LABELS

SERVICE = Path(__file__).resolve().parents[1]
BAKE = SERVICE / "docker" / "bake_detoxify.py"
MANIFEST = SERVICE / "detoxify-weights.txt"

sys.path.insert(0, str(BAKE.parent))
import bake_detoxify  # noqa: E402


def run_bake(manifest: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, str(BAKE), "--manifest", str(manifest)),
            *("--model-type", "original", "--out", str(out), *extra),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    checkpoint = build_small_checkpoint(tmp_path_factory.mktemp("small")).checkpoint
    return checkpoint, hashlib.sha256(checkpoint.read_bytes()).hexdigest()


def test_manifest_has_every_model_type() -> None:
    entries = bake_detoxify.read_manifest(MANIFEST)
    assert set(entries) == set(MODEL_TYPE_LABELS)
    for weights in entries.values():
        assert weights.url.startswith("https://github.com/unitaryai/detoxify/releases/download/")


def test_manifest_urls_are_detoxifys() -> None:
    from detoxify import detoxify  # in the lock: make install always installs it

    entries = bake_detoxify.read_manifest(MANIFEST)
    assert {name: w.url for name, w in entries.items()} == detoxify.MODEL_URLS


def test_bakes_and_loads_offline(tmp_path: Path, small: tuple[Path, str]) -> None:
    """Unpinned in the manifest, pinned by the build argument (DETOXIFY_SHA256)."""
    checkpoint, digest = small
    manifest = tmp_path / "weights.txt"
    manifest.write_text(f"original  {checkpoint.as_uri()}  -\n")
    result = run_bake(manifest, tmp_path / "out", "--sha256", digest)
    assert result.returncode == 0, result.stderr
    assert "smoke test scores" in result.stdout
    assert (tmp_path / "out" / "checkpoint.ckpt").read_bytes() == checkpoint.read_bytes()
    assert (tmp_path / "out" / "hf" / "config.json").exists()


def test_refuses_a_wrong_digest(tmp_path: Path, small: tuple[Path, str]) -> None:
    checkpoint, _ = small
    manifest = tmp_path / "weights.txt"
    manifest.write_text(f"original  {checkpoint.as_uri()}  {'0' * 64}\n")
    result = run_bake(manifest, tmp_path / "out")
    assert result.returncode != 0
    assert "SHA-256 mismatch" in result.stderr
    assert not list((tmp_path / "out").iterdir())


def test_refuses_unpinned_weights_without_the_build_arg(
    tmp_path: Path, small: tuple[Path, str]
) -> None:
    checkpoint, _ = small
    manifest = tmp_path / "weights.txt"
    manifest.write_text(f"original  {checkpoint.as_uri()}  -\n")
    result = run_bake(manifest, tmp_path / "out")
    assert result.returncode != 0
    assert "DETOXIFY_SHA256" in result.stderr


def test_digest_must_match_the_release_file_name() -> None:
    weights = bake_detoxify.read_manifest(MANIFEST)["original"]
    with pytest.raises(SystemExit, match="c1212f89"):
        bake_detoxify.expected_digest(weights, "ab" * 32)
