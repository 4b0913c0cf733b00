"""A persona's chats: list, search, create, rename, archive and restore, in JSON and the rail.

Each change is an event; nothing is removed (an archived chat keeps its turns and comes
back), a refused or pointless change writes nothing, search goes through FTS5 without
letting its syntax in, and `persona rebuild` / `persona verify` agree with what was folded.
"""

from __future__ import annotations

import html
import json
import re
import sqlite3
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from persona.cli import main
from persona.engine import Engine
from persona.web.chats import MAX_TITLE_CHARS

XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"
FORM = {"content-type": "application/x-www-form-urlencoded"}


def engine_of(client: TestClient) -> Engine:
    engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
    return engine


def event_count(client: TestClient) -> int:
    count = engine_of(client).store.sync_read(
        lambda c: c.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    )
    return int(count)


def events_of(client: TestClient, event_type: str) -> list[dict[str, Any]]:
    rows = engine_of(client).store.sync_read(
        lambda c: c.execute(
            "SELECT actor, stream_id, payload FROM events WHERE type = ? ORDER BY rowid",
            (event_type,),
        ).fetchall()
    )
    return [{"actor": r[0], "stream_id": r[1], **json.loads(r[2])} for r in rows]


def talk(client: TestClient, message: str, session_id: str | None = None) -> str:
    body: dict[str, Any] = {"message": message}
    if session_id:
        body["session_id"] = session_id
    answer = client.post("/persona/chat", json=body)
    assert answer.status_code == 200, answer.text
    sid: str = answer.json()["session_id"]
    return sid


def listed(client: TestClient, **params: Any) -> list[str]:
    answer = client.get("/persona/chats", params=params)
    assert answer.status_code == 200, answer.text
    return [c["chat_id"] for c in answer.json()["items"]]


def create(client: TestClient, **body: Any) -> dict[str, Any]:
    answer = client.post("/persona/chats", json=body)
    assert answer.status_code == 201, answer.text
    chat: dict[str, Any] = answer.json()
    return chat


# ---- list and create ---------------------------------------------------------------------------


def test_chats_are_listed_newest_first_with_snippet_time_and_turns(
    client: TestClient, clock: Any
) -> None:
    older = talk(client, "The lighthouse keeper waved at us.")
    clock.advance(timedelta(hours=1))
    newer = talk(client, "Tell me about glaciers")
    clock.advance(timedelta(hours=1))
    empty = create(client, title="Plans")

    answer = client.get("/persona/chats").json()
    assert answer["persona_id"] == "default" and answer["total"] == 3
    items = {c["chat_id"]: c for c in answer["items"]}
    assert [c["chat_id"] for c in answer["items"]] == [empty["chat_id"], newer, older]
    chat = items[newer]
    assert chat["title"] == "Tell me about glaciers" and chat["turn_count"] == 1
    assert chat["archived"] is False
    # The snippet is the last message: the persona's reply (scripted), on one line.
    reply = client.get(f"/persona/chat/{newer}").json()
    assert chat["snippet"] and chat["snippet"] in json.dumps(reply, ensure_ascii=False)
    assert items[empty["chat_id"]]["snippet"] == "" and empty["turn_count"] == 0
    paged = client.get("/persona/chats", params={"limit": 1, "offset": 1}).json()
    assert [c["chat_id"] for c in paged["items"]] == [newer] and paged["total"] == 3


def test_the_snippet_is_one_line_and_cut_at_its_limit(client: TestClient, backend: Any) -> None:
    backend.enqueue("line one\n\n   line two " + " ".join(f"w{n}" for n in range(100)))
    sid = talk(client, "hello")
    snippet = client.get(f"/persona/chats/{sid}").json()["snippet"]
    assert snippet.startswith("line one line two w0 w1") and "\n" not in snippet
    assert len(snippet) == 120 and snippet.endswith("…")  # about 120: the figure


