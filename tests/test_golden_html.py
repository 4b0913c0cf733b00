"""Golden HTML: the chat page and its stream's fragments, rendered from fixed data.

The chat is the scenario's conversation run with fixed ids, then a message full of markup
and quotes, a failed turn, and a turn still waiting for its reply. What is wall time or
build identity in a meta (timings, build sha, config hash) is replaced in the input
with fixed values; nothing is rewritten in the output.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import ReplyGate, run_turn_as
from scenario import (
    CONVERSATION,
    HOURS_BETWEEN_TURNS,
    MAX_TOKENS,
    PERSONA_ID,
    open_scenario,
    trace_of,
)

from persona.engine import Engine
from persona.llm.scripted import FailAfter
from persona.pipeline.broadcast import TurnEvent
from persona.pipeline.meta import build_meta
from persona.storage.eventlog import Event
from persona.storage.queries import trace_events
from persona.web.pages import CHAT, chat_view, render_event
from persona.web.templating import templates

CHAT_ID = "chat-html"
MARKUP = """<script>alert("x")</script> & 'single' "double" <img src=x onerror=alert(1)>"""
MARKUP_REPLY = 'I only show text: <b>bold</b> & "quotes" stay literal.'


def fixed_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The meta with its wall timings and build identity set to fixed values."""
    fixed = dict(meta)
    fixed["timing_ms"] = {key: 1.25 * (n + 1) for n, key in enumerate(meta["timing_ms"])}
    fixed["llm"] = {**meta["llm"], "first_token_ms": 12.5, "generation_ms": 40.0}
    fixed["build_sha"], fixed["config_hash"] = "0123456789ab", "c" * 64
    fixed["meta_v1"] = {
        **meta["meta_v1"],
        **{k: fixed[k] for k in ("timing_ms", "build_sha", "config_hash")},
    }
    return fixed


def render_page(view: dict[str, Any]) -> str:
    return templates.env.get_template(CHAT).render(**view)


@dataclass(frozen=True)
class Chat:
    """The rendered chat's engine, its head turn and the conversation's last meta."""

    engine: Engine
    head_trace: str
    conversation_meta: dict[str, Any]


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[Chat]:
    """The conversation, a markup turn, a failed turn, and one still waiting for its reply."""
    async with open_scenario(tmp_path) as s:
        engine, backend = s.engine, s.backend
        n = 0

        async def turn(message: str, reward: float = 0.0) -> list[Event]:
            nonlocal n
            n += 1
            s.clock.advance(timedelta(hours=HOURS_BETWEEN_TURNS))
            return await run_turn_as(
                engine,
                message,
                trace_id=trace_of(n),
                turn_id=f"turn-{n}",
                chat_id=CHAT_ID,
                reward=reward,
                max_tokens=MAX_TOKENS,
            )

        for exchange in CONVERSATION:
            backend.enqueue(exchange.reply)
            await turn(exchange.message, exchange.reward)
        last = build_meta(await engine.store.read(trace_events, trace_of(n)))
        backend.enqueue(MARKUP_REPLY)
        await turn(MARKUP, 0.5)
        head = trace_of(n)
        backend.enqueue(FailAfter("half an answer", "backend <b>exploded</b>"))
        assert (await turn("and then?"))[-1].type == "turn.failed"
        # The last turn is in flight while the tests render: its reply waits at the gate.
        gate = ReplyGate(backend)
        backend.enqueue("Still here.")
        pending = asyncio.create_task(turn("are you still there?"))
        try:
            assert await asyncio.to_thread(gate.reached.wait, 10)
            yield Chat(engine, head, last.model_dump(mode="json"))
        finally:
            gate.open()
            held = await pending
        assert held[-1].type == "turn.completed"


async def test_chat_page_matches_golden(chat: Chat, golden: Any) -> None:
    engine = chat.engine
    view = await engine.store.read(chat_view, CHAT_ID, None, engine.default_persona_id)
    assert view is not None
    assert view["meta"]["trace_id"] == chat.head_trace  # the drawer: the last completed turn
    assert [t["status"] for t in view["turns"][-3:]] == ["completed", "failed", "started"]
    view["meta"] = fixed_meta(view["meta"])
    golden("html/chat_page.html", render_page(view))


async def test_a_new_chat_page_matches_golden(chat: Chat, golden: Any) -> None:
    view = await chat.engine.store.read(chat_view, "chat-fresh", PERSONA_ID, PERSONA_ID)
    assert view is not None and view["meta"] is None
    golden("html/chat_page_new.html", render_page(view))


STREAM_TRACE = trace_of(0xABC)
STREAM_EVENTS: dict[str, dict[str, Any]] = {
    "start": {
        "trace_id": STREAM_TRACE,
        "session_id": CHAT_ID,
        "turn_id": "turn-stream",
        "message": MARKUP,
    },
    "delta": {"text": '<b>Hel</b>lo & "you"\n'},
    "done": {"reply": MARKUP_REPLY},  # the meta: the conversation's last turn's
    "error": {"error": "LLM failed: <b>boom</b>", "trace_id": STREAM_TRACE},
}


@pytest.mark.parametrize("kind", list(STREAM_EVENTS))
async def test_stream_fragments_match_golden(chat: Chat, golden: Any, kind: str) -> None:
    data = dict(STREAM_EVENTS[kind])
    if kind == "done":
        data["meta"] = fixed_meta(chat.conversation_meta)
    html = await render_event(chat.engine, TurnEvent(kind, CHAT_ID, STREAM_TRACE, data))
    golden(f"html/sse_{kind}.html", html)
