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
        ("word " * 30, ("word " * 12).strip()[:59].rstrip() + "…"),
    ],
)
def test_clean_title(raw: str, title: str) -> None:
    assert clean_title(raw) == title
    assert len(clean_title(raw)) <= 60 and "\n" not in clean_title(raw)


def test_provisional_title_is_one_line_of_at_most_60_characters() -> None:
    assert provisional_title("How do\nI bake   bread?") == "How do I bake bread?"
    long = provisional_title("x" * 100)
    assert len(long) == 60 and long.endswith("…")


def test_title_prompt_carries_a_shortened_exchange() -> None:
    messages = title_messages("q" * 1000, "a" * 1000)
    assert [m.role for m in messages] == ["system", "user"]
    assert "q" * 400 in messages[1].content and "q" * 401 not in messages[1].content
    assert "a" * 200 in messages[1].content and "a" * 201 not in messages[1].content
    assert "Assistant:" not in title_messages("q", "")[1].content
