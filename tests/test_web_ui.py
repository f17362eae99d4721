"""The chat web page in a real browser: Debian's Chromium, headless, driven by Playwright,
against the stack started as processes.

Most tests use a stack whose generator is the scripted engine in echo mode (it answers with
the user's own message, a word at a time): answers are predictable, long enough to stop, and
can carry `<script>` on demand. One test runs against the real model (the session stack).
Screenshots go to artifacts/screenshots/ (git-ignored).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from parlance.testing import (
    ALICE_KEY,
    BOB_KEY,
    MODEL,
    Stack,
    StackPool,
    bearer,
    scrape,
    scripted_generator,
    start_extra_gateway,
)
from parlance.testing.processes import repo_root

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's Chromium is not at /usr/bin/chromium (scripts/install-system-deps.sh "
    "installs it: apt-get install chromium)",
)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = repo_root() / "artifacts" / "screenshots"
PHONE = {"width": 390, "height": 844}
CANCELLED = 'parlance_generator_requests_total{engine="scripted",finish_reason="cancelled"}'
TOXIC = "You are a stupid worthless idiot and a moron."
# Long enough at 20 words a second to be stopped halfway.
LONG = " ".join(f"word{i}" for i in range(400))

expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def echo_stack(stacks: StackPool) -> Iterator[Stack]:
    stack = stacks.start("web-ui", env={"generator": scripted_generator(tokens_per_s=20)})
    yield stack
    stack.stop()


class Chat:
    """One browser tab on the chat page, with the steps the tests repeat."""

    def __init__(self, browser: Browser, base_url: str, **context: object) -> None:
        self.context = browser.new_context(base_url=base_url, **context)  # type: ignore[arg-type]
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("dialog", lambda dialog: dialog.accept())

    def sign_in(self, key: str) -> None:
        page = self.page
        page.goto("/")
        expect(page.locator("#signin")).to_be_visible()
        page.fill("#signin-key", key)
        page.click("#signin-submit")
        expect(page.locator("#app")).to_be_visible()
        expect(page.locator("#model option")).not_to_have_count(0)

    def send(self, text: str) -> None:
        self.page.fill("#prompt", text)
        self.page.press("#prompt", "Enter")

    def wait_idle(self) -> None:
        """Until the answer is complete and read back (its tools appear)."""
        expect(self.page.locator("#send")).to_be_visible()
        expect(self.page.locator("li.message.pending")).to_have_count(0)

    def last_answer(self):  # type: ignore[no-untyped-def]
        return self.page.locator("li.message.assistant").last

    def conversation_id(self) -> str:
        hash_ = self.page.evaluate("location.hash")
        assert hash_.startswith("#/c/"), hash_
        return hash_[4:]

    def close(self) -> None:
        assert not self.errors, f"errors on the page: {self.errors}"
        self.context.close()


@pytest.fixture
def chat(browser: Browser, echo_stack: Stack) -> Iterator[Chat]:
    tab = Chat(browser, echo_stack.gateway_url)
    yield tab
    tab.close()


def api(stack: Stack, method: str, path: str, key: str = ALICE_KEY, **kw: object) -> dict:
    response = httpx.request(
        method,
        f"{stack.gateway_url}{path}",
        headers=bearer(key),
        timeout=30,
        **kw,  # type: ignore[arg-type]
    )
    assert response.status_code == 200, response.text
    return response.json()


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


# --- the page itself --------------------------------------------------------------------------


def test_page_and_assets_are_served_with_a_strict_policy(echo_stack: Stack) -> None:
    index = httpx.get(f"{echo_stack.gateway_url}/", timeout=10)
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in index.headers["content-security-policy"]
    script = httpx.get(f"{echo_stack.gateway_url}/static/js/main.js", timeout=10)
    assert script.headers["content-type"].startswith("text/javascript")
    for bad in ("/static/../routes/ui.py", "/static/%2e%2e/app.py", "/static/nope.js"):
        assert httpx.get(f"{echo_stack.gateway_url}{bad}", timeout=10).status_code == 404


def test_real_model_sign_in_stream_reload_and_screenshots(browser: Browser, stack: Stack) -> None:
    tab = Chat(browser, stack.gateway_url, viewport={"width": 1280, "height": 800})
    page = tab.page
    page.goto("/")
    page.fill("#signin-key", "sk-not-a-key")
    page.click("#signin-submit")
    expect(page.locator("#signin-error")).to_contain_text("not accepted")
    tab.sign_in(ALICE_KEY)
    expect(page.locator("#model")).to_have_value(MODEL)

    tab.send("Write one short sentence about the sea.")
    expect(page.locator("li.message.user").last).to_have_text(
        "Write one short sentence about the sea."
    )
    tab.wait_idle()
    answer = tab.last_answer()
    expect(answer.locator(".bubble")).not_to_be_empty()
    expect(answer.get_by_role("button", name="Regenerate")).to_be_visible()
    conversation_id = tab.conversation_id()
    stored = api(stack, "GET", f"/v1/conversations/{conversation_id}")
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    expect(answer.locator(".bubble")).to_contain_text(stored["messages"][1]["content"][:20].strip())

    # Reload: the key is remembered, the conversation is in the sidebar and reopens.
    page.reload()
    item = page.locator(f'#conversation-items li[data-id="{conversation_id}"]')
    # (The model may retitle it in the background: only that it is there is certain.)
    expect(item.locator(".conversation-link")).not_to_be_empty()
    expect(page.locator("li.message")).to_have_count(2)
    page.locator("#new-chat").click()
    expect(page.locator("li.message")).to_have_count(0)
    item.locator(".conversation-link").click()
    expect(page.locator("li.message")).to_have_count(2)

    page.emulate_media(color_scheme="light")
    shot(page, "chat-light")
    page.emulate_media(color_scheme="dark")
    shot(page, "chat-dark")
    page.set_viewport_size(PHONE)
    # The sidebar slides away on a phone: the shot waits for it to be gone (or fully in).
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    shot(page, "chat-phone")
    page.get_by_role("button", name="Open the sidebar").click()
    expect(page.locator("#sidebar")).to_be_in_viewport(ratio=1)
    shot(page, "sidebar-phone")
    tab.close()


# --- the echo stack ---------------------------------------------------------------------------


def test_answer_streams_in_pieces(chat: Chat) -> None:
    chat.sign_in(ALICE_KEY)
    # Records what the answer bubble shows while the answer is still streaming.
    chat.page.evaluate(
        """() => {
            window.__partials = [];
            new MutationObserver(() => {
                const li = document.querySelector('li.message.assistant[aria-busy="true"]');
                if (li) window.__partials.push(li.querySelector('.bubble').textContent);
            }).observe(document.getElementById('messages'),
                       {childList: true, subtree: true, characterData: true});
        }"""
    )
    # Output moderation releases text a window at a time: enough words for several windows.
    text = " ".join(f"piece{i}" for i in range(120))
    chat.send(text)
    expect(chat.page.locator("#stop")).to_be_visible()
    chat.wait_idle()
    expect(chat.last_answer().locator(".bubble")).to_have_text(text)
    partials = {p for p in chat.page.evaluate("window.__partials") if p and p != text}
    # Several incomplete renders, each a beginning of the answer, came before the whole.
    assert len(partials) >= 3
    assert all(text.startswith(p) for p in partials)


def test_stop_aborts_the_generation_and_keeps_the_answer(chat: Chat, echo_stack: Stack) -> None:
    page = chat.page
    metrics_port = echo_stack.services["generator"].metrics_port
    assert metrics_port is not None
    cancelled_before = scrape(metrics_port).get(CANCELLED, 0.0)
    chat.sign_in(ALICE_KEY)
    chat.send(LONG)
    answer = chat.last_answer()
    expect(answer.locator(".bubble")).to_contain_text("word3 ")
    page.get_by_role("button", name="Stop generating").click()
    expect(page.locator("#send")).to_be_visible()
    # The stopped exchange is read back from history: the answer gets its id and tools.
    answer = page.locator('li.message.assistant[data-stopped="true"][data-id]')
    expect(answer.locator(".notice")).to_contain_text("Stopped")
    expect(answer.locator(".notice")).to_contain_text("saved")
    expect(answer.get_by_role("button", name="Regenerate")).to_be_visible()
    shown = answer.locator(".bubble").inner_text()
    assert shown.startswith("word0 word1") and "word399" not in shown
    # The generator really stopped: it counts a cancelled request.
    deadline = time.monotonic() + 30
    while scrape(metrics_port).get(CANCELLED, 0.0) <= cancelled_before:
        assert time.monotonic() < deadline, "the generation was not cancelled"
        time.sleep(0.2)
    conversation_id = chat.conversation_id()
    stored = api(echo_stack, "GET", f"/v1/conversations/{conversation_id}")["messages"]
    assert [(m["role"], m["finish_reason"]) for m in stored] == [
        ("user", None),
        ("assistant", "cancelled"),
    ]
    assert stored[0]["content"] == LONG
    assert stored[1]["content"].strip() == shown.strip()

    # The page stays usable: the next message is answered, below the stopped answer.
    chat.send("after the stop")
    chat.wait_idle()
    expect(chat.last_answer().locator(".bubble")).to_have_text("after the stop")
    expect(page.locator("li.message")).to_have_count(4)
    stored = api(echo_stack, "GET", f"/v1/conversations/{conversation_id}")["messages"]
    assert [m["content"] for m in stored[2:]] == ["after the stop", "after the stop"]
    assert stored[2]["parent_id"] == stored[1]["id"]

    # Reopened, the stopped answer still says so.
    page.reload()
    expect(page.locator("li.message")).to_have_count(4)
    expect(page.locator("li.message.assistant").first.locator(".notice")).to_contain_text("Stopped")


def test_regenerate_edit_and_switch_branches(chat: Chat, echo_stack: Stack) -> None:
    page = chat.page
    chat.sign_in(ALICE_KEY)
    chat.send("first question")
    chat.wait_idle()
    conversation_id = chat.conversation_id()
    first_answer = api(echo_stack, "GET", f"/v1/conversations/{conversation_id}")["messages"][1]

    chat.last_answer().get_by_role("button", name="Regenerate").click()
    chat.wait_idle()
    answer = chat.last_answer()
    expect(answer.locator(".branch-label")).to_have_text("2/2")
    stored = api(echo_stack, "GET", f"/v1/conversations/{conversation_id}")
    second_answer = stored["messages"][1]
    assert second_answer["id"] != first_answer["id"]
    assert stored["active_message_id"] == second_answer["id"]

    answer.get_by_role("button", name="Previous version").click()
    expect(chat.last_answer().locator(".branch-label")).to_have_text("1/2")
    stored = api(echo_stack, "GET", f"/v1/conversations/{conversation_id}")
    assert stored["active_message_id"] == first_answer["id"]
    chat.last_answer().get_by_role("button", name="Next version").click()
    expect(chat.last_answer().locator(".branch-label")).to_have_text("2/2")

    # Edit and resend: the question gets a sibling, answered anew.
    user = page.locator("li.message.user").last
    user.get_by_role("button", name="Edit").click()
    page.get_by_role("textbox", name="Edit message").fill("second question")
    page.get_by_role("textbox", name="Edit message").press("Enter")
    chat.wait_idle()
    expect(page.locator("li.message.user .bubble")).to_have_text("second question")
    expect(page.locator("li.message.user .branch-label")).to_have_text("2/2")
    expect(chat.last_answer().locator(".bubble")).to_have_text("second question")
    page.locator("li.message.user").get_by_role("button", name="Previous version").click()
    expect(page.locator("li.message.user .bubble")).to_have_text("first question")
    # Back on the first question's branch, with its latest answer.
    expect(chat.last_answer().locator(".branch-label")).to_have_text("2/2")


def test_switch_to_a_branch_made_elsewhere(chat: Chat, echo_stack: Stack) -> None:
    """The switcher reaches a branch this browser never showed: GET lists the siblings' ids."""
    page = chat.page
    chat.sign_in(ALICE_KEY)
    chat.send("asked here")
    chat.wait_idle()
    conversation_id = chat.conversation_id()
    here = api(echo_stack, "GET", f"/v1/conversations/{conversation_id}")["messages"]
    # Another client edits the question (a new root with its own answer), then switches the
    # conversation back to this browser's branch.
    elsewhere = api(
        echo_stack,
        "POST",
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "asked elsewhere"}],
            "conversation_id": conversation_id,
            "parent_message_id": "",
        },
    )
    assert elsewhere["choices"][0]["message"]["content"] == "asked elsewhere"
    api(
        echo_stack,
        "PATCH",
        f"/v1/conversations/{conversation_id}",
        json={"active_message_id": here[1]["id"]},
    )

    page.reload()
    user = page.locator("li.message.user")
    expect(user.locator(".bubble")).to_have_text("asked here")
    expect(user.locator(".branch-label")).to_have_text("1/2")
    next_version = user.get_by_role("button", name="Next version")
    expect(next_version).to_be_enabled()
    next_version.click()
    expect(user.locator(".bubble")).to_have_text("asked elsewhere")
    expect(user.locator(".branch-label")).to_have_text("2/2")
    expect(chat.last_answer().locator(".bubble")).to_have_text("asked elsewhere")
    stored = api(echo_stack, "GET", f"/v1/conversations/{conversation_id}")
    assert stored["messages"][0]["content"] == "asked elsewhere"
    # The page keeps no sibling ids of its own any more.
    assert (
        page.evaluate("Object.keys(localStorage).filter((k) => k.startsWith('parlance.siblings.'))")
        == []
    )
    user.get_by_role("button", name="Previous version").click()
    expect(user.locator(".bubble")).to_have_text("asked here")


