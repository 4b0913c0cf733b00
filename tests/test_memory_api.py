"""The memory screen and its JSON API: list, search, edit, pin, unpin, delete.

Each change is an event (never a rewrite): an edit is the next version and the next
prompt reads it, a pin puts the memory in every later identity, a deletion is a tombstone
that retrieval never returns, that `persona rebuild` keeps and that `persona verify` agrees
with. A refused change writes nothing.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from helpers import wait_until

from persona.cli import main
from persona.engine import Engine
from persona.llm.scripted import ScriptedBackend
from persona.web.memory import MAX_CONTENT_CHARS

XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"


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


def chat_turn(client: TestClient, message: str, session_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message}
    if session_id:
        body["session_id"] = session_id
    answer = client.post("/persona/chat", json=body)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def alone(client: TestClient, turn: dict[str, Any]) -> dict[str, Any]:
    """The turn's episodic memory, its other memories (facts drawn from the same words)
    deleted: what the prompt shows of these words then comes from this one only."""
    memory = exchange_of(client, turn)
    for other in client.get("/persona/memories", params={"limit": 200}).json()["items"]:
        if other["turn_id"] == turn["turn_id"] and other["memory_id"] != memory["memory_id"]:
            assert client.delete(f"/persona/memories/{other['memory_id']}").status_code == 200
    return memory


def exchange_of(client: TestClient, turn: dict[str, Any]) -> dict[str, Any]:
    """The episodic memory a turn wrote (waiting for it: writes may follow the reply)."""

    def found() -> dict[str, Any] | None:
        items = client.get("/persona/memories", params={"limit": 200}).json()["items"]
        return next(
            (m for m in items if m["turn_id"] == turn["turn_id"] and m["kind"] == "exchange"),
            None,
        )

    memory: dict[str, Any] = wait_until(found)
    return memory


def retrieved_ids(turn: dict[str, Any]) -> list[str]:
    return [m["memory_id"] for m in turn["meta"]["memory"]["retrieved"]]


def identity(backend: ScriptedBackend) -> str:
    """The last prompt's system message: the persona, its core and pinned memories."""
    content: str = backend.calls[-1][0].content
    return content


def whole_prompt(backend: ScriptedBackend) -> str:
    return "\n".join(m.content for m in backend.calls[-1])


# ---- listing and search --------------------------------------------------------------------------


def test_memories_list_newest_first_by_tier_and_search_by_words(client: TestClient) -> None:
    first = chat_turn(client, "My grandmother kept bees in the orchard.")
    second = chat_turn(client, "I restore antique compasses on weekends.")
    older, newer = exchange_of(client, first), exchange_of(client, second)

    listed = client.get("/persona/memories").json()
    ids = [m["memory_id"] for m in listed["items"]]
    assert listed["persona_id"] == "default" and listed["total"] == len(ids)
    assert ids.index(newer["memory_id"]) < ids.index(older["memory_id"])  # newest first
    assert ids[-1] == "core:default"  # written at genesis, the oldest
    assert newer["trace_url"] == f"/persona/traces/{second['meta']['trace_id']}"
    assert newer["said"][0] == {
        "role": "user",
        "name": "User",
        "text": "I restore antique compasses on weekends.",
    }
    assert client.get(newer["trace_url"]).status_code == 200  # the turn it came from

    core_only = client.get("/persona/memories", params={"tier": "L3"}).json()["items"]
    assert [m["memory_id"] for m in core_only] == ["core:default"]
    l1 = client.get("/persona/memories", params={"tier": "L1"}).json()["items"]
    assert "core:default" not in [m["memory_id"] for m in l1] and len(l1) == len(ids) - 1

    def search(q: str) -> list[str]:
        answer = client.get("/persona/memories", params={"q": q})
        assert answer.status_code == 200, answer.text
        return [m["memory_id"] for m in answer.json()["items"]]

    assert newer["memory_id"] in search("compasses") and older["memory_id"] not in search(
        "compasses"
    )
    assert older["memory_id"] in search("orch")  # a word's beginning finds it
    assert search("antique bees") == []  # every word must be there
    assert older["memory_id"] in search("BEES, orchard!")
    # FTS5 syntax is taken as words that must all be there, never as a query: no error,
    # and no OR, NEAR, column filter or wildcard widens the search.
    for hostile in ('bees" OR "compasses', "NEAR(bees orchard)", "context:bees", "*", '"', "-"):
        assert search(hostile) == []


