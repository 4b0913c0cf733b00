"""Re-run every completed turn's control-plane stages from its recorded inputs and compare.

`persona verify --replay`: the live log is copied into a scratch database and folded event
by event, so each turn is replayed against the projections exactly as they stood when it
ran (the persona row too, so a persona edited later replays with its fields of the time).
At a turn's `turn.started` the begin reads are taken (parent snapshot, active path,
persona); just before its first decision is folded, perception, memory, gating and
metacognition run again with the recorded model outputs substituted for live calls (the
classifier's logged verdict), and each decision is compared with the logged one, bit for
bit. The live database is only read.

A turn whose stages ran while another chat's turn was being recorded may read a slightly
later state than the replay gives it; such a difference is reported like any other.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from persona.clock import parse_iso
from persona.config import Settings
from persona.events import (
    ChatState,
    EventPayload,
    MemoryRetrieval,
    Metacognition,
    Perception,
    TurnCompleted,
    TurnStarted,
    Workspace,
)
from persona.events.decisions import BeliefRevised, ClassifierInfo
from persona.events.identity import IdentityState
from persona.llm.base import Backend, GenOptions, LLMError
from persona.llm.scripted import ScriptedBackend
from persona.pipeline.context import Stage, StageEnv, TurnContext, TurnRequest
from persona.pipeline.dense import decode
from persona.pipeline.prompts import PromptSet
from persona.pipeline.revision import revise
from persona.pipeline.runner import DEFAULT_STAGES
from persona.pipeline.turn import inputs_hash
from persona.projector import Projector, project
from persona.storage import queries
from persona.storage.db import connect
from persona.storage.eventlog import Event, read_events
from persona.storage.migrations import migrate

T = TypeVar("T")


@dataclass(frozen=True)
class Difference:
    """A replayed decision (or input) that is not the logged one."""

    turn_id: str
    chat_id: str
    stage: str
    field: str
    logged: Any
    replayed: Any

    def render(self) -> str:
        return (
            f"turn {self.turn_id} (chat {self.chat_id}) {self.stage}.{self.field}:"
            f" logged {_short(self.logged)}, replayed {_short(self.replayed)}"
        )


@dataclass
class ReplayReport:
    """How many turns were replayed and every difference found."""

    turns: int = 0
    decisions: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


class RecordedBackend(ScriptedBackend):
    """Answers structured calls with the logged verdicts; counts tokens like the live one.

    `tokens` is the backend the turns ran with (its tokenizer and window, never its model
    calls): gating's budgets must be counted the same way to decide the same.
    """

    def __init__(self, tokens: Backend | None = None):
        super().__init__()
        self._tokens = tokens

    def count_tokens(self, text: str) -> int:
        return self._tokens.count_tokens(text) if self._tokens else super().count_tokens(text)

    def context_window(self) -> int:
        return self._tokens.context_window() if self._tokens else super().context_window()

    def substitute_vectors(self, vectors: Sequence[str | None]) -> None:
        """Queue the logged message embeddings of the next turn, one per memory round."""
        self._vectors = list(vectors)

    async def embed(self, texts: list[str], model: str) -> list[list[float]]:
        """The logged embedding of the message (a round that logged none failed live)."""
        logged = self._vectors.pop(0) if getattr(self, "_vectors", None) else None
        if logged is None:
            raise LLMError("no embedding was logged for this retrieval")
        return [[float(x) for x in decode(logged)]]

    def substitute(self, info: ClassifierInfo | None) -> None:
        """Queue the logged classifier exchange of the next turn (None: none was made)."""
        self.structured_replies.clear()
        if info is None:
            return
        # Failed attempts before the last one answered nothing usable.
        for _ in range(info.attempts - 1):
            self.structured_replies.append("not json (a failed attempt, as logged)")
        if info.ok:
            verdict = {"primary_intent": info.primary_intent, "confidence": info.confidence}
            self.structured_replies.append(json.dumps(verdict))
        else:
            self.structured_replies.append(LLMError("the classifier failed, as logged"))


class _ConnView:
    """Stage reads on the scratch connection, as it stands in the replay."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(self._conn, *args)


@dataclass
class _Pending:
    """A completed turn between its turn.started and its first decision."""

    started: Event
    persona: queries.PersonaRow | None
    state: ChatState
    path: list[queries.PathTurn]
    identity: IdentityState  # the persona's control state as the turn began


def _parent(
    conn: sqlite3.Connection, parent: str | None, window: int
) -> tuple[ChatState, list[queries.PathTurn]]:
    # As the live begin reads them (a parent with no snapshot: a 0.1.0 chat).
    path = queries.active_path(conn, parent, window)
    return queries.path_state(conn, parent) or ChatState(turns=len(path)), path


def _logged_turns(events: Sequence[Event]) -> dict[str, list[Event]]:
    """The events of each completed turn, by trace id."""
    by_trace: dict[str, list[Event]] = {}
    for e in events:
        if e.trace_id:
            by_trace.setdefault(e.trace_id, []).append(e)
    return {
        trace: evs
        for trace, evs in by_trace.items()
        if any(isinstance(e.payload, TurnCompleted) for e in evs)
        and any(isinstance(e.payload, TurnStarted) for e in evs)
    }


def _copy_log(db_path: Path, scratch: sqlite3.Connection) -> None:
    migrate(scratch, rebuild=Projector().rebuild)
    scratch.execute("ATTACH DATABASE ? AS live", (str(db_path),))
    scratch.execute("BEGIN IMMEDIATE")
    scratch.execute("INSERT INTO main.events SELECT * FROM live.events ORDER BY seq")
    scratch.execute("COMMIT")
    scratch.execute("DETACH DATABASE live")