def test_rate_an_answer_with_a_comment(chat: Chat, echo_stack: Stack) -> None:
    chat.sign_in(ALICE_KEY)
    chat.send("please rate me")
    chat.wait_idle()
    answer = chat.last_answer()
    answer.get_by_role("button", name="Good response").click()
    expect(answer.get_by_role("button", name="Good response")).to_have_attribute(
        "aria-pressed", "true"
    )
    answer.get_by_role("textbox", name="Feedback comment").fill("Exactly what I asked.")
    answer.get_by_role("button", name="Send").click()
    expect(answer.locator(".notice")).to_contain_text("Thanks")
    stored = api(echo_stack, "GET", f"/v1/conversations/{chat.conversation_id()}")
    rated = stored["messages"][-1]
    assert rated["rating"] == 1
    assert rated["feedback"]["comment"] == "Exactly what I asked."
    # The rating is shown again after a reload.
    chat.page.reload()
    expect(chat.last_answer().get_by_role("button", name="Good response")).to_have_attribute(
        "aria-pressed", "true"
    )


def test_an_answer_cut_at_its_length_says_so(chat: Chat, echo_stack: Stack) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "one two three four five six seven"}],
        "max_tokens": 3,
        "store": True,
    }
    answered = api(echo_stack, "POST", "/v1/chat/completions", json=body)
    assert answered["choices"][0]["finish_reason"] == "length"
    chat.sign_in(ALICE_KEY)
    item = chat.page.locator(f'#conversation-items li[data-id="{answered["conversation_id"]}"]')
    item.locator(".conversation-link").click()
    expect(chat.last_answer().locator(".notice")).to_contain_text("length limit")


