"""The Server-Timing header of a chat completion."""

from __future__ import annotations

import time

from parlance.common import tracing


class ServerTiming:
    """Where a request's time went, as a Server-Timing header (auth, limits, context, cache,
    moderation or precheck, generator): visible in browser dev tools and curl -v, and what the
    benchmark reads to attribute time to first token. With the input pre-check, safety's
    verdict is awaited inside "generator" (beside the generator's first message)."""

    def __init__(self, started: float) -> None:
        self.last = started
        self.parts: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.parts.append((name, (now - self.last) * 1000))
        tracing.record_stage(name, now - self.last)
        self.last = now

    def add(self, name: str, seconds: float) -> None:
        """A part that ran beside the others (intent classification runs during input
        moderation and inside "context"): reported, without moving the clock."""
        self.parts.append((name, seconds * 1000))
        tracing.record_stage(name, seconds)

    def header(self) -> str:
        return ", ".join(f"{name};dur={ms:.2f}" for name, ms in self.parts)
