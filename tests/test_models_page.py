"""The web page's model picker in a real browser (Debian's Chromium, headless, Playwright): it
offers the chat models only, aliases first, and keeps the model chosen for each conversation.

The generator serves two scripted chat models (one echoes, one answers with a fixed text, so
the answer shows which model wrote it) and the embedding model, which the picker must leave
out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from parlance.testing import ALICE_KEY, Stack, StackPool

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's Chromium is not at /usr/bin/chromium (scripts/install-system-deps.sh "
    "installs it: apt-get install chromium)",
)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

SMALL, LARGE, EMBED = "chat-small", "chat-large", "all-MiniLM-L6-v2"
MODELS = [
    {"id": SMALL, "engine": "scripted", "settings": {"scripted_tokens_per_s": 0}},
    {
        "id": LARGE,
        "engine": "scripted",
        "settings": {"scripted_text": "large model answer", "scripted_tokens_per_s": 0},
    },
    {"id": EMBED, "engine": "transformers", "task": "embed"},
]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]

expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def models_stack(stacks: StackPool) -> Iterator[Stack]:
    stack = stacks.start(
        "models-page",
        gateway_env={
            "GATEWAY_MODEL_ALIASES": json.dumps({"default": LARGE}),
            # What is tested is the picker, not the classifier's view of the test sentences.
            "GATEWAY_MODERATE_INPUT": "false",
            "GATEWAY_MODERATE_OUTPUT": "false",
        },
        env={"generator": {"GENERATOR_MODELS": json.dumps(MODELS)}},
        share=False,
    )
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def send_and_wait(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("li.message.pending")).to_have_count(0)


def conversation_id(page: Page) -> str:
    hash_ = page.evaluate("location.hash")
    assert hash_.startswith("#/c/"), hash_
    return str(hash_[4:])


def open_conversation(page: Page, conversation: str) -> None:
    page.locator(f'#conversation-items li[data-id="{conversation}"] .conversation-link').click()
    expect(page.locator("li.message")).to_have_count(2)


def test_picker_offers_chat_models_and_keeps_each_conversations_model(
    browser: Browser, models_stack: Stack
) -> None:
    context = browser.new_context(base_url=models_stack.gateway_url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto("/")
    page.fill("#signin-key", ALICE_KEY)
    page.click("#signin-submit")
    picker = page.locator("#model")
    expect(picker.locator("option")).to_have_count(3)
    assert picker.locator("option").all_inner_texts() == [f"default ({LARGE})", SMALL, LARGE]
    expect(picker).to_have_value("default")

    picker.select_option(SMALL)
    send_and_wait(page, "echo these words")
    expect(page.locator("li.message.assistant").last).to_contain_text("echo these words")
    small_chat = conversation_id(page)

    page.locator("#new-chat").click()
    expect(picker).to_have_value(SMALL)  # a new chat starts with the last choice
    picker.select_option("default")
    send_and_wait(page, "anything")
    expect(page.locator("li.message.assistant").last).to_contain_text("large model answer")
    large_chat = conversation_id(page)

    open_conversation(page, small_chat)
    expect(picker).to_have_value(SMALL)
    open_conversation(page, large_chat)
    expect(picker).to_have_value("default")
    # After a reload the choices are still there (localStorage).
    page.reload()
    open_conversation(page, small_chat)
    expect(picker).to_have_value(SMALL)
    assert not errors, errors
    context.close()