def test_search_the_sidebar(chat: Chat) -> None:
    page = chat.page
    chat.sign_in(ALICE_KEY)
    chat.send("where do quokkas live <b>really</b>")
    chat.wait_idle()
    conversation_id = chat.conversation_id()
    page.locator("#new-chat").click()
    page.fill("#search", "quokkas")
    hit = page.locator(".search-hit").first
    expect(hit.locator(".hit-snippet mark").first).to_have_text("quokkas")
    # The escaped markup of the message stays text inside the snippet.
    expect(hit.locator(".hit-snippet")).to_contain_text("<b>really</b>")
    assert hit.locator(".hit-snippet b").count() == 0
    shot(page, "search")
    hit.click()
    expect(page.locator("li.message.highlight")).to_have_count(1)
    assert chat.conversation_id() == conversation_id
    page.fill("#search", "")
    expect(page.locator("#conversation-list")).to_be_visible()


def test_sidebar_scrolls_renames_archives_and_deletes(chat: Chat, echo_stack: Stack) -> None:
    page = chat.page
    # Bob's own list: 45 conversations, more than two pages.
    for i in range(45):
        api(echo_stack, "POST", "/v1/conversations", BOB_KEY, json={"title": f"Topic {i:02d}"})
    chat.sign_in(BOB_KEY)
    items = page.locator("#conversation-items li")
    titles = page.locator("#conversation-items .conversation-link")
    expect(titles.first).to_have_text("Topic 44")
    assert items.count() < 45
    # Infinite scroll: reaching the bottom loads the following pages, a page at a time.
    deadline = time.monotonic() + 30
    while items.count() < 45:
        assert time.monotonic() < deadline, f"the list stopped at {items.count()}"
        items.last.scroll_into_view_if_needed()
        page.wait_for_timeout(100)
    expect(items).to_have_count(45)
    expect(titles.last).to_have_text("Topic 00")

    first = items.first
    conversation_id = first.get_attribute("data-id")
    first.hover()
    first.get_by_role("button", name="Rename").click()
    page.get_by_role("textbox", name="New title").fill("Renamed topic")
    page.get_by_role("textbox", name="New title").press("Enter")
    expect(first.locator(".conversation-link")).to_have_text("Renamed topic")
    assert api(echo_stack, "GET", f"/v1/conversations/{conversation_id}", BOB_KEY)["title"] == (
        "Renamed topic"
    )

    first.hover()
    first.get_by_role("button", name="Archive").click()
    expect(page.locator(f'#conversation-items li[data-id="{conversation_id}"]')).to_have_count(0)
    assert api(echo_stack, "GET", f"/v1/conversations/{conversation_id}", BOB_KEY)["archived"]
    page.locator("#show-archived").check()
    expect(page.locator(f'#conversation-items li[data-id="{conversation_id}"]')).to_have_count(1)

    second = items.nth(1)
    doomed = second.get_attribute("data-id")
    second.hover()
    second.get_by_role("button", name="Delete").click()
    expect(page.locator(f'#conversation-items li[data-id="{doomed}"]')).to_have_count(0)
    response = httpx.get(
        f"{echo_stack.gateway_url}/v1/conversations/{doomed}",
        headers={"Authorization": f"Bearer {BOB_KEY}"},
    )
    assert response.status_code == 404


