"""The page's side-by-side comparison ("Which response do you prefer?") in a real browser:
Debian's Chromium, headless, driven by Playwright, against the stack started as processes
(the scripted generator in echo mode, shared with test_web_ui.py's stack: same settings).

The screenshot of a comparison goes to artifacts/screenshots/ and, for the issue's note, to
/work/notes/compare_screenshot.png when that folder exists; the test does not depend on it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from parlance.testing import ALICE_KEY, Stack, StackPool, bearer, scripted_generator
from parlance.testing.processes import repo_root

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's Chromium is not at /usr/bin/chromium (scripts/install-system-deps.sh "
    "installs it: apt-get install chromium)",
)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
SCREENSHOTS = repo_root() / "artifacts" / "screenshots"
NOTE_SCREENSHOT = Path("/work/notes/compare_screenshot.png")
QUESTION = "Name three calm colours for a bedroom wall, and say why each one works."
ADMIN_KEY = "sk-admin-web-compare-0123456789"

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
    # The generator and safety processes are test_web_ui.py's (equal settings); the gateway
    # (GATEWAY_COMPARE_SHARE 0, as every test stack; an admin key for the export) and history
    # are this module's.
    stack = stacks.start(
        "web-compare",
        gateway_env={"GATEWAY_ADMIN_KEY": ADMIN_KEY},
        env={"generator": scripted_generator(tokens_per_s=20)},
    )
    yield stack
    stack.stop()


def api(stack: Stack, method: str, path: str, **kw: object) -> dict:
    response = httpx.request(
        method,
        f"{stack.gateway_url}{path}",
        headers=bearer(ALICE_KEY),
        timeout=30,
        **kw,  # type: ignore[arg-type]
    )
    assert response.status_code == 200, response.text
    return response.json()


def shot(page: Page, name: str, note: bool = True) -> None:
    """A screenshot; never fails the test (it is documentation, not a check)."""
    with contextlib.suppress(Exception):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
        if note and NOTE_SCREENSHOT.parent.is_dir():
            page.screenshot(path=str(NOTE_SCREENSHOT))


def test_compare_two_answers_pick_one_and_reload(browser: Browser, echo_stack: Stack) -> None:
    context = browser.new_context(
        base_url=echo_stack.gateway_url, viewport={"width": 1280, "height": 860}
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto("/")
    page.fill("#signin-key", ALICE_KEY)
    page.click("#signin-submit")
    expect(page.locator("#model option")).not_to_have_count(0)

    # Without the toggle (and a share of 0) the page gets one answer, as before.
    page.fill("#prompt", "one answer please")
    page.press("#prompt", "Enter")
    expect(page.locator("li.message.assistant[data-id]")).to_have_count(1)
    expect(page.locator(".compare-pane")).to_have_count(0)

    toggle = page.get_by_role("button", name="Compare")
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")
    page.fill("#prompt", QUESTION)
    page.press("#prompt", "Enter")
    comparison = page.locator("li.message.comparison")
    panes = comparison.locator(".compare-pane")
    expect(panes).to_have_count(2)
    expect(panes.nth(0)).to_have_attribute("aria-label", "Response 1")
    # Both panes fill (the echo engine answers with the question), then the question is asked.
    for i in range(2):
        expect(panes.nth(i).locator(".bubble")).to_have_text(QUESTION)
    expect(comparison.get_by_text("Which response do you prefer?")).to_be_visible()
    pick = comparison.get_by_role("button", name="I prefer response 2")
    expect(pick).to_be_enabled()
    expect(comparison.get_by_role("button", name="I prefer response 1")).to_be_enabled()
    shot(page, "compare")
    # Side by side on a wide screen, stacked on a phone.
    first, second = (panes.nth(i).bounding_box() for i in range(2))
    assert first and second and second["x"] > first["x"] and second["y"] == first["y"]
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    first, second = (panes.nth(i).bounding_box() for i in range(2))
    assert first and second and second["y"] > first["y"] and second["x"] == first["x"]
    shot(page, "compare-phone", note=False)
    page.set_viewport_size({"width": 1280, "height": 860})

    conversation_id = page.evaluate("location.hash")[len("#/c/") :]
    before = api(echo_stack, "GET", f"/v1/conversations/{conversation_id}")["messages"]
    siblings = before[-1]["sibling_ids"][-2:]
    assert len(siblings) == 2 and before[-1]["sibling_count"] == 2

    # Keyboard: the pick is a button like any other.
    pick.focus()
    page.keyboard.press("Enter")
    expect(page.locator(".compare-pane")).to_have_count(0)
    answer = page.locator("li.message.assistant").last
    expect(answer.locator(".compare-marker")).to_have_text(
        "You preferred this response in a comparison."
    )
    expect(answer.locator(".branch-label")).to_have_text("2/2")

    # Stored: the chosen answer is the active branch, and says it was chosen.
    stored = api(echo_stack, "GET", f"/v1/conversations/{conversation_id}")
    chosen = stored["messages"][-1]
    assert stored["active_message_id"] == chosen["id"] == siblings[1]
    assert chosen["comparison"]["chosen"] is True
    assert chosen["comparison"]["peer_id"] == siblings[0]

    # The admin export has the pick as a preference pair (the echo engine's two answers have
    # the same text: the pair is told apart by nothing but the pick, which is what is checked).
    export = httpx.get(
        f"{echo_stack.gateway_url}/v1/admin/export",
        params={"kind": "preference"},
        headers=bearer(ADMIN_KEY),
        timeout=30,
    )
    assert export.status_code == 200, export.text
    pairs = [json.loads(line) for line in export.text.splitlines() if line.strip()]
    assert any(p["prompt"][-1]["content"] == QUESTION for p in pairs), pairs

    # A reload renders the stored marker; the other answer is one step back.
    page.reload()
    answer = page.locator("li.message.assistant").last
    expect(answer.locator(".compare-marker")).to_have_text(
        "You preferred this response in a comparison."
    )
    answer.get_by_role("button", name="Previous version").click()
    expect(page.locator("li.message.assistant").last.locator(".compare-marker")).to_have_text(
        "You preferred the other response in a comparison."
    )
    assert not errors, f"errors on the page: {errors}"
    context.close()


def _event(index: int, delta: dict, finish: str | None = None, **extra: object) -> str:
    chunk = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        # Unknown to history: reading it back is a 404, and the page keeps what it streamed.
        "conversation_id": "conv_test_double",
        **extra,
    }
    return f"data: {json.dumps(chunk)}\n\n"


def test_a_flagged_candidate_leaves_the_screen(browser: Browser, echo_stack: Stack) -> None:
    """The page's side of a flagged candidate. The gateway's (never stored, never offered) is
    in services/gateway/tests/test_chat_compare.py; here the chat call is answered by a test
    double at the HTTP boundary (Playwright's route): a comparison stream whose second
    candidate ends with content_filter."""
    ids = ["msg_test_first", "msg_test_second"]
    stream = "".join(
        [
            _event(
                0,
                {"role": "assistant", "content": ""},
                parlance={"comparison": {"message_ids": ids, "reason": "asked"}},
            ),
            _event(1, {"role": "assistant", "content": ""}),
            _event(0, {"content": "A clean answer."}),
            _event(1, {"content": "Half of"}),
            _event(1, {}, "content_filter"),
            _event(0, {}, "stop"),
            "data: [DONE]\n\n",
        ]
    )
    context = browser.new_context(base_url=echo_stack.gateway_url)
    page = context.new_page()
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(
            status=200, headers={"content-type": "text/event-stream"}, body=stream
        ),
    )
    page.goto("/")
    page.fill("#signin-key", ALICE_KEY)
    page.click("#signin-submit")
    expect(page.locator("#model option")).not_to_have_count(0)
    page.fill("#prompt", "a question")
    page.press("#prompt", "Enter")
    comparison = page.locator("li.message.comparison")
    expect(comparison.locator(".notice")).to_have_text(
        "One of the two answers was withheld by moderation (content_filter); this is the other one."
    )
    expect(comparison.locator(".compare-pane")).to_have_count(1)
    expect(comparison.locator(".bubble")).to_have_text("A clean answer.")
    expect(page.get_by_text("Half of")).to_have_count(0)
    expect(page.get_by_text("Which response do you prefer?")).to_have_count(0)
    context.close()
