"""The model name and the API keys that the process-level stacks are started with."""

from __future__ import annotations

MODEL = "SmolLM2-135M-Instruct"
ALICE_KEY = "sk-test-alice-0123456789"
BOB_KEY = "sk-test-bob-0123456789"


def bearer(key: str) -> dict[str, str]:
    """The Authorization header for `key`."""
    return {"Authorization": f"Bearer {key}"}


ALICE = bearer(ALICE_KEY)
BOB = bearer(BOB_KEY)
