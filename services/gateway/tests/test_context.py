"""The pure parts of context trimming: splitting, cut points, budgets and the binary search."""

from __future__ import annotations

from parlance.gateway.context import (
    ContextParts,
    completion_reserve,
    cut_points,
    fit_context,
    prompt_budget,
)
from parlance.generator.v1 import generator_pb2


def msg(role: str, content: str) -> generator_pb2.ChatMessage:
    return generator_pb2.ChatMessage(role=role, content=content)


def conversation(turns: int, system: bool = True) -> list[generator_pb2.ChatMessage]:
    messages = [msg("system", "be brief")] if system else []
    for i in range(turns):
        messages += [msg("user", f"question {i}"), msg("assistant", f"answer {i}")]
    return messages


class Counter:
    """Counts like a chat template does: a fixed cost per message plus one per word, and
    records how often it was asked."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, messages: list[generator_pb2.ChatMessage]) -> int:
        self.calls += 1
        return sum(4 + len(m.content.split()) for m in messages)


def contents(messages: list[generator_pb2.ChatMessage]) -> list[str]:
    return [m.content for m in messages]


def test_split_keeps_a_leading_system_message_apart() -> None:
    parts = ContextParts.split(conversation(2), [msg("user", "new")])
    assert contents(parts.head) == ["be brief"]
    assert contents(parts.stored) == ["question 0", "answer 0", "question 1", "answer 1"]
    assert contents(parts.assemble(2)) == ["be brief", "question 1", "answer 1", "new"]
    no_system = ContextParts.split(conversation(1, system=False), [msg("user", "new")])
    assert no_system.head == []
    assert contents(no_system.assemble(0)) == ["question 0", "answer 0", "new"]


def test_cut_points_start_the_kept_history_at_a_question() -> None:
    stored = ContextParts.split(conversation(3), []).stored
    assert cut_points(stored) == [0, 2, 4, 6]
    # A history that starts with an answer (its question was a system message's neighbour).
    odd = [msg("assistant", "hi"), msg("user", "q"), msg("assistant", "a")]
    assert cut_points(odd) == [0, 1, 3]
    assert cut_points([]) == [0]


def test_completion_reserve() -> None:
    assert completion_reserve(4096, 100, 512) == 100
    assert completion_reserve(4096, None, 512) == 512
    # The default reserve takes at most a quarter of a small window.
    assert completion_reserve(256, None, 512) == 64
    assert prompt_budget(256, 16, 512) == 240
    assert prompt_budget(256, None, 512) == 192


async def test_fitting_context_is_counted_once_and_kept_whole() -> None:
    count = Counter()
    parts = ContextParts.split(conversation(3), [msg("user", "new")])
    fitted = await fit_context(parts, 1000, count)
    assert fitted.dropped == 0 and count.calls == 1 == fitted.count_calls
    assert fitted.messages == parts.assemble(0)
    assert fitted.prompt_tokens == await Counter()(parts.assemble(0))


async def test_oldest_messages_go_first_and_the_cut_is_minimal() -> None:
    parts = ContextParts.split(conversation(40), [msg("user", "the new question")])
    full = await Counter()(parts.assemble(0))
    for budget in range(await Counter()(parts.assemble(len(parts.stored))), full, 7):
        count = Counter()
        fitted = await fit_context(parts, budget, count)
        assert fitted.messages[0].content == "be brief"
        assert fitted.messages[-1].content == "the new question"
        kept = fitted.messages[1:-1]
        assert kept == parts.stored[fitted.dropped :]
        assert not kept or kept[0].role == "user"
        assert await Counter()(fitted.messages) <= budget
        if fitted.dropped < len(parts.stored):
            assert fitted.prompt_tokens == await Counter()(fitted.messages)
        # Keeping one more exchange would not fit.
        assert fitted.dropped > 0
        assert await Counter()(parts.assemble(fitted.dropped - 2)) > budget
        # Binary search over 41 cut points: the first count plus at most ceil(log2(40)).
        assert count.calls <= 1 + 6


async def test_when_only_the_new_messages_fit_nothing_stored_is_kept() -> None:
    parts = ContextParts.split(conversation(5), [msg("user", "a long new question " * 10)])
    fitted = await fit_context(parts, 10, Counter())
    # Too small even for the new message: it is sent anyway, the generator refuses it.
    assert contents(fitted.messages) == ["be brief", "a long new question " * 10]
    assert fitted.dropped == len(parts.stored)
    assert fitted.prompt_tokens is None


async def test_no_stored_messages_means_nothing_to_trim() -> None:
    parts = ContextParts.split([], [msg("user", "x " * 100)])
    count = Counter()
    fitted = await fit_context(parts, 5, count)
    assert fitted.dropped == 0 and count.calls == 1
