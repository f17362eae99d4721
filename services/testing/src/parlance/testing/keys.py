"""The model name and the API keys that the process-level stacks are started with."""

from __future__ import annotations

MODEL = "SmolLM2-135M-Instruct"
ALICE_KEY = "sk-test-alice-0123456789"
BOB_KEY = "sk-test-bob-0123456789"


# GATEWAY_KEY_ID_SECRET of the test stacks: static keys' ids are HMACs under it.
KEY_ID_SECRET = "test-key-id-secret-0123456789"


def static_key_id(key: str) -> str:
    """The id a test stack's gateway gives a static key (in metrics, logs and limits)."""
    from parlance.gateway.auth import opaque_key_id

    return opaque_key_id(key, KEY_ID_SECRET.encode())


def bearer(key: str) -> dict[str, str]:
    """The Authorization header for `key`."""
    return {"Authorization": f"Bearer {key}"}


ALICE = bearer(ALICE_KEY)
BOB = bearer(BOB_KEY)
