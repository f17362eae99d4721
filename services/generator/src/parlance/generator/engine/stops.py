"""Stop strings over streamed text: text that could still turn into a stop string is held back
until the next tokens decide, and the stop string itself is never returned."""

from __future__ import annotations

from collections.abc import Sequence


class StopStringFilter:
    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit now, whether a stop string was reached)."""
        if not self._stops:
            return text, False
        buffer = self._pending + text
        first = min((i for i in (buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if first >= 0:
            self._pending = ""
            return buffer[:first], True
        held = self._held_suffix(buffer)
        self._pending = buffer[len(buffer) - held :]
        return buffer[: len(buffer) - held], False

    def flush(self) -> str:
        """The held-back text, once generation ended without reaching a stop string."""
        pending, self._pending = self._pending, ""
        return pending

    def _held_suffix(self, buffer: str) -> int:
        # Longest suffix of the buffer that is a proper prefix of some stop string.
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest
