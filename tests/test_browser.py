"""A real browser (Debian's chromium, driven by Playwright) on two tabs of one chat."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import LiveServer, wait_until

from persona.llm.scripted import ScriptedBackend

CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 15_000
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# What the deltas alone built, read just before `done` replaces the bubble with the reply.
RECORD_STREAMED_TEXT = """() => {
  window.streamed = [];
  document.body.addEventListener("htmx:sseBeforeMessage", (evt) => {
    if (evt.detail.type !== "done") return;
    const text = document.querySelector(".msg.assistant[data-status=started] .text");
    window.streamed.push(text ? text.textContent : null);
  });
}"""

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="needs the playwright Python package (pip install playwright)"
)
expect = sync_api.expect


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            browser.close()


class Tab:
    """One page of the chat, recording every console error and uncaught exception."""

    def __init__(self, context: Any, url: str, errors: list[str], name: str):
        self.page = context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.page.on("console", lambda m: m.type == "error" and errors.append(f"{name}: {m.text}"))
        self.page.on("pageerror", lambda exc: errors.append(f"{name}: {exc}"))
        self.page.on("dialog", lambda dialog: errors.append(f"{name}: dialog {dialog.message}"))
        self.page.goto(url)
        # Subscribed to the chat's stream before anything is sent.
        expect(self.page.locator("#live")).to_have_attribute("data-state", "open")
        self.page.evaluate(RECORD_STREAMED_TEXT)

    def send(self, first_line: str, second_line: str) -> None:
        """Type two lines (Shift+Enter between them) and send with Enter."""
        box = self.page.locator("textarea[name=message]")
        box.fill(first_line)
        box.press("Shift+Enter")
        box.type(second_line)
        box.press("Enter")

    def assistant_texts(self) -> list[str]:
        bubbles = self.page.locator(".msg.assistant[data-status=completed] .text")
        return list(bubbles.all_text_contents())


def test_two_tabs_follow_every_turn_live(
    browser: Any, live_server: LiveServer, backend: ScriptedBackend, tmp_path: Path
) -> None:
    backend.delay_s = 0.03
    first_reply = "Hello there!\nI like <em>old maps</em> & quiet mornings."
    second_reply = "Of course. Rivers first,\nthen the roads."
    backend.enqueue(first_reply, second_reply)
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        one = Tab(context, f"{live_server.url}/", errors, "tab 1")
        chat_url = one.page.url
        assert "/chats/chat-" in chat_url
        two = Tab(context, chat_url, errors, "tab 2")
        chat_id = chat_url.rsplit("/", 1)[1]
        wait_until(lambda: live_server.engine.broadcaster.subscriber_count(chat_id) == 2)
        for tab in (one, two):
            expect(tab.page.locator("#drawer")).to_contain_text("No completed turn yet")

        one.send("Hi Mira, <b>do</b> you like maps?", "Second line & more")

        user_text = "Hi Mira, <b>do</b> you like maps?\nSecond line & more"
        for tab in (one, two):
            page = tab.page
            expect(page.locator(".msg.assistant[data-status=completed]")).to_have_count(1)
            assert tab.assistant_texts() == [first_reply]  # newline and markup kept as text
            # Deltas with a newline span several SSE data lines; the browser rejoins them.
            assert page.evaluate("window.streamed") == [first_reply]
            assert page.locator(".msg.user .text").all_text_contents() == [user_text]
            expect(page.locator(".turn")).to_have_count(1)  # exactly one copy of the turn
            expect(page.locator("[data-testid=dialogue-state]")).to_have_text("opening")
            expect(page.locator("[data-testid=telemetry] .bar-row")).to_have_count(5)
            expect(page.locator("#drawer")).to_contain_text("coherence")
            expect(page.locator("#chat-list a.current")).to_contain_text("Hi Mira")
            expect(page.locator("#messages b, #messages em")).to_have_count(0)  # text, not tags
        expect(one.page.locator("textarea[name=message]")).to_have_value("")

        # The other tab can talk too, and the first one follows.
        two.send("Can you draw me one?", "A small one.")
        for tab in (one, two):
            expect(tab.page.locator(".msg.assistant[data-status=completed]")).to_have_count(2)
            assert tab.assistant_texts() == [first_reply, second_reply]
            expect(tab.page.locator(".turn")).to_have_count(2)
        expect(one.page.locator("[data-testid=dialogue-state]")).not_to_have_text("opening")
        expect(one.page.locator("#form-error")).to_be_empty()

        one.page.screenshot(path=str(tmp_path / "persona_chat.png"), full_page=False)
        assert errors == []
    finally:
        context.close()
