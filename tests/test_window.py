"""The prompt never overflows the context window, and the drawer's count is the prompt's."""

from __future__ import annotations

import random

from fastapi.testclient import TestClient
from helpers import run_turn

from persona.engine import Engine
from persona.llm.scripted import ScriptedBackend
from persona.storage import queries
from persona.storage.eventlog import count_events
from persona.web.app import create_app

WORDS = "harbour lantern orchard granite willow compass ember meadow saffron tide".split()


def _long_message(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


async def test_forty_long_turns_never_exceed_the_window(settings, clock):
    backend = ScriptedBackend(context_window=1024)  # real tokenizer (offline cl100k)
    engine = Engine(settings, backend=backend, clock=clock)
    await engine.start()
    rng = random.Random(5)
    try:
        for i in range(40):
            backend.enqueue(_long_message(rng, rng.randint(20, 90)))
            meta = (
                await run_turn(engine, _long_message(rng, rng.randint(30, 200)), max_tokens=120)
            )["meta"]
            budget = meta["token_budget"]
            sent = backend.count_prompt(backend.calls[-1])
            # The drawer's count is the prompt's, and prompt + reply fit the window.
            assert budget["used"] == sent == meta["llm"]["prompt_tokens"], i
            assert budget["used"] + budget["reply"] <= budget["context"] == 1024, i
        # Late in the chat, history no longer all fits: gating left some out.
        reasons = {c["reason"] for c in meta["decision_candidates"]}
        assert "over budget" in reasons and "fits" in reasons
    finally:
        await engine.stop()


def test_a_message_too_long_for_the_window_is_refused_up_front(settings, clock):
    backend = ScriptedBackend(context_window=512)
    engine = Engine(settings, backend=backend, clock=clock)
    with TestClient(create_app(engine=engine), base_url="http://localhost") as client:
        before = engine.store.sync_read(count_events)
        long = "lighthouse keeper " * 400
        r = client.post("/persona/chat", json={"message": long, "gen": {"max_tokens": 100}})
        assert r.status_code == 413
        body = r.json()
        assert body["message_tokens"] > body["limit_tokens"] > 0
        assert f"at most {body['limit_tokens']} fit" in body["error"] and "512" in body["error"]
        assert engine.store.sync_read(count_events) == before  # nothing written
        assert backend.calls == []
        # The streaming endpoint refuses it the same way, before any stream starts.
        r = client.post("/persona/chat/stream", json={"message": long})
        assert r.status_code == 413
        # The page's form says so under the message box.
        r = client.post(
            "/chats/chat-long/messages",
            data={"message": long},
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 413 and "fit this model" in r.text
        assert engine.store.sync_read(queries.get_chat, "chat-long") is None

        # At the limit it is accepted (and its prompt fits); one token more is refused.
        limit = body["limit_tokens"]
        exact = "a" + " a" * (limit - 1)
        assert backend.count_tokens(exact) == limit
        r = client.post("/persona/chat", json={"message": exact + " a", "gen": {"max_tokens": 100}})
        assert r.status_code == 413 and r.json()["message_tokens"] == limit + 1
        r = client.post("/persona/chat", json={"message": exact, "gen": {"max_tokens": 100}})
        assert r.status_code == 200
        assert r.json()["meta"]["token_budget"]["used"] + 100 <= 512


class FramedBackend(ScriptedBackend):
    """A chat template whose per-message framing grows with the conversation.

    Gating measures an exchange on its own (no extra framing), so on a long prompt its
    estimate comes out short: only the speaker's exact count can see the overflow.
    """

    def count_prompt(self, messages):  # type: ignore[no-untyped-def]
        return super().count_prompt(messages) + 40 * max(0, len(messages) - 3)


async def test_the_speaker_cuts_the_lowest_priority_parts_when_the_estimate_is_short(
    settings, clock
):
    backend = FramedBackend(context_window=700)
    engine = Engine(settings, backend=backend, clock=clock)
    await engine.start()
    try:
        for i in range(6):
            await run_turn(engine, f"part {i}: the ship sailed past the lighthouse", max_tokens=100)
        result = await run_turn(engine, "what about the ship?", max_tokens=100)
        meta = result["meta"]
        events = await engine.store.read(queries.trace_events, result["trace_id"])
    finally:
        await engine.stop()
    reply = next(e.payload for e in events if e.type == "reply.completed")
    selected = [c["id"] for c in meta["decision_candidates"] if c["selected"]]
    # Gating's plan did not fit; the speaker cut from the lowest priority up until it did.
    assert reply.trimmed and set(reply.trimmed) <= set(selected)
    priorities = {c["id"]: c["priority"] for c in meta["decision_candidates"]}
    kept = [i for i in selected if i not in reply.trimmed]
    assert max(priorities[i] for i in reply.trimmed) <= min(priorities[i] for i in kept)
    sent = backend.calls[-1]
    assert meta["token_budget"]["used"] == backend.count_prompt(sent)
    assert meta["token_budget"]["used"] + 100 <= 700
