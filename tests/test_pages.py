"""The HTML chat: pages, the message form, and the stream of HTML fragments."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import PIPELINE_TIMING, LiveServer, ReplyGate, read_sse, wait_until

from persona.engine import Engine
from persona.llm.scripted import FailAfter, ScriptedBackend
from persona.web.pages import PAGE_EVENTS, TRACE_HEADER
from persona.web.schemas import MAX_MESSAGE_CHARS

# The page stream's events: never `error`, which the browser's EventSource also fires for
# a broken connection.
TURN_END = ("turn-done", "turn-failed")
XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"
XSS_REPLY = "Sure <b>bold</b>\n<script>alert(3)</script> & <img src=y onerror=alert(4)>"
RAW_MARKUP = ("<script>alert", "<img src=", "<b>bold</b>")


def engine_of(client: TestClient) -> Engine:
    engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
    return engine


def event_count(engine: Engine) -> int:
    count = engine.store.sync_read(lambda c: c.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    return int(count)


def chat_turn(client: TestClient, message: str, session_id: str | None = None) -> dict:
    body: dict = {"message": message}
    if session_id:
        body["session_id"] = session_id
    return client.post("/persona/chat", json=body).json()


def assert_no_raw_markup(text: str) -> None:
    for raw in RAW_MARKUP:
        assert raw not in text, f"unescaped {raw!r} in output"


# ---- pages ------------------------------------------------------------------------------------


def test_root_redirects_to_a_new_chat_and_writes_nothing(client: TestClient) -> None:
    before = event_count(engine_of(client))
    first = client.get("/", follow_redirects=False)
    second = client.get("/", follow_redirects=False)
    assert first.status_code == 303
    assert re.fullmatch(r"/chats/chat-[0-9a-f]{16}", first.headers["location"])
    assert first.headers["location"] != second.headers["location"]
    page = client.get(first.headers["location"])
    assert page.status_code == 200
    assert "Say hello to Mira" in page.text
    assert "No completed turn yet" in page.text
    assert event_count(engine_of(client)) == before


def test_chat_page_shows_history_failed_turns_and_the_last_turns_state(
    client: TestClient, backend: ScriptedBackend
) -> None:
    first = chat_turn(client, "hello, I like old maps")
    sid = first["session_id"]
    second = chat_turn(client, "tell me about maps", sid)
    backend.enqueue(FailAfter("half an answer", "backend exploded"))
    client.post("/persona/chat", json={"message": "and then?", "session_id": sid})

    page = client.get(f"/chats/{sid}").text

    for text in ("hello, I like old maps", "tell me about maps", "and then?", second["reply"]):
        assert html.escape(text, quote=False) in page
    # The failed turn is marked failed and its partial text is never shown as an answer.
    assert page.count('data-status="completed"') == 2
    assert page.count('data-status="failed"') == 1
    assert "The reply failed: LLM failed: backend exploded" in page
    assert "half an answer" not in page
    # The drawer shows the last completed turn, not the failed one.
    meta = second["meta"]
    drawer = page[page.index('id="drawer"') :]
    assert f"<code>{meta['trace_id']}</code>" in drawer
    assert f'data-testid="dialogue-state">{meta["dialogue_state"]}<' in drawer
    labels = ("coherence", "narrativity", "memory", "self-modeling", "responsiveness")
    for key, label in zip("CNMSR", labels, strict=True):
        assert f"<b>{key}</b> {label}</span>" in drawer
        assert f"{meta['telemetry'][key]:.2f}</span>" in drawer
    assert f'data-testid="novelty">novelty {meta["novelty"]:.2f}' in drawer
    budget = meta["token_budget"]
    assert f"{budget['used']} / {budget['context'] - budget['reply']}" in drawer
    assert "Decision candidates" in drawer and meta["decision_candidates"][0]["reason"] in drawer
    comp = meta["competition"]
    assert (
        f'data-testid="competition">workspace competition: {len(comp["winners"])} of'
        f" {len(comp['salience'])} won (K 7)"
    ) in drawer
    top = meta["memory"]["retrieved"][0]
    assert f"score {top['score']:.2f} · lexical {top['lexical']:.2f} · names" in drawer
    assert "used" in drawer and "score" in drawer  # the memory retrieved from turn one
    assert "scripted · scripted" in drawer
    for stage in ("perception", "memory", "gating", "metacognition", "speaker"):
        assert f"<td>{stage}</td>" in drawer
    # The sidebar links the chat.
    assert f'href="/chats/{sid}" class="current"' in page


def test_user_and_model_text_is_escaped_in_the_page(
    client: TestClient, backend: ScriptedBackend
) -> None:
    backend.enqueue(XSS_REPLY, XSS_REPLY)
    sid = chat_turn(client, XSS)["session_id"]
    chat_turn(client, XSS, sid)  # the second turn retrieves the first as a memory

    page = client.get(f"/chats/{sid}").text

    assert_no_raw_markup(page)
    assert html.escape(XSS, quote=False) in page
    assert html.escape(XSS_REPLY, quote=False) in page
    # The drawer's memory text: what was said, escaped.
    assert f'<div class="memory-text">{html.escape(XSS, quote=False)}' in page


def test_invalid_ids_and_unknown_personas_get_html_error_pages(client: TestClient) -> None:
    bad = client.get("/chats/not%20valid")
    assert bad.status_code == 422
    assert "text/html" in bad.headers["content-type"]
    assert "is not a valid id" in bad.text
    newline = client.get("/chats/chat-1%0A")  # `$` alone would accept a trailing newline
    assert newline.status_code == 422
    unknown = client.get("/chats/fresh-chat?persona_id=nobody")
    assert unknown.status_code == 404
    assert "Unknown persona" in unknown.text


def test_static_assets_are_served_and_pages_reference_no_external_url(client: TestClient) -> None:
    htmx_js = client.get("/static/htmx.min.js")
    sse_js = client.get("/static/htmx-ext-sse.js")
    assert htmx_js.status_code == sse_js.status_code == 200
    assert "htmx" in htmx_js.text and 'defineExtension("sse"' in sse_js.text
    sid = chat_turn(client, "hi there")["session_id"]
    pages = [client.get(f"/chats/{sid}").text, client.get("/chats/brand-new").text]
    for page in pages:
        for asset in ("/static/htmx.min.js", "/static/htmx-ext-sse.js", "/static/app.css"):
            assert f'"{asset}"' in page
            assert client.get(asset).status_code == 200
        assert 'hx-ext="sse"' in page and 'sse-connect="/chats/' in page
    own = [client.get(f"/static/{name}").text for name in ("app.css", "app.js")]
    for text in [*pages, *own, htmx_js.text, sse_js.text]:
        assert not re.search(r"https?://", text)
    for page in pages:
        for url in re.findall(r'(?:src|href|hx-post|sse-connect)="([^"]*)"', page):
            assert url.startswith("/"), url


# ---- the message form -------------------------------------------------------------------------


def test_post_message_answers_202_at_once_and_the_turn_completes(
    client: TestClient, backend: ScriptedBackend
) -> None:
    gate = ReplyGate(backend)  # the reply cannot start until the test opens the gate
    backend.enqueue("one two three four five six")
    sid = "chat-form-1"

    response = client.post(f"/chats/{sid}/messages", data={"message": "hi from the form"})

    # Answered while the reply was still held: the form never waits for the turn (if it
    # did, the gate would time out, the turn would fail and `finished` never come true).
    assert response.status_code == 202
    assert response.text == ""
    assert gate.reached.wait(10), "the turn never reached its reply"

    def finished() -> list | None:
        history = client.get(f"/persona/chat/{sid}")
        messages = history.json()["messages"] if history.status_code == 200 else []
        return messages if messages and messages[-1]["role"] == "assistant" else None

    # Recorded before the 202: the chat and its message are there while the reply is held.
    held = client.get(f"/persona/chat/{sid}").json()["messages"]
    assert [(m["content"], m["trace_id"]) for m in held] == [
        ("hi from the form", response.headers[TRACE_HEADER])
    ]
    assert finished() is None  # the turn is running and has no reply yet
    gate.open()
    messages = wait_until(finished, timeout=10)
    assert [m["content"] for m in messages] == ["hi from the form", "one two three four five six"]
    assert messages[-1]["turn_status"] == "completed"
    # The sending tab matches its queued copy of the message to the turn by this trace.
    assert response.headers[TRACE_HEADER] == messages[-1]["trace_id"]


def test_post_message_passes_the_reward_signal(client: TestClient) -> None:
    sid = "chat-form-reward"
    # The reward judges the previous reply: the chat's second message carries it.
    for n, form in enumerate(({"message": "hello"}, {"message": "thanks", "reward_signal": "1"})):
        assert client.post(f"/chats/{sid}/messages", data=form).status_code == 202
        done = 'data-status="completed"'
        wait_until(lambda n=n, done=done: client.get(f"/chats/{sid}").text.count(done) == n + 1)
    page = client.get(f"/chats/{sid}").text
    assert "0.65" in page  # R = 0.5 + 0.5 * (0.3 * 1.0)


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"message": "   "}, 422, "message: message must not be blank"),
        ({}, 422, "message:"),
        ({"message": "x" * (MAX_MESSAGE_CHARS + 1)}, 422, "message:"),
        ({"message": "hi", "reward_signal": "2"}, 422, "reward_signal:"),
        ({"message": "hi", "reward_signal": "lots"}, 422, "reward_signal:"),
        ({"message": "hi", "persona_id": "bad id"}, 422, "persona_id:"),
        ({"message": "hi", "persona_id": "nobody"}, 404, "unknown persona_id &#39;nobody&#39;"),
    ],
)
def test_bad_form_input_answers_an_error_fragment_and_writes_nothing(
    client: TestClient, form: dict, status: int, error: str
) -> None:
    before = event_count(engine_of(client))
    response = client.post("/chats/chat-bad-form/messages", data=form)
    assert response.status_code == status
    assert "text/html" in response.headers["content-type"]
    assert "<html" not in response.text  # a fragment for the box under the input
    assert f"<li>{error}" in response.text
    assert event_count(engine_of(client)) == before


def test_bad_session_ids_and_encodings_are_refused_before_any_write(client: TestClient) -> None:
    before = event_count(engine_of(client))
    assert client.post("/chats/bad%20id/messages", data={"message": "hi"}).status_code == 422
    bad_utf8 = client.post(
        "/chats/chat-x/messages",
        content=b"message=%FF%FE",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert bad_utf8.status_code == 400
    as_json = client.post("/chats/chat-x/messages", json={"message": "hi"})
    assert as_json.status_code == 415
    assert event_count(engine_of(client)) == before


def test_a_chat_of_another_persona_answers_409(client: TestClient) -> None:
    sid = chat_turn(client, "hello")["session_id"]
    before = event_count(engine_of(client))
    response = client.post(f"/chats/{sid}/messages", data={"message": "hi", "persona_id": "other"})
    assert response.status_code == 409
    assert "belongs to persona" in response.text
    assert event_count(engine_of(client)) == before


# ---- the stream of HTML fragments -------------------------------------------------------------


def collect_turn(response: httpx.Response) -> list[tuple[str, str]]:
    events = list(read_sse(response, as_json=False, stop_after=TURN_END))
    assert events and events[-1][0] in TURN_END, "stream ended before the turn did"
    return events


def delta_text(events: list[tuple[str, str]], trace_id: str) -> str:
    prefix = f'<span hx-swap-oob="beforeend:#text-{trace_id}">'
    texts = []
    for kind, data in events:
        if kind == "turn-delta":
            assert data.startswith(prefix) and data.endswith("</span>")
            texts.append(html.unescape(data[len(prefix) : -len("</span>")]))
    return "".join(texts)


@pytest.fixture
def streams(live_server: LiveServer) -> Iterator[tuple[LiveServer, list[httpx.Response]]]:
    """Two open streams (two tabs) of one chat, subscribed before anything is sent."""
    with ExitStack() as stack:
        client = stack.enter_context(httpx.Client(base_url=live_server.url, timeout=10))
        responses = [
            stack.enter_context(client.stream("GET", "/chats/chat-live/stream")) for _ in range(2)
        ]
        for response in responses:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
        broadcaster = live_server.engine.broadcaster
        wait_until(lambda: broadcaster.subscriber_count("chat-live") == 2, timeout=10)
        yield live_server, responses


def test_every_stream_of_a_chat_gets_every_turn_as_escaped_fragments(
    streams: tuple[LiveServer, list[httpx.Response]], backend: ScriptedBackend
) -> None:
    server, responses = streams
    backend.enqueue(XSS_REPLY)
    form = {"message": XSS + "\nline 2"}
    assert httpx.post(f"{server.url}/chats/chat-live/messages", data=form).status_code == 202

    tabs = [collect_turn(response) for response in responses]

    assert tabs[0] == tabs[1]  # the tab that sent it and the one that did not see the same
    events = tabs[0]
    kinds = [kind for kind, _ in events]
    # Accepted (queued) before it starts; no sync frame: the chat did not exist yet.
    assert kinds[:2] == ["turn-queued", "turn-start"] and kinds[-1] == "turn-done"
    assert set(kinds[2:-1]) == {"turn-delta"}
    trace_id = re.search(r'id="turn-([0-9a-f]{32})"', events[0][1]).group(1)  # type: ignore[union-attr]
    queued, start, done = events[0][1], events[1][1], events[-1][1]
    escaped = f'<div class="text">{html.escape(XSS, quote=False)}\nline 2</div>'
    # Queued: added at the end of the conversation; started: that element replaced.
    assert 'hx-swap-oob="beforeend:#messages"' in queued
    assert f'class="turn queued" id="turn-{trace_id}" data-trace="{trace_id}">' in queued
    assert escaped in queued and 'data-status="queued" hidden' in queued
    assert f'<article class="turn" id="turn-{trace_id}" hx-swap-oob="true">' in start
    assert "beforeend:#messages" not in start
    assert escaped in start
    assert f'id="a-{trace_id}" data-status="started"' in start
    assert re.search(r'<nav id="chat-list" [^>]*hx-swap-oob="true"', start)
    # Deltas rejoin to the exact reply, newline included, and each is escaped.
    assert delta_text(events, trace_id) == XSS_REPLY
    assert f'id="a-{trace_id}" data-status="completed" hx-swap-oob="true"' in done
    assert f">{html.escape(XSS_REPLY, quote=False)}</div>" in done
    assert re.search(r'<aside id="drawer" [^>]*hx-swap-oob="true"', done)
    assert 'data-testid="dialogue-state"' in done
    for _, data in events:
        assert_no_raw_markup(data)


def test_a_failed_turn_streams_a_failed_bubble(
    streams: tuple[LiveServer, list[httpx.Response]], backend: ScriptedBackend
) -> None:
    server, responses = streams
    backend.enqueue(FailAfter("some words", "<b>boom</b>"))
    posted = httpx.post(f"{server.url}/chats/chat-live/messages", data={"message": "go"})
    assert posted.status_code == 202

    events = collect_turn(responses[0])

    kind, data = events[-1]
    assert kind == "turn-failed"
    assert all(kind.startswith("turn-") for kind, _ in events)  # never a bare `error`
    assert 'data-status="failed" hx-swap-oob="true"' in data
    assert "The reply failed: LLM failed: &lt;b&gt;boom&lt;/b&gt;" in data
    assert "drawer" not in data  # the drawer keeps the last completed turn


def test_the_page_listens_to_every_event_its_stream_sends(client: TestClient) -> None:
    page = client.get("/chats/chat-names").text
    listened = re.search(r'sse-swap="([^"]*)"', page).group(1).split(",")  # type: ignore[union-attr]
    assert sorted(listened) == sorted(PAGE_EVENTS.values())
    assert "error" not in listened  # EventSource's own connection-error event


def timing_rows(fragment: str) -> list[str]:
    table = fragment[fragment.index('<table class="timing">') :]
    table = table[: table.index("</table>")]
    return re.findall(r"<tr><td>([^<]*)</td>", table)


def test_timing_rows_keep_pipeline_order_live_and_after_reload(
    streams: tuple[LiveServer, list[httpx.Response]],
) -> None:
    server, responses = streams
    posted = httpx.post(f"{server.url}/chats/chat-live/messages", data={"message": "hello"})
    assert posted.status_code == 202

    live = collect_turn(responses[0])[-1][1]  # the drawer the stream swaps in
    reloaded = httpx.get(f"{server.url}/chats/chat-live").text  # built from the stored events

    for html_text in (live, reloaded):
        assert timing_rows(html_text) == [*PIPELINE_TIMING, "first token"]


# ---- plain HTTP: HEAD, API docs, warming up ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/", 303),
        ("/chats/chat-head", 200),
        ("/health", 200),
        ("/docs", 200),
        ("/redoc", 200),
        ("/openapi.json", 200),
        ("/static/app.css", 200),
    ],
)
def test_head_answers_like_get_without_a_body(client: TestClient, path: str, status: int) -> None:
    get = client.get(path, follow_redirects=False)
    head = client.head(path, follow_redirects=False)
    assert head.status_code == get.status_code == status
    assert head.headers.get("content-type") == get.headers.get("content-type")
    if status == 303:  # a fresh chat id each time
        assert head.headers["location"].startswith("/chats/chat-")
    assert head.content == b""


def test_api_docs_load_only_vendored_local_assets(client: TestClient) -> None:
    for path, scripts in (
        ("/docs", ["/static/swagger-ui/swagger-ui-bundle.js", "/static/swagger-ui/swagger-ui.css"]),
        ("/redoc", ["/static/redoc/redoc.standalone.js"]),
    ):
        page = client.get(path)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert not re.search(r"https?://", page.text), f"{path} loads something from outside"
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "'/openapi.json'" in page.text or 'spec-url="/openapi.json"' in page.text
        assets = re.findall(r'(?:src|href)="([^"]*)"', page.text)
        assert set(scripts) <= set(assets)
        for url in assets:
            assert url.startswith("/static/"), url
            served = client.get(url)
            assert served.status_code == 200 and served.content, url
        for url in scripts:  # the real bundles, not a placeholder
            assert len(client.get(url).content) > 100_000, url


def test_chat_page_says_warming_up_until_the_model_has_loaded(client: TestClient) -> None:
    engine = engine_of(client)
    assert engine.ready.is_set()  # the scripted backend loads at once
    assert 'id="warming"' not in client.get("/chats/chat-warm").text
    engine.ready = asyncio.Event()  # as if the model were still loading
    assert "warming up…" in client.get("/chats/chat-warm").text
    del engine.ready  # an engine without the flag shows nothing
    assert 'id="warming"' not in client.get("/chats/chat-warm").text