def test_memories_page_through_with_limit_and_offset(client: TestClient) -> None:
    for n in range(3):
        chat_turn(client, f"Note number {n} about pottery.")
    wait_until(lambda: client.get("/persona/memories", params={"q": "pottery"}).json()["total"])
    everything = client.get("/persona/memories").json()
    total = everything["total"]
    pages = [
        client.get("/persona/memories", params={"limit": 2, "offset": o}).json()
        for o in range(0, total, 2)
    ]
    assert all(p["total"] == total for p in pages)
    assert [m["memory_id"] for p in pages for m in p["items"]] == [
        m["memory_id"] for m in everything["items"]
    ]


@pytest.mark.parametrize(
    "params",
    [
        {"tier": "L4"},
        {"limit": 0},
        {"limit": 201},
        {"offset": -1},
        {"persona_id": "bad id"},
        {"q": "x" * 201},
    ],
)
def test_bad_filters_are_refused(client: TestClient, params: dict[str, Any]) -> None:
    assert client.get("/persona/memories", params=params).status_code == 422


def test_an_unknown_persona_or_memory_is_404(client: TestClient) -> None:
    assert client.get("/persona/memories", params={"persona_id": "nobody"}).status_code == 404
    assert client.get("/persona/memories/ep:nothing").status_code == 404
    assert client.get("/persona/memories/core:default").json()["kind"] == "core"


# ---- edit ----------------------------------------------------------------------------------------


def test_an_edit_is_the_next_version_and_the_next_prompt_reads_it(
    client: TestClient, backend: ScriptedBackend
) -> None:
    turn = chat_turn(client, "My sister's name is Annabel.")
    memory = alone(client, turn)
    mid = memory["memory_id"]

    edited = client.patch(
        f"/persona/memories/{mid}",
        json={"content": "The user's sister is called Rosalind.", "reason": "wrong name"},
    )

    assert edited.status_code == 200, edited.text
    after = edited.json()["memory"]
    assert after["version"] == 2 and after["content"] == "The user's sister is called Rosalind."
    assert after["said"] == []  # who-said-what no longer describes the words
    [event] = events_of(client, "memory.edited")
    assert event["memory_id"] == mid and event["revision"] == 2 and event["reason"] == "wrong name"
    assert event["actor"] == "user" and event["stream_id"] == "persona:default"
    assert edited.json()["event_id"] is not None

    again = client.patch(f"/persona/memories/{mid}", json={"content": "Her sister: Rosalind."})
    assert again.json()["memory"]["version"] == 3
    assert [e["revision"] for e in events_of(client, "memory.edited")] == [2, 3]
    # The same words again: no new version, nothing written.
    before = event_count(client)
    same = client.patch(f"/persona/memories/{mid}", json={"content": "Her sister: Rosalind."})
    assert same.status_code == 200 and same.json()["event_id"] is None
    assert same.json()["memory"]["version"] == 3 and event_count(client) == before

    # Another chat (no history to leak from): retrieval finds and shows the edited words.
    asked = chat_turn(client, "What is my sister called? Rosalind?")
    assert mid in retrieved_ids(asked)
    assert "Rosalind" in whole_prompt(backend) and "Annabel" not in whole_prompt(backend)
    assert client.get("/persona/memories", params={"q": "Annabel"}).json()["items"] == []


# ---- pin -----------------------------------------------------------------------------------------


