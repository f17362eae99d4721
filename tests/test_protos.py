"""The committed gRPC stubs must match proto/: regenerate into a temporary folder and compare."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    written = gen.generate(tmp_path)
    assert written, "no stubs generated"
    committed_root = ROOT / "services" / "common" / "src"
    stale = [
        str(path.relative_to(tmp_path))
        for path in written
        if not (committed_root / path.relative_to(tmp_path)).exists()
        or (committed_root / path.relative_to(tmp_path)).read_bytes() != path.read_bytes()
    ]
    assert not stale, f"stale stubs (run `make protos`): {stale}"