def test_create_writes_chat_started_and_a_first_message_continues_it(
    client: TestClient,
) -> None:
    before = event_count(client)
    chat = create(client, title="  Road trip  ")
    assert chat["title"] == "Road trip" and chat["persona_id"] == "default"
    assert event_count(client) == before + 1
    started = events_of(client, "chat.started")[-1]
    assert started["chat_id"] == chat["chat_id"] and started["user_id"] == "local"
    assert started["actor"] == "user" and started["stream_id"] == f"chat:{chat['chat_id']}"
    assert create(client)["title"] == "New chat"

    assert talk(client, "Where shall we stop first?", chat["chat_id"]) == chat["chat_id"]
    after = client.get(f"/persona/chats/{chat['chat_id']}").json()
    assert after["turn_count"] == 1 and after["title"] == "Road trip"
    assert len(events_of(client, "chat.started")) == 2  # the turn started no second chat


def test_create_refuses_unknown_persona_and_bad_title_writing_nothing(client: TestClient) -> None:
    before = event_count(client)
    unknown = client.post("/persona/chats", json={"persona_id": "nobody"})
    assert unknown.status_code == 404 and "nobody" in unknown.json()["error"]
    for title in ("", "   ", "a\x00b", "two\nlines", "x" * (MAX_TITLE_CHARS + 1)):
        assert client.post("/persona/chats", json={"title": title}).status_code == 422, title
    assert client.post("/persona/chats", json={"colour": "red"}).status_code == 422
    assert client.get("/persona/chats", params={"persona_id": "nobody"}).status_code == 404
    assert event_count(client) == before


# ---- rename ------------------------------------------------------------------------------------


def test_rename_writes_chat_renamed_with_the_previous_title(client: TestClient) -> None:
    sid = talk(client, "hello there")
    answer = client.patch(f"/persona/chats/{sid}", json={"title": " Evening talk "})
    assert answer.status_code == 200
    body = answer.json()
    assert body["chat"]["title"] == "Evening talk" and body["event_id"]
    event = events_of(client, "chat.renamed")[-1]
    assert event == {
        "actor": "user",
        "stream_id": f"chat:{sid}",
        "chat_id": sid,
        "title": "Evening talk",
        "previous": "hello there",
    }
    assert client.get(f"/persona/chats/{sid}").json()["title"] == "Evening talk"


def test_rename_refusals_and_no_ops_write_nothing(client: TestClient) -> None:
    sid = talk(client, "hello there")
    before = event_count(client)
    same = client.patch(f"/persona/chats/{sid}", json={"title": "hello there "})
    assert same.status_code == 200 and same.json()["event_id"] is None
    unknown = client.patch("/persona/chats/chat-nope", json={"title": "x"})
    assert unknown.status_code == 404 and "chat-nope" in unknown.json()["error"]
    for title in ("", " ", "bell\x07", "tab\there", "x" * (MAX_TITLE_CHARS + 1), 5):
        answer = client.patch(f"/persona/chats/{sid}", json={"title": title})
        assert answer.status_code == 422, title
    assert client.patch("/persona/chats/bad%20id", json={"title": "x"}).status_code == 422
    assert client.patch(f"/persona/chats/{sid}", json={}).status_code == 422
    assert event_count(client) == before
    assert client.patch(f"/persona/chats/{sid}", json={"title": "x" * MAX_TITLE_CHARS}).json()[
        "event_id"
    ]


# ---- archive and restore -----------------------------------------------------------------------


def test_archive_hides_a_chat_and_restore_brings_it_back(client: TestClient) -> None:
    kept, hidden = talk(client, "first chat"), talk(client, "second chat")
    turns = client.get(f"/persona/chat/{hidden}").json()

    archived = client.post(f"/persona/chats/{hidden}/archive")
    assert archived.status_code == 200 and archived.json()["chat"]["archived"] is True
    assert events_of(client, "chat.archived")[-1]["chat_id"] == hidden
    assert listed(client) == [kept]
    assert listed(client, archived=True) == [hidden]
    assert client.get(f"/persona/chat/{hidden}").json()["messages"] == turns["messages"]

    before = event_count(client)
    again = client.post(f"/persona/chats/{hidden}/archive")
    assert again.status_code == 200 and again.json()["event_id"] is None
    not_archived = client.post(f"/persona/chats/{kept}/restore")
    assert not_archived.status_code == 200 and not_archived.json()["event_id"] is None
    for action in ("archive", "restore"):
        assert client.post(f"/persona/chats/chat-nope/{action}").status_code == 404
    assert event_count(client) == before

    restored = client.post(f"/persona/chats/{hidden}/restore")
    assert restored.json()["chat"]["archived"] is False and restored.json()["event_id"]
    assert events_of(client, "chat.restored")[-1]["chat_id"] == hidden
    assert set(listed(client)) == {kept, hidden} and listed(client, archived=True) == []


