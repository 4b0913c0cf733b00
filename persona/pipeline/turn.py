"""One turn's own life: begin, the stages, the reply, then complete or fail.

Only this module (and recovery) appends events for a turn; stages get a read-only view.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from persona.clock import parse_iso
from persona.controls import strip_controls
from persona.errors import PersonaNotFound, TurnFailed, TurnStopped
from persona.events import (
    ChatStarted,
    ChatState,
    EventPayload,
    Generation,
    IdentityState,
    TurnCompleted,
    TurnStarted,
)
from persona.events import TurnFailed as TurnFailedEvent
from persona.events.decisions import BeliefRevised
from persona.events.tree import TurnStopped as TurnStoppedEvent
from persona.llm.base import LLMError
from persona.pipeline.context import (
    PostStage,
    Stage,
    StageEnv,
    StageOutput,
    TurnContext,
    TurnRequest,
)
from persona.pipeline.meta import Meta, build_meta
from persona.pipeline.reply_check import reply_options
from persona.pipeline.revision import revise
from persona.pipeline.speaker import SpeakerStage
from persona.storage import queries
from persona.storage.eventlog import Event, NewEvent
from persona.storage.store import Store, WriteTx

log = logging.getLogger(__name__)

# A delta callback: the runner broadcasts each streamed chunk.
OnDelta = Callable[[str], None]


def chat_stream(chat_id: str) -> str:
    """The stream a chat's events go on."""
    return f"chat:{chat_id}"


def persona_stream(persona_id: str) -> str:
    """The stream persona-scoped events go on (several chats write it)."""
    return f"persona:{persona_id}"


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


@dataclass(frozen=True)
class TurnResult:
    """A completed turn: the reply and its meta."""

    reply: str
    meta: Meta
    session_id: str
    turn_id: str
    trace_id: str


@dataclass(frozen=True)
class Identity:
    """Who runs turns: recorded on every turn.started."""

    backend: str
    model: str
    config_hash: str
    engine_version: str
    build_sha: str


class _WriterView:
    """Persona-scoped reads on the writer's own transaction (post-reply stages)."""

    def __init__(self, tx: WriteTx):
        self._tx = tx

    def edge_weight(self, src: str, rel: str, dst: str) -> float | None:
        return self._tx.read(queries.edge_weight, src, rel, dst)

    def current_edges(
        self, persona_id: str, src: str, rels: Sequence[str]
    ) -> list[queries.EdgeRow]:
        return self._tx.read(queries.current_edges, persona_id, src, rels)

    def identity_state(self, persona_id: str) -> IdentityState:
        return self._tx.read(queries.identity_state, persona_id)


