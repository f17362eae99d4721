"""The held state of a moderated stream (stream_moderation.py): each window with its verdict
task, each choice's held-back text, and which choices are done."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from parlance.safety.v1 import safety_pb2


@dataclass
class HeldWindow:
    index: int
    text: str
    token_count: int
    logprobs: list[Any]
    held_since: float
    verdict: asyncio.Task[safety_pb2.ClassifyResponse] | None
    # A flag waits for the next window's verdict (WindowCutter.fragment).
    fragment: bool = False
    result: safety_pb2.Classification | None = None


@dataclass
class ChoiceBuffer:
    text: str = ""
    token_count: int = 0
    logprobs: list[Any] = field(default_factory=list)
    held_since: float = 0.0
    previous_window: str = ""
    # No window closed yet, so a lead may go (moderation.py); the previous window was the lead,
    # so the next one is still cut as a first window.
    lead_pending: bool = False
    after_lead: bool = False


@dataclass
class Served:
    """Which choices of a generation are done: flagged by moderation, or finished."""

    n: int
    flagged: set[int] = field(default_factory=set)
    finished: set[int] = field(default_factory=set)
    # Per choice, a first-window fragment whose flag waits for the next window's verdict.
    held: dict[int, HeldWindow] = field(default_factory=dict)
    # Set by a flag that leaves no choice to serve (a normal finish does not stop the
    # stream: the engine's usage comes after the last finish).
    nothing_left: bool = False

    def flag(self, index: int) -> None:
        self.flagged.add(index)
        self.nothing_left = len(self.flagged | self.finished) >= self.n