# ---- search ------------------------------------------------------------------------------------


def test_search_matches_titles_and_message_words_as_prefixes(client: TestClient) -> None:
    bees = talk(client, "My grandmother kept bees in the orchard.")
    compass = talk(client, "I restore antique compasses on weekends.")
    client.patch(f"/persona/chats/{compass}", json={"title": "Workshop notes"})

    assert listed(client, q="orchard") == [bees]  # a message's word
    assert listed(client, q="grandmoth orch") == [bees]  # every word, each as a prefix
    assert listed(client, q="workshop") == [compass]  # the title
    assert listed(client, q="antique") == [compass]
    assert listed(client, q="bees workshop") == []  # all words in one title or one message
    assert listed(client, q="volcano") == []
    # The old title's words are gone from the index with the rename.
    assert listed(client, q="restore antique") == [compass]
    assert compass not in listed(client, q="weekends workshop")


@pytest.mark.parametrize(
    "q",
    ['"', "bees OR", "NEAR(bees orchard)", "title:bees", "bees*", "-bees", "^bees", "(", "*", "+"],
)
def test_fts_syntax_in_a_search_finds_nothing_instead_of_failing(
    client: TestClient, q: str
) -> None:
    talk(client, "The orchard is quiet today.")
    answer = client.get("/persona/chats", params={"q": q})
    assert answer.status_code == 200
    assert answer.json()["items"] == []  # the words are literal; none is in any chat


def test_search_keeps_archived_apart(client: TestClient) -> None:
    sid = talk(client, "Talking about the orchard.")
    client.post(f"/persona/chats/{sid}/archive")
    assert listed(client, q="orchard") == []
    assert listed(client, q="orchard", archived=True) == [sid]


# ---- rebuild and verify ------------------------------------------------------------------------