def test_moderated_prompt_shows_the_notice(chat: Chat) -> None:
    page = chat.page
    chat.sign_in(ALICE_KEY)
    chat.send(TOXIC)
    user = page.locator("li.message.user").last
    expect(user.locator(".notice")).to_contain_text("moderation")
    expect(page.locator("li.message.assistant")).to_have_count(0)
    # The text comes back to the composer, to be rephrased.
    expect(page.locator("#prompt")).to_have_value(TOXIC)
    shot(page, "moderated-input")


def test_moderated_answer_shows_the_notice(browser: Browser, echo_stack: Stack) -> None:
    # Input moderation off on this gateway: the echo engine repeats the toxic prompt, and
    # output moderation stops the answer.
    gateway = start_extra_gateway(echo_stack, {"GATEWAY_MODERATE_INPUT": "false"})
    tab = Chat(browser, f"http://127.0.0.1:{gateway.http_port}")
    tab.sign_in(ALICE_KEY)
    tab.send(f"Hello there. {TOXIC}")
    tab.wait_idle()
    answer = tab.last_answer()
    expect(answer.locator(".notice")).to_contain_text("stopped by moderation")
    assert "idiot" not in answer.locator(".bubble").inner_text()
    stored = api(echo_stack, "GET", f"/v1/conversations/{tab.conversation_id()}")
    assert stored["messages"][-1]["finish_reason"] == "content_filter"
    tab.close()


