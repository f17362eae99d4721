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
from dataclasses import dataclass, field
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


class StaticKeyStore:
    """Keys given at start-up as "user_id:key" pairs; only digests are retained."""

    def __init__(self, spec: str) -> None:
        self._by_digest: dict[str, Principal] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            user_id, sep, key = item.partition(":")
            if not sep or not user_id or not key:
                raise ValueError("GATEWAY_API_KEYS entries must look like user_id:key")
            key_digest = digest(key)
            # The key id shown in logs and metrics is a short digest prefix, never the key.
            self._by_digest[key_digest] = Principal(user_id=user_id, key_id=key_digest[:12])
        if not self._by_digest:
            log.warning("no API keys configured: every request will be refused with 401")

    async def authenticate(self, key: str) -> Principal | None:
        presented = digest(key)
        for stored, principal in self._by_digest.items():
            # Constant-time comparison; the loop is over a handful of configured keys.
            if hmac.compare_digest(stored, presented):
                return principal
        return None