def test_rebuild_and_verify_agree_with_renames_and_archives(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two = talk(client, "The orchard in spring."), talk(client, "Compasses and maps.")
    three = create(client, title="Empty one")["chat_id"]
    client.patch(f"/persona/chats/{one}", json={"title": "Spring"})
    client.patch(f"/persona/chats/{one}", json={"title": "Spring again"})
    client.post(f"/persona/chats/{two}/archive")
    client.post(f"/persona/chats/{three}/archive")
    client.post(f"/persona/chats/{three}/restore")
    talk(client, "More about maps.", two)
    before = client.get("/persona/chats").json(), client.get("/persona/chats?archived=1").json()

    monkeypatch.setenv("PERSONA_DB_PATH", str(engine_of(client).settings.db_path))
    assert main(["rebuild", "--quiet"]) == 0
    after = client.get("/persona/chats").json(), client.get("/persona/chats?archived=1").json()
    assert after == before
    assert listed(client, q="spring") == [one] and listed(client, q="maps", archived=True) == [two]
    assert main(["verify", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "verify ok" in out
    for fts in ("chat_title_fts", "message_fts"):
        # Each index agrees with its table (a replay that broke both alike would still
        # compare equal, so consistency is checked, not only equality).
        assert re.search(rf"ok\s+{fts}\s+live consistent\s+replay consistent", out), out


def test_verify_notices_a_title_index_out_of_step(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sid = talk(client, "The orchard in spring.")
    # Change the row behind the index's back: the integrity check must see it.
    path = engine_of(client).settings.db_path
    raw = sqlite3.connect(path)
    raw.execute("UPDATE chats SET title = 'tampered' WHERE chat_id = ?", (sid,))
    raw.commit()
    raw.close()
    monkeypatch.setenv("PERSONA_DB_PATH", str(path))
    assert main(["verify", "--quiet"]) == 1
    assert re.search(r"DIFF\s+chat_title_fts", capsys.readouterr().out)


# ---- the rail ----------------------------------------------------------------------------------


def test_the_rail_lists_the_persona_chats_with_snippet_time_and_escapes_titles(
    client: TestClient, backend: Any
) -> None:
    backend.enqueue(f"reply {XSS}")
    sid = talk(client, "hello")
    client.patch(f"/persona/chats/{sid}", json={"title": XSS})
    other = talk(client, "second")
    client.post(f"/persona/chats/{other}/archive")

    page = client.get(f"/chats/{sid}").text
    rail = page.split('<nav id="chat-list"')[1].split("</nav>")[0]
    assert XSS not in page and "<script>alert" not in page
    assert html.escape(XSS, quote=False) in rail or html.escape(XSS) in rail
    assert f'href="/chats/{sid}" class="current"' in rail
    assert "reply &lt;script&gt;" in rail  # the last message's snippet, escaped
    assert "<time datetime=" in rail
    assert f'action="/chats/{sid}/rename"' in rail and f'action="/chats/{sid}/archive"' in rail
    assert other not in rail  # archived: not in the list
    assert 'href="/chats/' + sid + '?archived=1"' in page


def test_the_rail_search_and_archived_views(client: TestClient) -> None:
    bees = talk(client, "My grandmother kept bees.")
    maps = talk(client, "Old maps of the coast.")
    client.post(f"/persona/chats/{maps}/archive")

    found = client.get(f"/chats/{bees}", params={"q": "grandmother"}).text
    results = found.split('<nav id="chat-found"')[1].split("</nav>")[0]
    assert f'href="/chats/{bees}"' in results and f'href="/chats/{maps}"' not in results
    assert 'name="q" value="grandmother"' in found
    assert 'name="back" value="q=grandmother"' in results  # forms come back to the search
    nothing = client.get(f"/chats/{bees}", params={"q": 'NEAR("x" "y")'}).text
    assert "No chat matches." in nothing

    archived = client.get(f"/chats/{bees}", params={"archived": "1"}).text
    shelf = archived.split('<nav id="chat-found"')[1].split("</nav>")[0]
    assert f'action="/chats/{maps}/restore"' in shelf and f'href="/chats/{bees}"' not in shelf
    assert client.get(f"/chats/{bees}", params={"q": "x" * 201}).status_code == 422


def test_the_rail_forms_change_the_chat_and_come_back(client: TestClient) -> None:
    sid, other = talk(client, "hello"), talk(client, "another")
    renamed = client.post(
        f"/chats/{other}/rename",
        data={"title": "  From the form ", "page": sid, "back": "q=hello&evil=1"},
        follow_redirects=False,
    )
    assert renamed.status_code == 303
    assert renamed.headers["location"] == f"/chats/{sid}?q=hello"  # only the rail's filters
    assert client.get(f"/persona/chats/{other}").json()["title"] == "From the form"

    archived = client.post(f"/chats/{other}/archive", data={"page": sid}, follow_redirects=False)
    assert archived.status_code == 303 and archived.headers["location"] == f"/chats/{sid}"
    assert listed(client) == [sid]
    restored = client.post(
        f"/chats/{other}/restore",
        data={"page": "../../evil", "back": "archived=1"},
        follow_redirects=False,
    )
    # A page that is not a chat id falls back to the chat itself.
    assert restored.headers["location"] == f"/chats/{other}?archived=1"
    assert set(listed(client)) == {sid, other}

    before = event_count(client)
    bad = client.post(f"/chats/{other}/rename", data={"title": "\x01"}, follow_redirects=False)
    assert bad.status_code == 422 and "control character" in bad.text
    unknown = client.post("/chats/chat-nope/archive", data={}, follow_redirects=False)
    assert unknown.status_code == 404
    assert client.post("/chats/bad%20id/archive", data={}).status_code == 422
    same = client.post(f"/chats/{other}/rename", data={"title": "From the form"})
    assert same.status_code == 200  # followed back to the page; nothing written
    assert event_count(client) == before


def test_a_cross_site_rail_post_is_refused_and_writes_nothing(client: TestClient) -> None:
    sid = talk(client, "hello")
    before = event_count(client)
    cross = {"origin": "http://evil.example", "sec-fetch-site": "cross-site"}
    for path, body in (
        (f"/chats/{sid}/rename", "title=pwned"),
        (f"/chats/{sid}/archive", ""),
    ):
        response = client.post(path, content=body, headers={**FORM, **cross})
        assert response.status_code == 403
    json_cross = client.post(
        "/persona/chats", content="{}", headers={"content-type": "text/plain", **cross}
    )
    assert json_cross.status_code == 403
    assert (
        client.patch(f"/persona/chats/{sid}", json={"title": "x"}, headers=cross).status_code == 403
    )
    assert event_count(client) == before
