"""The chat page's tree of turns: sibling controls, actions, the truncated mark, the undo
offer, and the page stream re-rendering the conversation when the tree moves."""

from __future__ import annotations

import re
from typing import Any

import httpx
from fastapi.testclient import TestClient
from helpers import LiveServer, read_sse, wait_until
from markupsafe import escape

from persona.engine import Engine
from persona.llm.scripted import HoldAfter, ScriptedBackend
from persona.storage import queries
from persona.web.pages import PAGE_EVENTS

CHAT = "chat-tree-page"
MARKUP = "<b>x</b> & 'q'"


def engine_of(client: TestClient) -> Engine:
    engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
    return engine


def say(client: TestClient, message: str) -> dict[str, Any]:
    response = client.post("/persona/chat", json={"message": message, "session_id": CHAT})
    assert response.status_code == 200, response.text
    return dict(response.json())


def conversation(client: TestClient) -> str:
    response = client.get(f"/chats/{CHAT}/conversation")
    assert response.status_code == 200
    return response.text


def tree(client: TestClient) -> dict[str, Any]:
    return dict(client.get(f"/persona/chats/{CHAT}/tree").json())


def positions(page: str) -> list[str]:
    return re.findall(r'<span class="sibling-pos">(\d+ / \d+)</span>', page)


def test_a_regenerated_reply_shows_its_siblings_and_every_turn_its_actions(
    client: TestClient, backend: ScriptedBackend
) -> None:
    backend.enqueue("First reply.", "Second reply.", "Another first reply.")
    first = say(client, MARKUP)
    say(client, "and then?")
    page = conversation(client)
    assert positions(page) == []  # no turn has a sibling yet
    assert page.count('data-tree-action="regenerate"') == 2  # every reply, not only the last
    assert page.count('data-tree-action="edit"') == 2
    assert page.count('data-tree-action="rewind"') == 2

    regenerated = client.post(f"/persona/chats/{CHAT}/turns/{first['turn_id']}/regenerate")
    assert regenerated.status_code == 200, regenerated.text
    page = conversation(client)
    # The new branch: the first turn's second version, the later turn left behind.
    assert positions(page) == ["2 / 2"]
    assert "Another first reply." in page and "Second reply." not in page
    back = re.search(r'data-target="([^"]+)" aria-label="Previous version"', page)
    assert back is not None and back.group(1) == first["turn_id"]
    assert 'disabled aria-label="Next version"' in page  # the newest has no next

    client.post(f"/persona/chats/{CHAT}/branch", json={"turn_id": first["turn_id"]})
    page = conversation(client)
    assert positions(page) == ["1 / 2"]
    assert "First reply." in page and "Second reply." in page
    assert 'disabled aria-label="Previous version"' in page


def test_user_text_and_the_edit_box_are_escaped(
    client: TestClient, backend: ScriptedBackend
) -> None:
    backend.enqueue("Reply <i>y</i>.")
    say(client, MARKUP)
    page = conversation(client)
    escaped = str(escape(MARKUP))  # as Jinja's autoescape writes it
    assert f'<div class="text">{escaped}</div>' in page
    assert f'aria-label="Edited message">{escaped}</textarea>' in page
    assert "Reply &lt;i&gt;y&lt;/i&gt;." in page
    assert "<b>x</b>" not in page and "<i>y</i>" not in page


def test_a_stopped_reply_is_marked_truncated_and_can_be_regenerated(
    live_server: LiveServer, backend: ScriptedBackend
) -> None:
    backend.enqueue("Fine.", HoldAfter("some partial words"))
    url, engine = live_server.url, live_server.engine
    body = {"message": "hello", "session_id": CHAT}
    assert httpx.post(f"{url}/persona/chat", json=body, timeout=30).status_code == 200
    with httpx.stream("GET", f"{url}/chats/{CHAT}/stream", timeout=30) as response:
        events = read_sse(response, as_json=False, stop_after=(PAGE_EVENTS["tree"],))
        assert next(events)[0] == PAGE_EVENTS["sync"]
        posted = httpx.post(f"{url}/chats/{CHAT}/messages", data={"message": "a story"})
        assert posted.status_code == 202
        for kind, _ in events:
            if kind == PAGE_EVENTS["delta"]:  # the reply streams: stop it
                assert httpx.post(f"{url}/persona/chats/{CHAT}/stop").status_code == 200
                break
        rest = list(events)
    # The stop ends the turn's own events, then every tab gets the conversation anew.
    assert [kind for kind, _ in rest][-2:] == [PAGE_EVENTS["error"], PAGE_EVENTS["tree"]]
    page = rest[-1][1]
    stopped = page[page.index('data-status="stopped"') :]
    assert 'data-testid="truncated"' in stopped
    assert "some partial words" in stopped
    assert 'data-tree-action="regenerate"' in stopped
    assert page.count('data-testid="truncated"') == 1  # only the stopped reply
    assert 'data-testid="dialogue-state"' in page  # the drawer: the last completed turn's
    assert engine.runner.queued(CHAT) == 0