async def replay_decisions(
    db_path: Path,
    settings: Settings,
    tokens: Backend | None = None,
    stages: Sequence[Stage] = DEFAULT_STAGES,
) -> ReplayReport:
    """Replay every completed turn of the log at `db_path`; the live DB is only read."""
    prompts = PromptSet.load()
    config_hash = settings.config_hash(prompts.sources)
    backend = RecordedBackend(tokens)
    report = ReplayReport()
    with tempfile.TemporaryDirectory(prefix="persona-replay-") as tmp:
        scratch = connect(Path(tmp) / "replay.db")
        try:
            _copy_log(db_path, scratch)
            events = list(read_events(scratch))
            turns = _logged_turns(events)
            env = StageEnv(settings, _ConnView(scratch), backend, backend.count_tokens, prompts)
            window = max(settings.gating.history_turns, settings.metacognition.novelty_window)
            pending: dict[str, _Pending] = {}
            scratch.execute("BEGIN IMMEDIATE")
            for event in events:
                trace = event.trace_id or ""
                payload = event.payload
                if trace in turns and isinstance(payload, TurnStarted):
                    parent = payload.parent_turn_id
                    pending[trace] = _Pending(
                        event,
                        queries.get_persona(scratch, payload.persona_id),
                        *_parent(scratch, parent, window),
                        queries.identity_state(scratch, payload.persona_id),
                    )
                elif trace in pending and isinstance(payload, Perception):
                    begun = pending.pop(trace)
                    await _replay_turn(
                        begun, turns[trace], env, backend, config_hash, stages, report
                    )
                project(scratch, event)
            scratch.execute("ROLLBACK")
        finally:
            scratch.close()
    return report


async def _replay_turn(
    begun: _Pending,
    logged: list[Event],
    env: StageEnv,
    backend: RecordedBackend,
    config_hash: str,
    stages: Sequence[Stage],
    report: ReplayReport,
) -> None:
    started = begun.started.payload
    assert isinstance(started, TurnStarted)
    settings = env.settings
    report.turns += 1

    def differ(stage: str, name: str, was: Any, now: Any) -> None:
        report.differences.append(
            Difference(started.turn_id, started.chat_id, stage, name, was, now)
        )

    if begun.persona is None:
        differ("turn", "persona", started.persona_id, None)
        return
    if started.config_hash != config_hash:
        # Not a decision that differs: the replay would run under other settings.
        differ("turn", "config_hash", started.config_hash, config_hash)
        return
    state = begun.state
    replayed_hash = inputs_hash(
        started.message, state, begun.persona, config_hash, started.gen, begun.identity
    )
    if started.inputs_hash and started.inputs_hash != replayed_hash:
        differ("turn", "inputs_hash", started.inputs_hash, replayed_hash)
    history = begun.path[-settings.gating.history_turns :] if settings.gating.history_turns else []
    gen_fields = started.gen.model_dump(mode="json")
    request = TurnRequest(
        message=started.message,
        user_id=started.user_id,
        chat_id=started.chat_id,
        persona_id=started.persona_id,
        reward_signal=started.reward_signal,
        gen=GenOptions(**gen_fields),
        gen_explicit=frozenset(started.gen_explicit),
        metadata=started.metadata,
    )
    ctx = TurnContext(
        request=request,
        trace_id=begun.started.trace_id or "",
        turn_id=started.turn_id,
        parent_turn_id=started.parent_turn_id,
        depth=started.depth,
        now=parse_iso(begun.started.chat_time or begun.started.wall_time),
        persona=begun.persona,
        parent_state=state,
        history=history,
        recent_user_messages=[p.user_message for p in begun.path],
        identity=begun.identity,
    )
    # Every logged decision by kind, in log order: a belief-revision round logs memory,
    # gating and metacognition again, and the n-th replayed one meets the n-th logged one.
    recorded: dict[type[EventPayload], list[EventPayload]] = {}
    for e in logged:
        recorded.setdefault(type(e.payload), []).append(e.payload)
    seen: dict[type[EventPayload], int] = {}

    def check(stage: str, decision: EventPayload) -> None:
        n = seen.get(type(decision), 0)
        seen[type(decision)] = n + 1
        was = recorded.get(type(decision), [])
        report.decisions += 1
        _compare(stage, was[n] if n < len(was) else None, decision, differ)

    perception = next(iter(recorded.get(Perception, [])), None)
    backend.substitute(perception.classifier if isinstance(perception, Perception) else None)
    backend.substitute_vectors(
        [
            m.query_vector
            for m in recorded.get(MemoryRetrieval, [])
            if isinstance(m, MemoryRetrieval)
        ]
    )

    async def run(stage: Stage) -> None:
        out = await stage.run(ctx, env)
        ctx.record(out.decision)
        check(stage.name, out.decision)

    async def closed(round_: BeliefRevised) -> None:
        check("revision", round_)

    for stage in stages:
        await run(stage)
    await revise(ctx, env, stages, run, closed)
    for kind in (BeliefRevised, MemoryRetrieval, Workspace, Metacognition):
        for extra in recorded.get(kind, [])[seen.get(kind, 0) :]:
            differ("revision", extra.event_type, "logged", None)  # a round the replay did not run


def _compare(
    stage: str,
    was: EventPayload | None,
    now: EventPayload,
    differ: Callable[[str, str, Any, Any], None],
) -> None:
    if was is None:
        differ(stage, now.event_type, None, "decided")
        return
    logged = was.model_dump(mode="json")
    replayed = now.model_dump(mode="json")
    for key in sorted(set(logged) | set(replayed)):
        if logged.get(key) != replayed.get(key):
            differ(stage, key, logged.get(key), replayed.get(key))
