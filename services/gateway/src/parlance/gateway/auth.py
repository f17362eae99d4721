"""API-key authentication.

Keys are kept only as SHA-256 digests: a lookup hashes the presented key and compares digests,
so neither memory dumps nor logs hold a usable key. Two sources: static keys from the
GATEWAY_API_KEYS setting (bootstrap and development) and the managed, durable store in
keystore.py.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyLimits:
    """Per-key limits; None means the gateway's default setting."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user that owns the key, the key's id (for limits) and its limits."""

    user_id: str
    key_id: str
    limits: KeyLimits = field(default_factory=KeyLimits)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore(Protocol):
    async def authenticate(self, key: str) -> Principal | None: ...


def opaque_key_id(key: str, secret: bytes) -> str:
    """A static key's id for logs, metrics and limits: an HMAC of the key under a server
    secret, so that it cannot be checked against guesses (a prefix of the unsalted SHA-256
    could be, offline, for a weak key)."""
    return "key_" + hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:16]


def load_secret(configured: str, path: str) -> bytes:
    """The configured secret, or one made once and kept in `path` (created 0600, its folder
    0700; the first of several workers starting together writes it, the others read it)."""
    if configured:
        return configured.encode()
    file = Path(path)
    if not file.parent.exists():
        file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        for _ in range(50):  # another worker may be writing it right now
            secret = file.read_bytes().strip()
            if secret:
                return secret
            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty: delete it or set GATEWAY_KEY_ID_SECRET") from None
    secret = secrets.token_hex(32).encode()
    with os.fdopen(fd, "wb") as out:
        out.write(secret + b"\n")
    return secret


class StaticKeyStore:
    """Keys given at start-up as "user_id:key" pairs; only digests are retained."""

    def __init__(self, spec: str, id_secret: bytes = b"") -> None:
        # Without a secret (tests that build a store directly) a random one: ids are then
        # opaque but differ between processes.
        id_secret = id_secret or secrets.token_bytes(32)
        self._by_digest: dict[str, Principal] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            user_id, sep, key = item.partition(":")
            if not sep or not user_id or not key:
                raise ValueError("GATEWAY_API_KEYS entries must look like user_id:key")
            # The key id shown in logs and metrics is opaque (opaque_key_id), never the key.
            self._by_digest[digest(key)] = Principal(
                user_id=user_id, key_id=opaque_key_id(key, id_secret)
            )
        if not self._by_digest:
            log.warning("no API keys configured: every request will be refused with 401")

    async def authenticate(self, key: str) -> Principal | None:
        presented = digest(key)
        for stored, principal in self._by_digest.items():
            # Constant-time comparison; the loop is over a handful of configured keys.
            if hmac.compare_digest(stored, presented):
                return principal
        return None