def test_script_in_model_output_is_rendered_as_text(chat: Chat) -> None:
    page = chat.page
    chat.sign_in(ALICE_KEY)
    payload = (
        "<script>window.__pwned = 1</script> <img src=x onerror=window.__pwned=2> "
        "[click](javascript:window.__pwned=3) **bold** `<i>code</i>`"
    )
    chat.send(payload)
    chat.wait_idle()
    answer = chat.last_answer().locator(".bubble")
    expect(answer).to_contain_text("<script>window.__pwned = 1</script>")
    expect(answer).to_contain_text("<img src=x onerror=window.__pwned=2>")
    expect(answer.locator("strong")).to_have_text("bold")
    expect(answer.locator("code")).to_have_text("<i>code</i>")
    for tag in ("script", "img", "a", "i"):
        assert answer.locator(tag).count() == 0, tag
    assert page.locator("li.message.user .bubble").inner_text() == payload
    assert page.evaluate("window.__pwned") is None

    # The renderer on its own, over classic injection payloads.
    leaks = page.evaluate(
        """async () => {
            const { renderMarkdown } = await import('/static/js/markdown.js');
            const payloads = [
                '<script>alert(1)</script>', '<img src=x onerror=alert(1)>',
                '[x](javascript:alert(1))', '[x](https://e.com" onmouseover="alert(1))',
                '```html"><script>alert(1)</script>\\n<b>x</b>\\n```',
                '<svg/onload=alert(1)>', '**<iframe src=//e.com>**',
                '| <b> | a |\\n|---|---|\\n| <i> | b |',
                '> <a href=javascript:alert(1)>q</a>', '`</code><script>x</script>`',
            ];
            const allowed = new Set(['P','BR','STRONG','EM','DEL','CODE','PRE','SPAN','A','UL','OL',
                'LI','BLOCKQUOTE','H1','H2','H3','H4','H5','H6','HR','TABLE','THEAD','TBODY','TR',
                'TH','TD']);
            const leaks = [];
            for (const p of payloads) {
                const box = document.createElement('div');
                box.innerHTML = renderMarkdown(p);
                for (const el of box.querySelectorAll('*')) {
                    if (!allowed.has(el.tagName)) leaks.push(p + ' -> ' + el.tagName);
                    for (const attr of el.attributes) {
                        if (attr.name.startsWith('on')) leaks.push(p + ' -> ' + attr.name);
                        if (attr.name === 'href' && !/^(https?:|mailto:)/.test(attr.value))
                            leaks.push(p + ' -> ' + attr.value);
                    }
                }
            }
            return leaks;
        }"""
    )
    assert leaks == []


