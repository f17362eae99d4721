"""The pure parts of model-written titles: the prompt and the cleaning of the model's answer."""

from __future__ import annotations

import pytest

from parlance.gateway.titles import clean_title, provisional_title, title_messages


@pytest.mark.parametrize(
    ("raw", "title"),
    [
        ("Baking Sourdough at Home", "Baking Sourdough at Home"),
        ('"Baking Sourdough at Home."', "Baking Sourdough at Home"),
        ("Title: “Sourdough basics”\nThis conversation is about bread.", "Sourdough basics"),
        ("\n\n  **Bread**  ", "Bread"),
        ("'", ""),
        ("", ""),
        ("word " * 30, ("word " * 11).strip() + "…"),
    ],
)
def test_clean_title(raw: str, title: str) -> None:
    assert clean_title(raw) == title
    assert len(clean_title(raw)) <= 60 and "\n" not in clean_title(raw)


@pytest.mark.parametrize(
    ("raw", "title"),
    [
        # Stopped at the token limit: the last word may be a piece of one.
        ("The Capital of the United States, Washington, D.C., USA! Follow", None),
        ("Sourdough Basics and Starters for Beginn", "Sourdough Basics and Starters for…"),
        # A line that ended before the limit was whole.
        ("Sourdough Basics\nThe conversation is about", "Sourdough Basics"),
        ("Sourdough", "Sourdough"),
    ],
)
def test_a_title_cut_at_the_token_limit_ends_with_an_ellipsis(raw: str, title: str | None) -> None:
    cleaned = clean_title(raw, cut=True)
    if title is None:
        assert cleaned.endswith("…") and not cleaned.endswith("Follow…")
        assert len(cleaned) <= 60
    else:
        assert cleaned == title


def test_provisional_title_is_one_line_of_at_most_60_characters() -> None:
    assert provisional_title("How do\nI bake   bread?") == "How do I bake bread?"
    long = provisional_title("x" * 100)
    assert len(long) == 60 and long.endswith("…")
    # At a word's end where one is near, not inside a word.
    words = provisional_title("How do I keep a sourdough starter alive through a long holiday?")
    assert words == "How do I keep a sourdough starter alive through a long…"


def test_title_prompt_carries_a_shortened_exchange() -> None:
    messages = title_messages("q" * 1000, "a" * 1000)
    assert [m.role for m in messages] == ["system", "user"]
    assert "q" * 400 in messages[1].content and "q" * 401 not in messages[1].content
    assert "a" * 200 in messages[1].content and "a" * 201 not in messages[1].content
    assert "Assistant:" not in title_messages("q", "")[1].content
