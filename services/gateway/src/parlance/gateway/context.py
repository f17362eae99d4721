"""Fitting a stored conversation into the model's context window (oldest messages go first).

A stored conversation grows without bound; the model's window does not. The context sent to the
generator is `head + stored[cut:] + new`: a leading system message of the conversation (it sets
the assistant's behaviour, so it stays), the most recent stored messages that fit, and the
messages of the request, which are always kept. Room is left for the completion.

Tokens are counted by the generator (its tokenizer and chat template, so counts match what it
will see). Counting each message separately would cost one RPC a message and still miss the
template's overhead, so the whole context is counted once; only when it does not fit is the
cut found by binary search over the possible cut points, a few CountTokens calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from parlance.generator.v1 import generator_pb2

Messages = list[generator_pb2.ChatMessage]
CountFn = Callable[[Messages], Awaitable[int]]


@dataclass(frozen=True)
class ContextParts:
    """A context split into what must stay (`head`, `new`) and what may be dropped (`stored`,
    oldest first)."""

    head: Messages
    stored: Messages
    new: Messages

    @classmethod
    def split(
        cls, stored: Sequence[generator_pb2.ChatMessage], new: Sequence[generator_pb2.ChatMessage]
    ) -> ContextParts:
        stored = list(stored)
        head = stored[:1] if stored and stored[0].role == "system" else []
        return cls(head=head, stored=stored[len(head) :], new=list(new))

    def assemble(self, cut: int) -> Messages:
        """The context without the `cut` oldest droppable messages."""
        return [*self.head, *self.stored[cut:], *self.new]


@dataclass(frozen=True)
class FitResult:
    messages: Messages
    # Stored messages left out (0: the whole conversation fitted).
    dropped: int
    # Tokens of `messages` when counted; None when the cut was not counted (dropping every
    # stored message is sent without counting: the generator judges the request's own size).
    prompt_tokens: int | None
    count_calls: int


def completion_reserve(max_model_len: int, max_tokens: int | None, default_reserve: int) -> int:
    """Tokens kept free for the answer. An explicit max_tokens is honoured as asked; the default
    reserve is capped at a quarter of the window, so a small model still gets its history."""
    if max_tokens is not None:
        return max(1, max_tokens)
    return max(1, min(default_reserve, max_model_len // 4))


def prompt_budget(max_model_len: int, max_tokens: int | None, default_reserve: int) -> int:
    return max_model_len - completion_reserve(max_model_len, max_tokens, default_reserve)


def cut_points(stored: Sequence[generator_pb2.ChatMessage]) -> list[int]:
    """Where the droppable messages may be cut, fewest dropped first: before a user message (so
    the kept history starts with a question, never with an answer whose question is gone, which
    some chat templates refuse), and after the last stored message (keep none)."""
    points = [i for i, m in enumerate(stored) if m.role == "user" and i > 0]
    return [0, *points, len(stored)] if stored else [0]


async def fit_context(parts: ContextParts, budget: int, count: CountFn) -> FitResult:
    """The context with the fewest oldest stored messages dropped that counts at most `budget`
    tokens. Counts are assumed to shrink as messages are dropped (they do: each message adds
    its own tokens to the rendered prompt)."""
    full = parts.assemble(0)
    tokens = await count(full)
    calls = 1
    if tokens <= budget or not parts.stored:
        return FitResult(full, 0, tokens, calls)
    points = cut_points(parts.stored)
    # Invariant: points[lo] does not fit; points[hi] fits, or is the last point (keep nothing
    # stored), which is sent as it is.
    lo, hi = 0, len(points) - 1
    hi_tokens: int | None = None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        mid_tokens = await count(parts.assemble(points[mid]))
        calls += 1
        if mid_tokens <= budget:
            hi, hi_tokens = mid, mid_tokens
        else:
            lo = mid
    cut = points[hi]
    return FitResult(parts.assemble(cut), cut, hi_tokens, calls)
