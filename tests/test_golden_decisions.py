"""Golden decisions: each stage's typed decision for fixed messages, byte for byte.

Every case runs through the real engine (scripted backend, fixed ids, a clock that moves
only when told) on the scenario's persona with its seeded memories, then each decision
of the case's turn is compared with tests/golden/decisions/<stage>/<case>.json. A changed
weight, threshold or branch shows up as a diff here; refresh on purpose with
`pytest --update-golden` and review the diff.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from helpers import run_turn_as
from scenario import MAX_TOKENS, Exchange, open_scenario, trace_of

from persona.events import (
    ChatState,
    ChatStateRecorded,
    ClassifierFailed,
    EventPayload,
    MemoryRetrieval,
    Metacognition,
    Perception,
    Workspace,
)
from persona.llm.scripted import as_json
from persona.pipeline.extract import facts
from persona.pipeline.post import DEFAULT_POST_STAGES
from persona.pipeline.state import step
from persona.storage.eventlog import Event

P = TypeVar("P", bound=EventPayload)

CHAT = "chat-golden"
WARM_UP = Exchange(
    "Hi Tess, I love old maps and tide pools.",
    "Hello! Old maps and tide pools are two of my favourite things.",
    0.5,
)
PRE_REPLY = {
    "perception": Perception,
    "memory": MemoryRetrieval,
    "gating": Workspace,
    "metacognition": Metacognition,
}
POST_STAGES = tuple(stage.name for stage in DEFAULT_POST_STAGES)


@dataclass(frozen=True)
class Case:
    """A message, the scripted reply, its reward; most follow one warm-up turn."""

    name: str
    message: str
    reply: str
    reward: float = 0.0
    warm_up: bool = True


CASES = (
    # The chat's first turn: no history, the opening state.
    Case("greeting", "Hello there!", "Hello! How are you today?", warm_up=False),
    Case(
        "self_disclosure",
        "My name is Sam and I live in Lisbon with my sister Ana.",
        "Nice to meet you, Sam. Say hello to Ana.",
        0.5,
    ),
    Case("sad", "I feel so sad and lonely today.", "I am sorry. I am here with you.", 0.2),
    Case(
        "crisis",
        "I want to end my life, there is no reason to live.",
        "I am really glad you told me. Please call someone you trust or a crisis line now.",
    ),
    Case("ooc", "((ooc: can we pause the story for a second?))", "Of course, we can pause."),
    Case("farewell", "Thanks Tess, bye for now!", "Goodbye! Talk soon.", 1.0),
    Case("factual", "What is the capital of Portugal?", "Lisbon.", -0.5),
)


def one(events: Sequence[Event], kind: type[P]) -> P:
    """The payload of the one event of `kind` in a turn."""
    found = [e.payload for e in events if isinstance(e.payload, kind)]
    assert len(found) == 1, f"{len(found)} {kind.event_type} events"
    return found[0]


def assert_no_timing(value: Any, where: str = "") -> None:
    """Wall measurements live on the event envelope; a golden payload must hold none."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert "latency" not in key and not key.endswith("_ms"), f"timing at {where}.{key}"
            assert_no_timing(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_no_timing(item, f"{where}[{i}]")


def check(golden: Any, name: str, value: Any) -> None:
    assert_no_timing(value, name)
    golden(name, value)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_stage_decisions_match_golden(tmp_path, golden, case: Case) -> None:
    async with open_scenario(tmp_path) as s:
        previous = ChatState()
        if case.warm_up:
            s.backend.enqueue(WARM_UP.reply)
            warm = await run_turn_as(
                s.engine,
                WARM_UP.message,
                trace_id=trace_of(1),
                turn_id="turn-warm-up",
                chat_id=CHAT,
                reward=WARM_UP.reward,
                max_tokens=MAX_TOKENS,
            )
            previous = one(warm, ChatStateRecorded).state
            s.clock.advance(timedelta(minutes=30))
        s.backend.enqueue(case.reply)
        events = await run_turn_as(
            s.engine,
            case.message,
            trace_id=trace_of(2),
            turn_id="turn-case",
            chat_id=CHAT,
            reward=case.reward,
            max_tokens=MAX_TOKENS,
        )
        reward_ema = s.engine.settings.metacognition.reward_ema
    assert events[-1].type == "turn.completed"

    for stage, kind in PRE_REPLY.items():
        event = next(e for e in events if isinstance(e.payload, kind))
        assert event.actor == stage and event.latency_ms is not None  # timing: the envelope
        check(golden, f"decisions/{stage}/{case.name}.json", event.payload.model_dump(mode="json"))

    # The post-reply stages' decisions, in order, with the stream each went to.
    post = [
        {"stage": e.actor, "type": e.type, "stream": e.stream_id, "payload": e.payload.to_json()}
        for e in events
        if e.actor in POST_STAGES
    ]
    # Every post stage decides, except: no relationship move on a chat's first turn (its
    # reward has no reply to judge), no in-story memory of an out-of-character message,
    # no access record when the prompt used no memory.
    skipped = {"relationship"} if not case.warm_up else set()
    if one(events, Perception).ooc:
        skipped.add("episodic")
    if not one(events, Workspace).selected_memories:
        skipped.add("memory_access")
    # The fact step writes a fact memory and its edge per first-person fact, none for OOC.
    stated = 0 if one(events, Perception).ooc else len(facts(case.message, "user"))
    expected = []
    for name in POST_STAGES:
        if name == "facts":
            expected += [name] * (2 * stated)
        elif name not in skipped:
            expected.append(name)
    assert [p["stage"] for p in post] == expected
    check(golden, f"decisions/post/{case.name}.json", post)

    # The recorded chat state is exactly the pure step from the parent's state.
    after = step(
        previous,
        one(events, Perception),
        one(events, Workspace),
        one(events, Metacognition),
        case.reward,
        reward_ema,
    )
    assert after == one(events, ChatStateRecorded).state
    transition = {
        "previous": previous.model_dump(mode="json"),
        "reward_signal": case.reward,
        "next": after.model_dump(mode="json"),
    }
    check(golden, f"decisions/state/{case.name}.json", transition)


CLASSIFIER_CASES = {
    # The classifier's label gets confidence/2 of the probability mass.
    "classifier_agrees": (
        "Can you help me plan a trip to Porto?",
        [as_json({"primary_intent": "task_oriented", "confidence": 0.8})],
    ),
    "classifier_overrules": (
        "I am Sam.",
        [as_json({"primary_intent": "creative_roleplay", "confidence": 1.0})],
    ),
    # Unusable twice (the first try and one re-ask): cues only, and the failure recorded.
    "classifier_fails": ("Can you help me plan a trip to Porto?", ["not json", "{}"]),
}


@pytest.mark.parametrize("name", list(CLASSIFIER_CASES))
async def test_perception_with_the_classifier_matches_golden(tmp_path, golden, name: str) -> None:
    message, answers = CLASSIFIER_CASES[name]
    async with open_scenario(tmp_path, perception={"use_classifier": True}) as s:
        s.backend.enqueue_structured(*answers)
        events = await run_turn_as(
            s.engine, message, trace_id=trace_of(3), turn_id="turn-classified", chat_id=CHAT
        )
        assert not s.backend.structured_replies  # every scripted answer was asked for
    decision = one(events, Perception).model_dump(mode="json")
    # The classifier call's model and latency are on the stage's event envelope.
    stage_event = next(e for e in events if isinstance(e.payload, Perception))
    assert stage_event.model == "SmolLM2-135M-Instruct" and stage_event.latency_ms is not None
    failures = [e.payload.to_json() for e in events if isinstance(e.payload, ClassifierFailed)]
    check(golden, f"decisions/perception/{name}.json", {"decision": decision, "failed": failures})
