"""Files the gateway creates that hold users' data or secrets (the outbox, the SQLite key
store, the key-id secret): readable by the service's user only."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sqlalchemy.engine import make_url


def create_private_file(path: str) -> None:
    """Creates the file (and its folder) readable by this user only, before SQLite opens it:
    SQLite gives its -wal and -shm files the main file's permissions. An existing file is
    left as it is."""
    if path == ":memory:" or path.startswith("file:"):
        return
    folder = Path(path).parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def create_private_sqlite(database_url: str) -> None:
    """create_private_file for a SQLite database URL (other databases: nothing to do)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        create_private_file(str(Path(url.database).expanduser()))