def test_a_pinned_memory_is_in_every_identity_until_unpinned(
    client: TestClient, backend: ScriptedBackend
) -> None:
    turn = chat_turn(client, "Remember this: I am allergic to walnuts.")
    mid = alone(client, turn)["memory_id"]
    client.patch(f"/persona/memories/{mid}", json={"content": "The user is allergic to walnuts."})

    chat_turn(client, "Good morning!")
    assert "walnuts" not in identity(backend)

    pinned = client.post(f"/persona/memories/{mid}/pin")
    assert pinned.status_code == 200
    assert (
        pinned.json()["memory"].items() >= {"tier": "L3", "base_tier": "L1", "pinned": True}.items()
    )
    assert [e["pinned"] for e in events_of(client, "memory.pinned")] == [True]
    l3 = client.get("/persona/memories", params={"tier": "L3"}).json()["items"]
    assert mid in [m["memory_id"] for m in l3]

    before = event_count(client)
    assert client.post(f"/persona/memories/{mid}/pin").json()["event_id"] is None
    assert event_count(client) == before  # pinning a pinned memory changes nothing

    turned = chat_turn(client, "What should we cook tonight?")
    assert "allergic to walnuts" in identity(backend)
    assert mid in turned["meta"]["memory"]["pinned"]

    unpinned = client.post(f"/persona/memories/{mid}/unpin")
    assert unpinned.json()["memory"].items() >= {"tier": "L1", "pinned": False}.items()
    assert [e["pinned"] for e in events_of(client, "memory.pinned")] == [True, False]
    chat_turn(client, "And tomorrow?")
    assert "walnuts" not in identity(backend)


# ---- delete --------------------------------------------------------------------------------------


