"""Generate the Python gRPC stubs from proto/ into the common package.

Usage: python scripts/gen_protos.py [OUT_DIR]

The stubs are committed (services import them without a build step); tests/test_protos.py
regenerates them into a temporary folder and fails when the committed ones are stale.
The generated modules land in the namespace packages parlance.<service>.v1, next to
(not inside) each service's own code, so every service can import every contract.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DEFAULT_OUT = ROOT / "services" / "common" / "src"


def generate(out_dir: Path) -> list[Path]:
    """Runs protoc on every .proto file; returns the files it wrote."""
    protos = sorted(PROTO_DIR.rglob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_DIR)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for proto in protos:
        package_dir = out_dir / proto.parent.relative_to(PROTO_DIR)
        init = package_dir / "__init__.py"
        init.write_text('"""Generated from proto/ by scripts/gen_protos.py; do not edit."""\n')
        written.append(init)
        stem = proto.stem
        written += [
            package_dir / f"{stem}_pb2.py",
            package_dir / f"{stem}_pb2.pyi",
            package_dir / f"{stem}_pb2_grpc.py",
        ]
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(out):
        print(path.relative_to(out))