def inputs_hash(
    message: str,
    parent_state: ChatState,
    persona: queries.PersonaRow,
    config_hash: str,
    gen: Generation,
    identity: IdentityState | None = None,
) -> str:
    """sha256 of the canonical JSON of a turn's exact inputs (recorded on turn.started).

    The same inputs give the same hash; `persona verify --replay` recomputes it to show
    it replays a turn from the very inputs it ran with.
    """
    canonical = json.dumps(
        {
            "message": message,
            "parent_state": parent_state.model_dump(mode="json"),
            "persona": dataclasses.asdict(persona),
            "config_hash": config_hash,
            "gen": gen.model_dump(mode="json"),
            # The persona's control state (operator overrides, traits, values) as the
            # turn began: SILENT or a forced mode changes its decisions.
            "identity": identity.model_dump(mode="json") if identity is not None else None,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class BeginReads:
    """What a turn reads before it begins, in one snapshot."""

    persona: queries.PersonaRow | None
    chat_exists: bool
    head: tuple[str, int] | None  # the parent-to-be and its depth
    state: ChatState | None  # the parent's snapshot
    path: list[queries.PathTurn]  # the active path up to the parent, oldest first
    identity: IdentityState  # the persona's control state (traits, values, operator)


def _begin_reads(conn: sqlite3.Connection, request: TurnRequest, window: int) -> BeginReads:
    head = queries.head_turn(conn, request.chat_id)
    head_id = head[0] if head else None
    return BeginReads(
        persona=queries.get_persona(conn, request.persona_id),
        chat_exists=queries.get_chat(conn, request.chat_id) is not None,
        head=head,
        state=queries.path_state(conn, head_id),
        path=queries.active_path(conn, head_id, window),
        identity=queries.identity_state(conn, request.persona_id),
    )


class Turn:
    """Runs one turn end to end; every decision becomes an event under its trace_id."""

    def __init__(
        self,
        store: Store,
        env: StageEnv,
        stages: Sequence[Stage],
        speaker: SpeakerStage,
        post_stages: Sequence[PostStage],
        identity: Identity,
        request: TurnRequest,
        trace_id: str,
        turn_id: str,
    ):
        self.store = store
        self.env = env
        self.stages = stages
        self.speaker = speaker
        self.post_stages = post_stages
        self.identity = identity
        self.request = request
        self.trace_id = trace_id
        self.turn_id = turn_id
        self.events: list[Event] = []
        self._started: Event | None = None
        # The stage a failure is blamed on (recorded on turn.failed).
        self.failing_stage = "runner"
        # Time spent appending before the completion (an event cannot time its own append).
        self.writes_ms = 0.0
        # The write of a whole reply, once it began (shutdown lets it finish).
        self._recording: asyncio.Future[None] | None = None
        # Set by the runner before it cancels the turn for a user's stop.
        self.stop_requested = False

    def _event(self, payload: EventPayload, actor: str, **envelope: Any) -> NewEvent:
        return NewEvent(
            payload=payload,
            stream_id=chat_stream(self.request.chat_id),
            actor=actor,
            trace_id=self.trace_id,
            parent_event_id=self._started.event_id if self._started else None,
            **envelope,
        )

    async def begin(self) -> TurnContext:
        """Read the parent turn and its state, record turn.started (and chat.started)."""
        t0 = time.perf_counter()
        request, settings = self.request, self.env.settings
        window = max(settings.gating.history_turns, settings.metacognition.novelty_window)
        reads = await self.store.read(_begin_reads, request, window)
        persona, head, state, path = reads.persona, reads.head, reads.state, reads.path
        if persona is None:  # resolve() checked it; personas are never removed
            raise PersonaNotFound(f"unknown persona_id {request.persona_id!r}")
        parent_id, depth = (head[0], head[1] + 1) if head else (None, 0)
        history = path[-settings.gating.history_turns :] if settings.gating.history_turns else []
        ctx = TurnContext(
            request=request,
            trace_id=self.trace_id,
            turn_id=self.turn_id,
            parent_turn_id=parent_id,
            depth=depth,
            now=self.store.clock.now(),
            persona=persona,
            parent_state=state or ChatState(turns=len(path)),
            history=history,
            recent_user_messages=[p.user_message for p in path],
            identity=reads.identity,
        )
        new = []
        if not reads.chat_exists:
            new.append(
                self._event(
                    ChatStarted(
                        chat_id=request.chat_id,
                        persona_id=request.persona_id,
                        user_id=request.user_id,
                        title=" ".join(request.message.split())[:60] or "chat",
                    ),
                    "runner",
                )
            )
        # What the request asked for, its stop sequences included (the dialogue state
        # may lower temperature and max_tokens: metacognition records what was sent).
        gen = Generation(**reply_options(request.gen, persona.name).model_dump(mode="json"))
        started = TurnStarted(
            turn_id=self.turn_id,
            chat_id=request.chat_id,
            persona_id=request.persona_id,
            user_id=request.user_id,
            parent_turn_id=parent_id,
            depth=depth,
            message=request.message,
            reward_signal=request.reward_signal,
            gen=gen,
            gen_explicit=sorted(request.gen_explicit),
            metadata=request.metadata,
            backend=self.identity.backend,
            model=self.identity.model,
            config_hash=self.identity.config_hash,
            engine_version=self.identity.engine_version,
            build_sha=self.identity.build_sha,
            inputs_hash=inputs_hash(
                request.message,
                ctx.parent_state,
                persona,
                self.identity.config_hash,
                gen,
                reads.identity,
            ),
        )
        new.append(self._event(started, "runner", latency_ms=_ms(t0)))
        t_write = time.perf_counter()
        stored = await self.store.append(new)
        self.writes_ms += _ms(t_write)
        self._started = stored[-1]
        self.events.append(stored[-1])
        # The turn's time is the one its turn.started records: a replay reads it back, so
        # time-dependent decisions (memory recency) replay exactly.
        ctx.now = parse_iso(stored[-1].chat_time or stored[-1].wall_time)
        return ctx

    async def run_stages(self, ctx: TurnContext) -> None:
        """Each pre-reply stage decides in order; each decision is appended as it lands.

        Then belief revision (revision.py): while the turn's confidence is low, memory,
        gating and metacognition run again, widened, at most two rounds, each closed by a
        belief.revised event; the last round's decisions are the turn's.
        """
        for stage in self.stages:
            await self._run_stage(stage, ctx)

        async def closed(round_: BeliefRevised) -> None:
            t_write = time.perf_counter()
            self.events += await self.store.append([self._event(round_, "revision")])
            self.writes_ms += _ms(t_write)

        await revise(ctx, self.env, self.stages, lambda s: self._run_stage(s, ctx), closed)

    async def _run_stage(self, stage: Stage, ctx: TurnContext) -> None:
        """Run one stage, keep its decision and append its events."""
        self.failing_stage = stage.name
        t0 = time.perf_counter()
        out: StageOutput = await stage.run(ctx, self.env)
        ctx.record(out.decision)
        call = out.call
        events = [
            self._event(
                out.decision,
                stage.name,
                latency_ms=_ms(t0),
                model=call.model if call else None,
                tokens_in=call.tokens_in if call else None,
                tokens_out=call.tokens_out if call else None,
            )
        ]
        events += [self._event(extra, stage.name) for extra in out.extra]
        t_write = time.perf_counter()
        self.events += await self.store.append(events)
        self.writes_ms += _ms(t_write)

    async def speak(self, ctx: TurnContext, on_delta: OnDelta) -> NewEvent:
        """Stream the reply and check it; return its reply.completed, not yet recorded.

        LLMError unless the backend finished normally and the checked reply has text.
        """
        self.failing_stage = self.speaker.name
        t0 = time.perf_counter()
        prompt, response = self.speaker.start(ctx, self.env)
        async for chunk in response:
            ctx.reply += chunk
            on_delta(chunk)
        ctx.reply = response.full_text
        # Stored and shown once done: the reply cleaned of loops, labels and a cut tail.
        checked = self.speaker.check(ctx, response)
        if not checked.text.strip():
            flags = ", ".join(checked.flags) or "blank"
            raise LLMError(f"the model's reply was empty after the reply check ({flags})")
        ctx.reply = checked.text
        speaker_ms = _ms(t0)
        decision = self.speaker.decision(ctx, prompt, response, checked)
        # How the backend ended it (stop or length: LLMResponse refuses any other).
        decision = decision.model_copy(update={"finish_reason": response.usage.finish_reason})
        ctx.record(decision)  # post-reply stages read the reply's flags
        return self._event(
            decision,
            self.speaker.name,
            model=self.identity.model,
            tokens_in=response.usage.prompt_tokens,
            tokens_out=response.usage.completion_tokens,
            latency_ms=speaker_ms,
        )

    async def record(self, ctx: TurnContext, reply: NewEvent) -> None:
        """Record the reply with the post-reply work and turn.completed, atomically."""
        self.failing_stage = "post"
        self.events += await self.store.transact(lambda tx: self._complete(tx, ctx, reply))

    def _complete(self, tx: WriteTx, ctx: TurnContext, reply: NewEvent) -> list[Event]:
        # Runs in the writer thread: persona-scoped state is read and decided here, in the
        # same transaction that records it, so concurrent chats never lose an update.
        t0 = time.perf_counter()
        view = _WriterView(tx)
        pstream = persona_stream(ctx.request.persona_id)
        events = [reply]
        for stage in self.post_stages:
            for emit in stage.decide(ctx, self.env, view):
                event = self._event(emit.payload, stage.name)
                if emit.scope == "persona":
                    event = replace(event, stream_id=pstream)
                events.append(event)
        done = TurnCompleted(
            turn_id=ctx.turn_id,
            chat_id=ctx.request.chat_id,
            persona_id=ctx.request.persona_id,
            reply=ctx.reply,
            writes_ms=round(self.writes_ms, 3),
        )
        events.append(self._event(done, "runner", latency_ms=_ms(t0)))
        return tx.append(events, {pstream: tx.stream_version(pstream)})

    def result(self) -> TurnResult:
        """The completed turn's reply and meta (built from its events)."""
        meta = build_meta(self.events)
        return TurnResult(
            meta_reply(self.events), meta, self.request.chat_id, self.turn_id, self.trace_id
        )

    async def fail(self, stage: str, error: str, partial: str) -> None:
        """Record the turn as failed, what streamed kept as a failed attempt (never an answer)."""
        await self.store.append(
            [
                self._event(
                    TurnFailedEvent(
                        turn_id=self.turn_id,
                        chat_id=self.request.chat_id,
                        persona_id=self.request.persona_id,
                        stage=stage,
                        # Upstream text: stored and shown, so without control characters
                        # (the partial text as the user saw it streaming).
                        error=strip_controls(error),
                        partial_reply_chars=len(partial),
                        partial_reply=strip_controls(partial) or None,
                    ),
                    "runner",
                )
            ]
        )

    async def stopped(self, stage: str, partial: str) -> None:
        """Record the turn as stopped by the user, with what streamed (truncated)."""
        await self.store.append(
            [
                self._event(
                    TurnStoppedEvent(
                        turn_id=self.turn_id,
                        chat_id=self.request.chat_id,
                        persona_id=self.request.persona_id,
                        stage=stage,
                        partial_reply=strip_controls(partial),
                    ),
                    "user",
                )
            ]
        )

    async def execute(
        self, on_start: Callable[[TurnContext], None], on_delta: OnDelta
    ) -> TurnResult:
        """Begin, run every stage, speak, complete; record a failure as turn.failed.

        The stages and the reply share one deadline, `llm.turn_timeout_s`; once the reply
        is whole, recording it is not cut short. A cancellation from outside (shutdown)
        is recorded as such and propagates.
        """
        ctx = await self.begin()
        on_start(ctx)
        limit = self.env.settings.llm.turn_timeout_s
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                await self.run_stages(ctx)
                reply = await self.speak(ctx, on_delta)
            # A whole reply is recorded whatever the time, and even when shutdown cancels
            # the turn meanwhile: the write finishes and the turn stays completed.
            self._recording = asyncio.ensure_future(self.record(ctx, reply))
            await asyncio.shield(self._recording)
            return self.result()
        except LLMError as exc:
            await self.fail(self.failing_stage, f"LLM failed: {exc}", ctx.reply)
            raise TurnFailed(f"LLM failed: {exc}", self.trace_id) from exc
        except TimeoutError as exc:
            if not deadline.expired():  # not ours: some stage's own timeout leaked out
                await self._crashed(ctx, exc)
            error = f"turn deadline ({limit:g}s) passed during {self.failing_stage}"
            await self.fail(self.failing_stage, error, ctx.reply)
            raise TurnFailed(error, self.trace_id) from exc
        except asyncio.CancelledError:
            recording = self._recording
            if recording is not None:
                await asyncio.wait([recording])
                if not recording.cancelled() and recording.exception() is None:
                    # The reply landed: the turn is complete, not failed, and its caller
                    # gets it. The cancellation had nothing left to stop.
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                    return self.result()
            if self.stop_requested:  # the user's stop, not a shutdown
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                partial = strip_controls(ctx.reply)
                await asyncio.shield(self.stopped(self.failing_stage, partial))
                raise TurnStopped(self.trace_id, self.turn_id, partial) from None
            await asyncio.shield(
                self.fail(self.failing_stage, "cancelled: server shutting down", ctx.reply)
            )
            raise
        except Exception as exc:
            await self._crashed(ctx, exc)

    async def _crashed(self, ctx: TurnContext, exc: Exception) -> NoReturn:
        log.exception("stage %s failed in turn %s", self.failing_stage, self.trace_id)
        stage = self.failing_stage
        await self.fail(stage, f"internal error in {stage}", ctx.reply)
        raise TurnFailed(f"internal error in {stage}", self.trace_id) from exc


def meta_reply(events: Sequence[Event]) -> str:
    """The reply text of a completed turn's events."""
    for e in events:
        if isinstance(e.payload, TurnCompleted):
            return e.payload.reply
    raise ValueError("the turn has no turn.completed event")