def test_markdown_code_block_has_a_copy_button(chat: Chat) -> None:
    chat.context.grant_permissions(["clipboard-read", "clipboard-write"])
    chat.sign_in(ALICE_KEY)
    # The echo engine keeps the words and their spacing; newlines become part of a word's
    # leading whitespace, so the fenced block survives.
    chat.send("Here:\n```python\nprint('hi')\n```")
    chat.wait_idle()
    block = chat.last_answer().locator("pre")
    expect(block.locator("code")).to_have_text("print('hi')")
    copy = block.get_by_role("button", name="Copy code")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert chat.page.evaluate("navigator.clipboard.readText()") == "print('hi')"


def test_rate_limit_error_is_readable(browser: Browser, echo_stack: Stack) -> None:
    gateway = start_extra_gateway(echo_stack, {"GATEWAY_RPM_LIMIT": "1"})
    tab = Chat(browser, f"http://127.0.0.1:{gateway.http_port}")
    tab.sign_in(BOB_KEY)
    banner = tab.page.locator("#banner")
    for i in range(3):
        tab.send(f"message {i}")
        tab.wait_idle()
        if banner.is_visible():
            break
    expect(banner).to_contain_text("Too many requests")
    expect(banner).to_contain_text("Try again in")
    # The text is not lost.
    assert tab.page.locator("#prompt").input_value().startswith("message ")
    tab.close()


def test_phone_layout_light_and_dark(browser: Browser, echo_stack: Stack) -> None:
    tab = Chat(browser, echo_stack.gateway_url, viewport=PHONE, color_scheme="dark")
    page = tab.page
    tab.sign_in(ALICE_KEY)
    # The sidebar is a drawer on a phone.
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    tab.send("Hello from a phone. **Markdown** works:\n- one\n- two")
    tab.wait_idle()
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.get_by_role("button", name="Open the sidebar").click()
    expect(page.locator("#sidebar")).to_be_in_viewport()
    page.get_by_role("button", name="Switch theme").click()
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != background
    assert page.evaluate("localStorage.getItem('parlance.theme')") == "light"
    page.locator("#conversation-items .conversation-link").first.click()
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    # Nothing overflows sideways.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    tab.close()
