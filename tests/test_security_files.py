"""Issue 14 (low): the files that hold users' data or secrets are created readable by their
owner only: the local stack's API key, the gateway's key-id secret, its outbox and its SQLite
key store (history's database: services/history/tests/test_migrations.py)."""

from __future__ import annotations

import asyncio
import hashlib
import stat
from pathlib import Path

from parlance.gateway.auth import load_secret, opaque_key_id
from parlance.gateway.keystore import SqlKeyStore
from parlance.gateway.outbox_store import OutboxStore
from parlance.testing.processes import _load_devstack


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_files_are_private(tmp_path: Path) -> None:
    devstack = _load_devstack()
    data = tmp_path / "data"
    key = devstack.load_or_create_api_key(data)
    assert devstack.load_or_create_api_key(data) == key
    assert (mode(data), mode(data / "api-key")) == (0o700, 0o600)

    secret = load_secret("", str(tmp_path / "gw" / "key-id-secret"))
    assert load_secret("", str(tmp_path / "gw" / "key-id-secret")) == secret  # kept
    assert (mode(tmp_path / "gw"), mode(tmp_path / "gw" / "key-id-secret")) == (0o700, 0o600)

    OutboxStore(str(tmp_path / "outbox" / "outbox.db")).close()
    assert mode(tmp_path / "outbox" / "outbox.db") == 0o600

    store = SqlKeyStore(f"sqlite+aiosqlite:///{tmp_path / 'keys' / 'gateway.db'}")
    asyncio.run(store.create_schema())
    asyncio.run(store.close())
    assert (mode(tmp_path / "keys"), mode(tmp_path / "keys" / "gateway.db")) == (0o700, 0o600)


def test_static_key_ids_are_opaque() -> None:
    """A key id shows in metrics and logs: it must not be checkable against guessed keys
    (it was the first 12 hex digits of the key's unsalted SHA-256)."""
    key = "sk-weak-key"
    one, other = opaque_key_id(key, b"secret-one"), opaque_key_id(key, b"secret-two")
    assert one != other and one == opaque_key_id(key, b"secret-one")
    assert hashlib.sha256(key.encode()).hexdigest()[:12] not in one


def test_redis_urls_are_logged_without_their_password() -> None:
    from parlance.gateway.redis_state import redacted_url

    devstack = _load_devstack()
    for redact in (redacted_url, devstack._without_password):
        assert redact("redis://:hunter2@redis:6379/0") == "redis://:***@redis:6379/0"
        assert redact("rediss://app:hunter2@cache.example/1") == "rediss://app:***@cache.example/1"
        assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