def test_a_reply_stopped_before_it_streams_leaves_the_drawer_on_the_last_reply(
    client: TestClient, backend: ScriptedBackend
) -> None:
    backend.enqueue("Fine.", HoldAfter(""))
    say(client, "hello")
    engine = engine_of(client)
    assert client.post(f"/chats/{CHAT}/messages", data={"message": "more"}).status_code == 202
    wait_until(lambda: client.post(f"/persona/chats/{CHAT}/stop").status_code == 200)
    wait_until(lambda: engine.runner.queued(CHAT) == 0)
    page = client.get(f"/chats/{CHAT}")
    assert page.status_code == 200
    assert 'data-status="stopped"' in page.text
    head = engine.store.sync_read(queries.get_chat, CHAT)["head_turn_id"]
    assert engine.store.sync_read(queries.get_turn, head)["status"] == "stopped"
    trace = re.search(r'data-testid="trace-id"><code>([0-9a-f]+)</code>', page.text)
    assert trace is not None
    first = engine.store.sync_read(queries.conversation, CHAT)[0]
    assert trace.group(1) == first["trace_id"]  # the drawer shows the completed turn


def test_an_undo_is_offered_after_a_rewind_until_the_next_move(
    client: TestClient, backend: ScriptedBackend
) -> None:
    backend.enqueue("One.", "Two.", "Three.")
    first = say(client, "one")
    say(client, "two")
    assert 'data-testid="undo-rewind"' not in conversation(client)

    dry = client.post(
        f"/persona/chats/{CHAT}/rewind", json={"turn_id": first["turn_id"], "dry_run": True}
    )
    assert dry.status_code == 200 and len(dry.json()["impact"]["turns_leaving"]) == 1
    assert 'data-testid="undo-rewind"' not in conversation(client)  # a dry run moves nothing

    client.post(f"/persona/chats/{CHAT}/rewind", json={"turn_id": first["turn_id"]})
    page = conversation(client)
    assert 'data-testid="undo-rewind"' in page and "Two." not in page
    assert 'data-tree-action="undo"' in page

    say(client, "three")  # a new turn is the next move
    assert 'data-testid="undo-rewind"' not in conversation(client)


def test_the_chat_page_holds_the_rewind_dialog_the_stop_button_and_the_tree_script(
    client: TestClient,
) -> None:
    page = client.get(f"/chats/{CHAT}").text
    assert re.search(r'<dialog id="rewind-dialog"[^>]*>', page)
    assert 'data-testid="rewind-impact"' in page
    assert '<button type="button" class="stop" data-tree-action="stop" hidden>Stop</button>' in page
    assert '<script src="/static/tree.js" defer></script>' in page
    assert client.get("/static/tree.js").status_code == 200
    listened = re.search(r'sse-swap="([^"]*)"', page).group(1).split(",")  # type: ignore[union-attr]
    assert PAGE_EVENTS["tree"] in listened


def test_the_conversation_route_refuses_a_bad_id(client: TestClient) -> None:
    assert client.get("/chats/bad%20id/conversation").status_code == 422


def test_every_tab_gets_the_whole_conversation_when_the_tree_moves(
    live_server: LiveServer, backend: ScriptedBackend
) -> None:
    backend.enqueue("One.", "Two.")
    url = live_server.url
    engine = live_server.engine
    for message in ("one", "two"):
        body = {"message": message, "session_id": CHAT}
        assert httpx.post(f"{url}/persona/chat", json=body, timeout=30).status_code == 200
    first = engine.store.sync_read(queries.conversation, CHAT)[0]["turn_id"]
    with httpx.stream("GET", f"{url}/chats/{CHAT}/stream", timeout=30) as response:
        events = read_sse(response, as_json=False)
        kind, data = next(events)
        assert kind == PAGE_EVENTS["sync"] and "Two." in data
        wait_until(lambda: engine.broadcaster.subscriber_count(CHAT) == 1)
        moved = httpx.post(f"{url}/persona/chats/{CHAT}/rewind", json={"turn_id": first})
        assert moved.status_code == 200
        kind, data = next(events)
    assert kind == PAGE_EVENTS["tree"]
    # The conversation as it stands: the later turn gone from it, the undo offered.
    assert re.search(r'<section id="messages" [^>]*hx-swap-oob="true"', data)
    assert "One." in data and "Two." not in data
    assert 'data-testid="undo-rewind"' in data