def test_a_deleted_memory_is_never_retrieved_again_and_stays_gone_after_rebuild(
    client: TestClient,
    backend: ScriptedBackend,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    turn = chat_turn(client, "My old dog Biscuit loved the beach.")
    mid = alone(client, turn)["memory_id"]
    asked = chat_turn(client, "Do you remember Biscuit and the beach?")
    assert mid in retrieved_ids(asked)  # retrievable before the deletion
    assert "Biscuit loved" in whole_prompt(backend)
    client.post(f"/persona/memories/{mid}/pin")  # and pinned: the deletion unpins it too

    deleted = client.delete(f"/persona/memories/{mid}", params={"reason": "private"})

    assert deleted.status_code == 200
    assert deleted.json()["memory"].items() >= {"tombstone": True, "pinned": False}.items()
    event = events_of(client, "memory.deleted")[-1]
    assert event["memory_id"] == mid and event["reason"] == "private" and event["actor"] == "user"
    # Twice: the same answer, no second event.
    before = event_count(client)
    twice = client.delete(f"/persona/memories/{mid}")
    assert twice.status_code == 200 and twice.json()["event_id"] is None
    assert event_count(client) == before

    def never_recalled() -> None:
        recalled = chat_turn(client, "Do you remember Biscuit and the beach?")
        assert mid not in retrieved_ids(recalled)
        assert mid not in recalled["meta"]["memory"]["pinned"]
        assert "Biscuit loved" not in whole_prompt(backend)
        listed = client.get("/persona/memories", params={"q": "Biscuit"}).json()["items"]
        assert mid not in [m["memory_id"] for m in listed]
        shown = client.get("/persona/memories", params={"q": "Biscuit", "include_deleted": True})
        assert mid in [m["memory_id"] for m in shown.json()["items"]]

    never_recalled()
    monkeypatch.setenv("PERSONA_DB_PATH", str(engine_of(client).settings.db_path))
    assert main(["rebuild", "--quiet"]) == 0
    assert client.get(f"/persona/memories/{mid}").json()["tombstone"] is True
    never_recalled()
    assert main(["verify", "--quiet"]) == 0
    assert "verify ok" in capsys.readouterr().out


# ---- refusals write nothing ----------------------------------------------------------------------


def _refusals(mid: str) -> list[tuple[str, str, dict[str, Any], int]]:
    too_long = "x" * (MAX_CONTENT_CHARS + 1)
    return [
        ("PATCH", "/persona/memories/ep:unknown", {"json": {"content": "new"}}, 404),
        ("POST", "/persona/memories/ep:unknown/pin", {}, 404),
        ("POST", "/persona/memories/ep:unknown/unpin", {}, 404),
        ("DELETE", "/persona/memories/ep:unknown", {}, 404),
        ("PATCH", "/persona/memories/core:default", {"json": {"content": "I am Bob."}}, 409),
        ("POST", "/persona/memories/core:default/pin", {}, 409),
        ("DELETE", "/persona/memories/core:default", {}, 409),
        ("PATCH", f"/persona/memories/{mid}", {"json": {"content": ""}}, 422),
        ("PATCH", f"/persona/memories/{mid}", {"json": {"content": " \n\t "}}, 422),
        ("PATCH", f"/persona/memories/{mid}", {"json": {"content": too_long}}, 422),
        ("PATCH", f"/persona/memories/{mid}", {"json": {"content": "a\x00b"}}, 422),
        ("PATCH", f"/persona/memories/{mid}", {"json": {"content": "a\x1b[31mb"}}, 422),
        ("PATCH", f"/persona/memories/{mid}", {"json": {"content": "ok", "reason": "\x07"}}, 422),
        ("PATCH", f"/persona/memories/{mid}", {"json": {"content": 5}}, 422),
        ("PATCH", f"/persona/memories/{mid}", {"json": {"content": "ok", "extra": 1}}, 422),
        ("PATCH", "/persona/memories/bad id", {"json": {"content": "ok"}}, 422),
        ("DELETE", f"/persona/memories/{mid}", {"params": {"reason": "a\x01"}}, 422),
    ]


def test_refused_changes_write_nothing(client: TestClient) -> None:
    mid = exchange_of(client, chat_turn(client, "A memory to keep."))["memory_id"]
    before = event_count(client)
    for method, url, kwargs, status in _refusals(mid):
        answer = client.request(method, url, **kwargs)
        assert answer.status_code == status, (method, url, kwargs, answer.text)
        assert "error" in answer.json()
    assert event_count(client) == before
    # The error names the control character and where it is.
    control = client.patch(f"/persona/memories/{mid}", json={"content": "a\x00b"}).json()
    assert "U+0000 at position 1" in control["error"]


def test_a_deleted_memory_cannot_be_edited_or_pinned(client: TestClient) -> None:
    mid = exchange_of(client, chat_turn(client, "Soon forgotten."))["memory_id"]
    client.delete(f"/persona/memories/{mid}")
    before = event_count(client)
    assert client.patch(f"/persona/memories/{mid}", json={"content": "x"}).status_code == 409
    assert client.post(f"/persona/memories/{mid}/pin").status_code == 409
    assert client.post(f"/persona/memories/{mid}/unpin").status_code == 409
    assert event_count(client) == before


# ---- the page ------------------------------------------------------------------------------------


def test_the_page_lists_memories_escaped_with_tiers_and_their_turns(client: TestClient) -> None:
    turn = chat_turn(client, XSS)
    memory = exchange_of(client, turn)

    page = client.get("/memory")

    assert page.status_code == 200
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert f'id="m-{memory["memory_id"]}"' in page.text
    assert f'href="/chats/{turn["session_id"]}#turn-{turn["meta"]["trace_id"]}"' in page.text
    assert f'href="/persona/traces/{turn["meta"]["trace_id"]}"' in page.text
    assert '<span class="tier tier-L3"' in page.text  # the core memory
    assert "<script" not in page.text  # the page works with no script at all
    assert "style=" not in page.text  # CSP: no inline style
    assert "Content-Security-Policy".lower() in page.headers

    only_l3 = client.get("/memory", params={"tier": "L3"}).text
    assert 'data-memory-id="core:default"' in only_l3
    assert memory["memory_id"] not in only_l3
    searched = client.get("/memory", params={"q": "alert"}).text
    assert memory["memory_id"] in searched and "core:default" not in searched
    assert client.get("/memory", params={"tier": "L9"}).status_code == 422
    assert client.get("/memory", params={"persona_id": "nobody"}).status_code == 404


def test_the_pages_forms_edit_pin_unpin_and_delete(
    client: TestClient, backend: ScriptedBackend
) -> None:
    mid = exchange_of(client, chat_turn(client, "I grow tomatoes on the balcony."))["memory_id"]
    back = "tier=L1&q=tomatoes&next=//evil.example"
    form = {"back": back}

    def post(action: str, data: dict[str, str]) -> str:
        answer = client.post(f"/memory/{mid}/{action}", data=data, follow_redirects=False)
        assert answer.status_code == 303, answer.text
        location: str = answer.headers["location"]
        return location

    location = post("edit", {**form, "content": "The user grows\r\ntomatoes.", "reason": "tidy"})
    # Back to the same filters (nothing else), at the memory.
    assert location == f"/memory?tier=L1&q=tomatoes#m-{mid}"
    assert urlsplit(location).netloc == ""
    got = client.get(f"/persona/memories/{mid}").json()
    assert got["content"] == "The user grows\ntomatoes." and got["version"] == 2
    page = client.get(location).text
    assert "Save as v3" in page and "edited · v2" in page

    post("pin", form)
    assert client.get(f"/persona/memories/{mid}").json()["pinned"] is True
    assert "Unpin" in client.get("/memory").text
    chat_turn(client, "Hello again.")
    assert "tomatoes" in identity(backend)
    post("unpin", form)
    assert client.get(f"/persona/memories/{mid}").json()["pinned"] is False

    post("delete", {**form, "reason": "done"})
    assert client.get(f"/persona/memories/{mid}").json()["tombstone"] is True
    assert mid not in client.get("/memory").text
    shown = client.get("/memory", params={"include_deleted": "1"}).text
    entry = re.search(
        rf'<li class="memory-entry deleted" id="m-{re.escape(mid)}".*?</li>', shown, re.S
    )
    assert entry is not None and "<form" not in entry.group()  # nothing left to change


def test_the_pages_forms_refuse_without_writing(client: TestClient) -> None:
    mid = exchange_of(client, chat_turn(client, "Kept as it is."))["memory_id"]
    before = event_count(client)
    refused = [
        (f"/memory/{mid}/edit", {"content": "   "}, 422),
        (f"/memory/{mid}/edit", {"content": "a\x00b"}, 422),
        (f"/memory/{mid}/edit", {"content": "x" * (MAX_CONTENT_CHARS + 1)}, 422),
        ("/memory/core:default/delete", {}, 409),
        ("/memory/ep:unknown/pin", {}, 404),
        (f"/memory/{mid}/explode", {}, 404),
        ("/memory/bad%20id/pin", {}, 422),
    ]
    for url, data, status in refused:
        answer = client.post(url, data=data, follow_redirects=False)
        assert answer.status_code == status, (url, answer.text)
        assert "text/html" in answer.headers["content-type"]
    # Another site's page may not change a memory (the cross-site guard, before any write).
    evil = client.post(f"/memory/{mid}/delete", data={}, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403
    assert (
        client.delete(
            f"/persona/memories/{mid}", headers={"Sec-Fetch-Site": "cross-site"}
        ).status_code
        == 403
    )
    assert event_count(client) == before


def test_the_page_pages_through_many_memories(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("persona.web.memory.PAGE_SIZE", 2)
    for n in range(3):
        exchange_of(client, chat_turn(client, f"Entry {n} of the long diary."))
    total = client.get("/persona/memories").json()["total"]
    assert total >= 4  # three exchanges and the core: two pages at least
    seen: list[str] = []
    url: str | None = "/memory?tier="
    while url is not None:
        page = client.get(url).text
        seen += re.findall(r'data-memory-id="([^"]+)"', page)
        older = re.search(r'<a href="([^"]+)">older →</a>', page)
        url = html.unescape(older.group(1)) if older else None
    everything = client.get("/persona/memories").json()["items"]
    assert seen == [m["memory_id"] for m in everything] and len(seen) == total
    assert "← newer" in page and "← newer" not in client.get("/memory").text


def test_a_wrong_method_names_every_method_of_the_memory(client: TestClient) -> None:
    for method in ("OPTIONS", "PUT", "POST"):
        answer = client.request(method, "/persona/memories/ep:any")
        assert answer.status_code == 405
        assert {m.strip() for m in answer.headers["allow"].split(",")} >= {"GET", "PATCH", "DELETE"}


def test_the_chat_page_links_to_the_memory_page(client: TestClient) -> None:
    page = client.get("/chats/chat-1").text
    assert '<a class="memory-link" href="/memory?persona_id=default"' in page
