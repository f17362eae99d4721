"""Where output moderation closes its windows (pure: no safety call is made here)."""

from __future__ import annotations

from parlance.gateway.config import GatewaySettings
from parlance.gateway.stream_moderation import StreamModerator
from parlance.gateway.stream_state import ChoiceBuffer


def windows(text: str, step: int = 3) -> list[str]:
    """Feeds `text` a few characters at a time and returns the windows as they close."""
    moderator = StreamModerator(safety=None, settings=GatewaySettings(), n=1)  # type: ignore[arg-type]
    buffer = ChoiceBuffer()
    closed = []
    for start in range(0, len(text), step):
        buffer.text += text[start : start + step]
        final = start + step >= len(text)
        while (cut := moderator._cut(buffer, final)) is not None:
            closed.append(cut)
            buffer.previous_window = cut
            buffer.text = buffer.text[len(cut) :]
    return closed


def test_first_window_is_short_then_sentences() -> None:
    text = "Hello there, this is a friendly answer. You are wrong. Have a nice day."
    # The first window closes at a word boundary (time to first token); then one sentence
    # each, so a flagged sentence never takes the clean one before it down with it.
    assert windows(text) == [
        "Hello there, this ",
        "is a friendly answer.",
        " You are wrong.",
        " Have a nice day.",
    ]


def test_long_text_without_sentence_ends_is_cut_at_the_limit() -> None:
    settings = GatewaySettings()
    text = "word " * 200
    closed = windows(text, step=7)
    assert "".join(closed) == text
    assert max(len(w) for w in closed) <= settings.moderation_window_max_chars


def test_disabled_moderation_releases_every_delta() -> None:
    moderator = StreamModerator(
        safety=None,  # type: ignore[arg-type]
        settings=GatewaySettings(moderate_output=False),
        n=1,
    )
    buffer = ChoiceBuffer(text="Hi")
    assert moderator._cut(buffer, final=False) == "Hi"
