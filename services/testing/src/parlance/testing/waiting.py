"""Polling for a condition with a deadline that turns into a test failure."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx


def wait_until(
    predicate: Callable[[], object], timeout_s: float = 60.0, what: str = "condition"
) -> None:
    """Polls `predicate` until it is true. An HTTP error while polling (a service that is
    still restarting) counts as "not yet"; the deadline turns it into a test failure."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not reached within {timeout_s:g} s: {what}")
