"""The safety client's deadline grows with the text it sends (clients/safety.py): the default
MiniLM classifier needs seconds for a long prompt on a small CPU, which must not be a 503."""

from __future__ import annotations

from parlance.gateway.clients.safety import (
    CLASSIFIER_CHARS_PER_S,
    MAX_QUEUE_WAIT_S,
    classify_deadline,
)


def test_short_texts_keep_the_configured_deadline() -> None:
    assert classify_deadline(5.0, ["Hello there."]) < 5.01


def test_long_texts_get_time_in_proportion() -> None:
    texts = ["x" * 100_000, "y" * 100_000]
    assert classify_deadline(5.0, texts) == 5.0 + 200_000 / CLASSIFIER_CHARS_PER_S
    # The gateway's largest chat input (200,000 characters) gets well over the base 5 s.
    assert classify_deadline(5.0, texts) > 60


def test_text_sent_before_and_not_answered_yet_adds_its_time_up_to_a_limit() -> None:
    # Safety scores calls in order: 48 concurrent chats' prompts wait for each other.
    base = classify_deadline(5.0, ["Hello there."])
    ahead = classify_deadline(5.0, ["Hello there."], ahead_chars=20_000)
    assert ahead == base + 20_000 / CLASSIFIER_CHARS_PER_S
    assert classify_deadline(5.0, ["Hello there."], ahead_chars=10**9) == base + MAX_QUEUE_WAIT_S
