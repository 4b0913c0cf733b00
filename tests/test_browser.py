"""A real browser (Debian's chromium, driven by Playwright) on two tabs of one chat."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import PIPELINE_TIMING, LiveServer, ReplyGate, wait_until

from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.llm.scripted import FailAfter, HoldAfter, ScriptedBackend
from persona.storage import queries

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
    if (evt.detail.type !== "turn-done") return;
    const text = document.querySelector(".msg.assistant[data-status=started] .text");
    window.streamed.push(text ? text.textContent : null);
  });
}"""

# Every CSP violation reaches the console as an error (Chromium also logs "Refused to ..."),
# so a tab that records console errors fails on any; installed before the page's scripts.
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (evt) => {
  console.error(`CSP violation: ${evt.violatedDirective} blocked ${evt.blockedURI || "inline"}`);
});
"""

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

    def __init__(
        self, context: Any, url: str, errors: list[str], name: str = "tab", live: bool = True
    ):
        self.page = context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.page.add_init_script(REPORT_CSP_VIOLATIONS)
        self.page.on("console", lambda m: m.type == "error" and errors.append(f"{name}: {m.text}"))
        self.page.on("pageerror", lambda exc: errors.append(f"{name}: {exc}"))
        self.page.on("dialog", lambda dialog: errors.append(f"{name}: dialog {dialog.message}"))
        self.page.goto(url)
        if live:
            self.listening()

    def listening(self) -> None:
        """Wait until the chat page is subscribed to its stream, and record what it streams."""
        expect(self.page.locator("#live")).to_have_attribute("data-state", "open")
        self.page.evaluate(RECORD_STREAMED_TEXT)

    def send(self, first_line: str, second_line: str) -> None:
        """Type two lines (Shift+Enter between them) and send with Enter."""
        box = self.page.locator("textarea[name=message]")
        box.fill(first_line)
        box.press("Shift+Enter")
        box.type(second_line)
        box.press("Enter")

    def say(self, text: str) -> None:
        """Type one message and send it with Enter."""
        box = self.page.locator("textarea[name=message]")
        box.fill(text)
        box.press("Enter")

    def timing_rows(self) -> list[str]:
        return list(self.page.locator("#drawer .timing td:first-child").all_text_contents())

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
            # A greeting and a question at once: no state is clear enough to enter yet.
            expect(page.locator("[data-testid=dialogue-state]")).to_have_text("S0_NEUTRAL")
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
        # The drawer follows the newest turn: its trace and its dialogue state.
        head = live_server.engine.store.sync_read(queries.get_chat, chat_id)["head_turn_id"]
        turn = live_server.engine.store.sync_read(queries.get_turn, head)
        state = live_server.engine.store.sync_read(queries.chat_state, head)
        expect(one.page.locator("[data-testid=trace-id]")).to_have_text(turn["trace_id"])
        expect(one.page.locator("[data-testid=dialogue-state]")).to_have_text(state.dialogue_state)
        expect(one.page.locator("#form-error")).to_be_empty()

        one.page.screenshot(path=str(tmp_path / "persona_chat.png"), full_page=False)
        assert errors == []
    finally:
        context.close()


@pytest.fixture
def desktop(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        yield context
    finally:
        context.close()


def test_a_failed_turn_leaves_the_stream_live_and_the_next_turn_renders(
    desktop: Any, live_server: LiveServer, backend: ScriptedBackend
) -> None:
    backend.enqueue(FailAfter("half an answer", "backend exploded"), "Fine again.")
    errors: list[str] = []
    tab = Tab(desktop, f"{live_server.url}/", errors)
    page = tab.page

    tab.say("first try")
    expect(page.locator(".msg.assistant[data-status=failed]")).to_contain_text("backend exploded")
    # The page stream's failure event is not taken for a broken connection.
    live = page.locator("#live")
    expect(live).to_have_attribute("data-state", "open")
    expect(live).to_have_text("live")
    expect(page.locator(".composer button[type=submit]")).to_be_enabled()  # nothing streams

    tab.say("second try")
    expect(page.locator(".msg.assistant[data-status=completed] .text")).to_have_text("Fine again.")
    expect(page.locator(".turn")).to_have_count(2)
    expect(live).to_have_text("live")
    assert errors == []


def test_a_message_sent_while_a_reply_streams_shows_at_once_as_queued(
    desktop: Any, live_server: LiveServer, backend: ScriptedBackend
) -> None:
    gate = ReplyGate(backend)  # the first reply waits until the test opens the gate
    backend.enqueue("First answer.", "Second answer.")
    errors: list[str] = []
    tab = Tab(desktop, f"{live_server.url}/", errors)
    page = tab.page

    tab.say("first message")
    expect(page.locator(".msg.assistant[data-status=started]")).to_have_count(1)
    assert gate.reached.wait(10)
    second = "second <b>message</b> & more"
    tab.say(second)

    # Shown at once, as text, below the streaming turn; the turn itself cannot start yet.
    queued = page.locator(".turn.queued")
    expect(queued).to_have_count(1)
    expect(queued.locator(".text")).to_have_text(second)
    expect(queued.locator(".badge")).to_have_text("queued")
    expect(page.locator("#messages b")).to_have_count(0)
    expect(page.locator("textarea[name=message]")).to_have_value("")
    expect(queued).to_have_attribute("data-trace", re.compile(r"^[0-9a-f]{32}$"))
    expect(page.locator(".turn")).to_have_count(2)

    gate.open()
    expect(page.locator(".msg.assistant[data-status=completed]")).to_have_count(2)
    expect(queued).to_have_count(0)  # replaced by the real turn
    expect(page.locator(".turn")).to_have_count(2)
    assert page.locator(".msg.user .text").all_text_contents() == ["first message", second]
    assert tab.assistant_texts() == ["First answer.", "Second answer."]

    # The drawer's timings keep the pipeline's order, live and after a reload.
    assert tab.timing_rows() == [*PIPELINE_TIMING, "first token"]
    page.reload()
    expect(page.locator("#live")).to_have_attribute("data-state", "open")
    assert tab.timing_rows() == [*PIPELINE_TIMING, "first token"]
    assert errors == []


def test_at_phone_width_the_drawer_and_chat_list_are_toggles(
    browser: Any, live_server: LiveServer, tmp_path: Path
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    errors: list[str] = []
    try:
        tab = Tab(context, f"{live_server.url}/", errors)
        page = tab.page
        tab.say("hello from a phone")
        expect(page.locator(".msg.assistant[data-status=completed]")).to_have_count(1)

        drawer, chats = page.locator("#drawer"), page.locator("#sidebar")
        state = page.get_by_role("button", name="State")
        chats_button = page.get_by_role("button", name="Chats")
        composer = page.locator("textarea[name=message]")
        expect(drawer).to_be_hidden()
        expect(chats).to_be_hidden()
        expect(state).to_have_attribute("aria-expanded", "false")
        expect(state).to_have_attribute("aria-controls", "drawer")

        state.click()
        expect(drawer).to_be_visible()
        expect(drawer).to_contain_text("coherence")
        expect(state).to_have_attribute("aria-expanded", "true")
        expect(composer).to_be_in_viewport()
        expect(page.get_by_role("button", name="Send")).to_be_in_viewport()
        page.screenshot(path=str(tmp_path / "phone_drawer.png"))

        chats_button.click()  # one panel at a time
        expect(chats).to_be_visible()
        expect(drawer).to_be_hidden()
        expect(state).to_have_attribute("aria-expanded", "false")
        expect(composer).to_be_in_viewport()

        chats_button.click()
        expect(chats).to_be_hidden()
        expect(composer).to_be_in_viewport()
        assert errors == []
    finally:
        context.close()


def test_at_desktop_width_all_three_columns_show_without_toggles(
    desktop: Any, live_server: LiveServer
) -> None:
    page = Tab(desktop, f"{live_server.url}/", []).page
    expect(page.locator("#drawer")).to_be_visible()
    expect(page.locator("#sidebar")).to_be_visible()
    expect(page.locator(".panel-toggle")).to_have_count(2)
    for button in page.locator(".panel-toggle").all():
        expect(button).to_be_hidden()


def test_api_docs_render_offline(desktop: Any, live_server: LiveServer) -> None:
    outside: list[str] = []

    def local_only(route: Any) -> None:
        if route.request.url.startswith(live_server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    desktop.route("**/*", local_only)
    page = desktop.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{live_server.url}/docs")
    expect(page.locator(".opblock-summary-path[data-path='/persona/chat']")).to_have_count(1)
    expect(page.locator(".opblock").first).to_be_visible()
    page.goto(f"{live_server.url}/redoc")
    expect(page.get_by_text("Run one turn and return the whole reply").first).to_be_visible()
    assert outside == []


class SlowToLoad(ScriptedBackend):
    """A backend whose model loads only when the test says so (from its own thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded = threading.Event()

    async def warm(self) -> None:
        await asyncio.to_thread(self.loaded.wait, 30)


def test_the_warming_badge_shows_until_the_first_turn_starts(
    desktop: Any, settings: Settings, clock: FixedClock
) -> None:
    backend = SlowToLoad()
    errors: list[str] = []
    with LiveServer(Engine(settings, backend=backend, clock=clock)) as server:
        try:
            tab = Tab(desktop, f"{server.url}/", errors)
            warming = tab.page.locator("#warming")
            expect(warming).to_have_text("warming up…")
            tab.say("are you there?")  # waits for the model, then starts
            backend.loaded.set()
            expect(tab.page.locator(".msg.assistant[data-status=completed]")).to_have_count(1)
            expect(warming).to_have_count(0)
            assert errors == []
        finally:
            backend.loaded.set()


def test_an_inline_style_would_be_caught_as_a_csp_violation(
    desktop: Any, live_server: LiveServer
) -> None:
    """The CSP holds, and a tab fails on a violation (what keeps the pages free of them)."""
    errors: list[str] = []
    tab = Tab(desktop, f"{live_server.url}/", errors)
    inline = '<p style="color: red">x</p>'
    with tab.page.expect_console_message(lambda m: "CSP violation" in m.text):
        tab.page.evaluate("(html) => document.body.insertAdjacentHTML('beforeend', html)", inline)
    assert any("CSP violation: style-src" in error for error in errors), errors


def test_with_a_token_the_browser_logs_in_and_chats_under_the_csp(
    desktop: Any, tmp_path: Path, clock: FixedClock
) -> None:
    token = "a-long-random-access-token-for-the-browser"
    settings = Settings(
        db_path=tmp_path / "locked.db",
        llm={"provider": "scripted"},
        server={"access_token": token},
    )
    backend = ScriptedBackend(delay_s=0.02)
    backend.enqueue("Welcome back.\nThe maps are where you left them.")
    errors: list[str] = []
    with LiveServer(Engine(settings, backend=backend, clock=clock)) as server:
        tab = Tab(desktop, f"{server.url}/", errors, live=False)
        page = tab.page
        expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
        page.locator("input[name=token]").fill("not the token")
        page.locator("input[name=token]").press("Enter")
        expect(page.locator(".form-error")).to_have_text("That is not the access token.")
        errors.remove(next(e for e in errors if "401" in e))  # the browser logs the 401 page

        page.locator("input[name=token]").fill(token)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(re.compile(r"/chats/chat-[0-9a-f]{16}$"))
        tab.listening()
        tab.say("hello again")
        expect(page.locator(".msg.assistant[data-status=completed] .text")).to_have_text(
            "Welcome back.\nThe maps are where you left them."
        )
        assert page.evaluate("window.streamed") == [
            "Welcome back.\nThe maps are where you left them."
        ]
        expect(page.locator("[data-testid=telemetry] meter")).to_have_count(5)
        assert token not in page.content()

        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(re.compile(r"/login$"))
        assert errors == []


def test_the_turn_tree_in_the_browser_regenerate_branch_rewind_undo_and_stop(
    desktop: Any, live_server: LiveServer, backend: ScriptedBackend
) -> None:
    backend.enqueue("Reply one.", "Reply two.", "Reply three.", "Reply one again.")
    backend.enqueue(HoldAfter("some partial words"), "A whole answer.", "A short answer.")
    errors: list[str] = []
    one = Tab(desktop, f"{live_server.url}/", errors, "tab 1")
    page = one.page
    replies = page.locator(".msg.assistant .text")
    start = page.get_by_role("button", name="Rewind to the start")
    expect(page.locator(".empty-hint")).to_be_visible()
    expect(start).to_be_hidden()  # nothing to rewind yet
    for n, message in enumerate(("first", "second", "third <b>x</b>"), start=1):
        one.say(message)
        expect(page.locator(".msg.assistant[data-status=completed]")).to_have_count(n)
    two = Tab(desktop, page.url, errors, "tab 2")
    two.page.evaluate("window.notReloaded = true")
    expect(two.page.locator(".msg.user .text").last).to_have_text("third <b>x</b>")

    # Regenerate the FIRST reply: a new branch from there, shown as its second version.
    first = page.locator(".msg.assistant").first
    first.get_by_role("button", name="Regenerate").click()
    for tab in (one, two):
        expect(tab.page.locator(".msg.assistant .text")).to_have_text(["Reply one again."])
        expect(tab.page.locator(".sibling-pos")).to_have_text("2 / 2")
    # ‹ and › choose the branch; the conversation below follows.
    page.get_by_role("button", name="Previous version").click()
    expect(replies).to_have_text(["Reply one.", "Reply two.", "Reply three."])
    expect(page.locator(".sibling-pos")).to_have_text("1 / 2")
    expect(page.get_by_role("button", name="Previous version")).to_be_disabled()
    page.get_by_role("button", name="Next version").click()
    expect(replies).to_have_text(["Reply one again."])
    page.get_by_role("button", name="Previous version").click()
    expect(replies).to_have_text(["Reply one.", "Reply two.", "Reply three."])

    # Rewind to the first turn: the dry run's impact first, in a dialog; then the move.
    page.locator(".msg.assistant").first.get_by_role("button", name="Rewind here").click()
    dialog = page.locator("#rewind-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("[data-testid=rewind-impact]")).to_contain_text("2 turns")
    expect(dialog.locator(".rewind-details")).to_contain_text("third <b>x</b>")
    dialog.get_by_role("button", name="Cancel").click()  # cancelled: nothing moves
    expect(dialog).to_be_hidden()
    expect(replies).to_have_count(3)
    page.locator(".msg.assistant").first.get_by_role("button", name="Rewind here").click()
    dialog.get_by_role("button", name="Rewind").click()
    for tab in (one, two):
        expect(tab.page.locator(".msg.assistant .text")).to_have_text(["Reply one."])
    undo = page.get_by_role("button", name="Undo rewind")
    undo.click()
    for tab in (one, two):
        expect(tab.page.locator(".msg.assistant .text")).to_have_text(
            ["Reply one.", "Reply two.", "Reply three."]
        )
    expect(undo).to_have_count(0)
    expect(page.locator(".empty-hint")).to_be_hidden()

    # Rewind to the start: every turn leaves the path, and the undo brings them back.
    start.click()
    expect(page.locator("#rewind-title")).to_have_text("Rewind to the start?")
    expect(dialog.locator("[data-testid=rewind-impact]")).to_contain_text("3 turns")
    dialog.get_by_role("button", name="Rewind").click()
    for tab in (one, two):
        expect(tab.page.locator(".msg.assistant")).to_have_count(0)
    expect(start).to_be_hidden()
    undo.click()
    for tab in (one, two):
        expect(tab.page.locator(".msg.assistant .text")).to_have_text(
            ["Reply one.", "Reply two.", "Reply three."]
        )

    # Stop a streaming reply: Send is disabled meanwhile; the reply stays, truncated.
    send = page.locator(".composer button[type=submit]")
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_hidden()
    one.say("tell me a long story")
    streaming = page.locator(".msg.assistant[data-status=started] .text")
    expect(streaming).to_have_text("some partial words")
    expect(send).to_be_disabled()
    expect(two.page.locator(".composer button[type=submit]")).to_be_disabled()
    stop.click()
    stopped = page.locator(".msg.assistant[data-status=stopped]")
    expect(stopped.locator(".text")).to_have_text("some partial words")
    expect(stopped.locator("[data-testid=truncated]")).to_have_text("truncated")
    expect(send).to_be_enabled()
    expect(stop).to_be_hidden()
    # A stopped reply can be regenerated.
    stopped.get_by_role("button", name="Regenerate").click()
    last = page.locator(".msg.assistant").last
    expect(last.locator(".text")).to_have_text("A whole answer.")
    expect(last.locator(".sibling-pos")).to_have_text("2 / 2")
    for tab in (one, two):
        expect(tab.page.locator(".msg.assistant .text")).to_have_text(
            ["Reply one.", "Reply two.", "Reply three.", "A whole answer."]
        )

    # An edit box open in tab 2 keeps its text while tab 1 moves the tree and back.
    other_first = two.page.locator(".msg.user").first
    other_first.get_by_role("button", name="Edit").click()
    other_box = other_first.get_by_label("Edited message")
    other_box.fill("first, said better")
    page.locator(".msg.assistant").first.get_by_role("button", name="Rewind here").click()
    dialog.get_by_role("button", name="Rewind").click()
    expect(two.page.locator(".msg.assistant .text")).to_have_text(["Reply one."])
    expect(other_box).to_be_visible()
    expect(other_box).to_have_value("first, said better")
    undo.click()
    expect(two.page.locator(".msg.assistant .text")).to_have_count(4)
    expect(other_box).to_have_value("first, said better")
    other_first.get_by_role("button", name="Cancel").click()
    expect(other_box).to_be_hidden()

    # Edit a message: a sibling turn with the new text, answered anew.
    message = page.locator(".msg.user").last
    message.get_by_role("button", name="Edit").click()
    box = message.get_by_label("Edited message")
    expect(box).to_have_value("tell me a long story")
    box.fill("a short <i>one</i>")
    message.get_by_role("button", name="Save").click()
    for tab in (one, two):
        expect(tab.page.locator(".msg.user .text").last).to_have_text("a short <i>one</i>")
        expect(tab.page.locator(".msg.assistant .text").last).to_have_text("A short answer.")
        expect(tab.page.locator(".msg.assistant .sibling-pos").last).to_have_text("3 / 3")
    expect(two.page.locator("#messages b, #messages i")).to_have_count(0)  # text, not tags
    assert two.page.evaluate("window.notReloaded") is True  # every move came live
    assert errors == []
