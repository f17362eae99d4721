"""Damaged copies of the shipped weight files (npz archives), for the tests that a damaged file
is refused at load rather than served."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

# A zip member's local header: 30 fixed bytes, then its name and extra field, then its data.
LOCAL_HEADER = 30


def with_member_bytes_flipped(source: Path, member: str, out: Path, skip: int = 40) -> Path:
    """A copy of the archive `source` at `out` with 16 bytes of `member`'s stored data inverted
    (from `skip` bytes into it): the member's CRC check fails when it is read."""
    shutil.copy(source, out)
    with zipfile.ZipFile(source) as archive:
        info = archive.getinfo(member)
    data = bytearray(out.read_bytes())
    start = info.header_offset + LOCAL_HEADER + len(info.filename) + len(info.extra) + skip
    data[start : start + 16] = bytes(b ^ 0xFF for b in data[start : start + 16])
    out.write_bytes(bytes(data))
    return out
