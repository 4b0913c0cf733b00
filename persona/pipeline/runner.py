"""The turn runner: server-side turns, serialized per chat, every decision an event."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from persona.config import Settings
from persona.llm.base import Backend, LLMError
from persona.meta import build_meta
from persona.pipeline.broadcast import Broadcaster, TurnEvent
from persona.pipeline.context import Stage, StageEnv, TurnContext, TurnRequest
from persona.pipeline.gating import GatingStage
from persona.pipeline.memory import MemoryStage, episodic_memory
from persona.pipeline.metacognition import MetacognitionStage
from persona.pipeline.perception import PerceptionStage
from persona.pipeline.speaker import SpeakerStage
from persona.storage import queries
from persona.storage.eventlog import Event, NewEvent
from persona.storage.store import Store

log = logging.getLogger(__name__)

# The built-in stages, in order; the speaker always runs last.
DEFAULT_STAGES: tuple[Stage, ...] = (
    PerceptionStage(),
    MemoryStage(),
    GatingStage(),
    MetacognitionStage(),
)

# How fast the persona-user affinity follows reward_signal.
AFFINITY_RATE = 0.2


class PersonaNotFound(LookupError):
    """The request names a persona that does not exist."""


class ChatConflict(ValueError):
    """The session exists but belongs to another persona or user."""


class TurnFailed(RuntimeError):
    """The turn was recorded as failed; `trace_id` finds its events."""

    def __init__(self, message: str, trace_id: str):
        super().__init__(message)
        self.trace_id = trace_id


@dataclass
class TurnHandle:
    """A submitted turn: its ids now, its result when it ends."""

    trace_id: str
    turn_id: str
    chat_id: str
    result: asyncio.Future[dict[str, Any]] = field(repr=False)


def _chat_stream(chat_id: str) -> str:
    return f"chat:{chat_id}"


class TurnRunner:
    """Run turns as tasks independent of any HTTP connection."""

    def __init__(
        self,
        store: Store,
        backend: Backend,
        settings: Settings,
        broadcaster: Broadcaster,
        stages: Sequence[Stage] = DEFAULT_STAGES,
    ):
        self.store = store
        self.backend = backend
        self.settings = settings
        self.broadcaster = broadcaster
        self.stages = tuple(stages)
        self.speaker = SpeakerStage()
        self.config_hash = settings.config_hash()
        self.env = StageEnv(settings, store, backend, backend.count_tokens)
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def resolve(
        self, chat_id: str, persona_id: str | None, user_id: str, default_persona: str
    ) -> str:
        """Check the persona and chat before anything is written; return the persona id."""
        chat = await self.store.read(queries.get_chat, chat_id)
        if chat is not None:
            if persona_id is not None and persona_id != chat["persona_id"]:
                raise ChatConflict(f"session {chat_id!r} belongs to persona {chat['persona_id']!r}")
            persona_id = chat["persona_id"]
        persona_id = persona_id or default_persona
        if await self.store.read(queries.get_persona, persona_id) is None:
            raise PersonaNotFound(f"unknown persona_id {persona_id!r}")
        return persona_id

    def submit(self, request: TurnRequest) -> TurnHandle:
        """Queue a turn on its chat; it runs even if the caller goes away."""
        loop = asyncio.get_running_loop()
        handle = TurnHandle(
            uuid.uuid4().hex, uuid.uuid4().hex, request.chat_id, loop.create_future()
        )
        # Fire-and-forget callers (the HTML form) never read the result: mark it retrieved.
        handle.result.add_done_callback(lambda f: f.cancelled() or f.exception())
        task = loop.create_task(self._run(request, handle), name=f"turn-{handle.trace_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return handle

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait for in-flight turns (shutdown); unfinished ones are failed on next start."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def recover(self) -> int:
        """Record turns left 'started' by a dead process as failed. Returns how many."""
        orphans = await self.store.read(queries.unfinished_turns)
        for turn in orphans:
            await self.store.append(
                [
                    NewEvent(
                        type="turn.failed",
                        stream_id=_chat_stream(turn["chat_id"]),
                        actor="runner",
                        trace_id=turn["trace_id"],
                        payload={
                            "turn_id": turn["turn_id"],
                            "chat_id": turn["chat_id"],
                            "persona_id": turn["persona_id"],
                            "stage": "recovery",
                            "error": "interrupted: the process stopped before the turn ended",
                        },
                    )
                ]
            )
        return len(orphans)

    def _publish(self, handle: TurnHandle, kind: str, data: dict[str, Any]) -> None:
        self.broadcaster.publish(TurnEvent(kind, handle.chat_id, handle.trace_id, data))

    async def _run(self, request: TurnRequest, handle: TurnHandle) -> None:
        lock = self._locks.setdefault(request.chat_id, asyncio.Lock())
        async with lock:
            try:
                result = await self._turn(request, handle)
            except TurnFailed as exc:
                if not handle.result.done():
                    handle.result.set_exception(exc)
                self._publish(handle, "error", {"error": str(exc), "trace_id": handle.trace_id})
            except BaseException as exc:  # never leave the caller waiting
                if not handle.result.done():
                    handle.result.set_exception(TurnFailed("internal error", handle.trace_id))
                self._publish(
                    handle, "error", {"error": "internal error", "trace_id": handle.trace_id}
                )
                if not isinstance(exc, Exception):
                    raise
                log.exception("turn %s crashed", handle.trace_id)
            else:
                handle.result.set_result(result)
                self._publish(handle, "done", {"reply": result["reply"], "meta": result["meta"]})

    def _event(
        self,
        ctx: TurnContext,
        type_: str,
        actor: str,
        payload: dict[str, Any],
        parent: str | None,
        **extra: Any,
    ) -> NewEvent:
        return NewEvent(
            type=type_,
            stream_id=_chat_stream(ctx.request.chat_id),
            actor=actor,
            payload=payload,
            trace_id=ctx.trace_id,
            parent_event_id=parent,
            **extra,
        )

    async def _begin(self, request: TurnRequest, handle: TurnHandle) -> tuple[TurnContext, Event]:
        persona = await self.store.read(queries.get_persona, request.persona_id)
        if persona is None:  # resolve() checked it; personas are never removed
            raise PersonaNotFound(f"unknown persona_id {request.persona_id!r}")
        chat = await self.store.read(queries.get_chat, request.chat_id)
        turn_index = await self.store.read(queries.turn_count, request.chat_id)
        history = await self.store.read(
            queries.recent_history, request.chat_id, self.settings.history_turns
        )
        ctx = TurnContext(
            request=request,
            trace_id=handle.trace_id,
            turn_id=handle.turn_id,
            turn_index=turn_index,
            now=self.store.clock.now(),
            persona=persona,
            history=history,
        )
        events = []
        if chat is None:
            title = " ".join(request.message.split())[:60] or "chat"
            events.append(
                self._event(
                    ctx,
                    "chat.started",
                    "runner",
                    {
                        "chat_id": request.chat_id,
                        "persona_id": request.persona_id,
                        "user_id": request.user_id,
                        "title": title,
                    },
                    None,
                )
            )
        events.append(
            self._event(
                ctx,
                "turn.started",
                "runner",
                {
                    "turn_id": ctx.turn_id,
                    "chat_id": request.chat_id,
                    "persona_id": request.persona_id,
                    "user_id": request.user_id,
                    "turn_index": turn_index,
                    "message": request.message,
                    "reward_signal": request.reward_signal,
                    "gen": request.gen.model_dump(),
                    "backend": self.backend.name,
                    "config_hash": self.config_hash,
                },
                None,
            )
        )
        stored = await self.store.append(events)
        return ctx, stored[-1]

    async def _turn(self, request: TurnRequest, handle: TurnHandle) -> dict[str, Any]:
        t_begin = time.perf_counter()
        ctx, started = await self._begin(request, handle)
        ctx.timing_ms["begin"] = round((time.perf_counter() - t_begin) * 1000, 3)
        self._publish(
            handle,
            "start",
            {
                "trace_id": ctx.trace_id,
                "session_id": request.chat_id,
                "turn_id": ctx.turn_id,
                "message": request.message,
            },
        )
        stage_name = "runner"
        try:
            for stage in self.stages:
                stage_name = stage.name
                t0 = time.perf_counter()
                decision = await stage.run(ctx, self.env)
                ctx.decisions[stage.name] = decision.payload
                events = [
                    self._event(
                        ctx, stage.event_type, stage.name, decision.payload, started.event_id
                    )
                ]
                events += [
                    self._event(ctx, t, stage.name, p, started.event_id)
                    for t, p in decision.extra_events
                ]
                await self.store.append(events)
                ctx.timing_ms[stage.name] = round((time.perf_counter() - t0) * 1000, 3)
            stage_name = self.speaker.name
            t0 = time.perf_counter()
            prompt, response = self.speaker.start(ctx, self.env)
            async for chunk in self.speaker.deltas(response):
                ctx.reply += chunk
                self._publish(handle, "delta", {"text": chunk})
            ctx.reply = response.full_text
            ctx.timing_ms["speaker"] = round((time.perf_counter() - t0) * 1000, 3)
            ctx.llm_timing = {
                "first_token_ms": round((response.first_token_s or 0) * 1000, 2),
                "generation_ms": round((response.total_s or 0) * 1000, 2),
                "prompt_tokens": response.usage.prompt_tokens,
                "completion_tokens": response.usage.completion_tokens,
            }
            meta = await self._complete(ctx, started, prompt, response)
            return {
                "reply": ctx.reply,
                "meta": meta,
                "session_id": request.chat_id,
                "turn_id": ctx.turn_id,
                "trace_id": ctx.trace_id,
            }
        except LLMError as exc:
            await self._fail(ctx, started, stage_name, f"LLM failed: {exc}")
            raise TurnFailed(f"LLM failed: {exc}", ctx.trace_id) from exc
        except asyncio.CancelledError:
            await asyncio.shield(
                self._fail(ctx, started, stage_name, "cancelled: server shutting down")
            )
            raise
        except Exception as exc:
            log.exception("stage %s failed in turn %s", stage_name, ctx.trace_id)
            await self._fail(ctx, started, stage_name, f"internal error in {stage_name}")
            raise TurnFailed(f"internal error in {stage_name}", ctx.trace_id) from exc

    async def _complete(
        self, ctx: TurnContext, started: Event, prompt: Any, response: Any
    ) -> dict[str, Any]:
        """Record the reply and the post-reply work (memory, edge, telemetry) atomically."""
        t0 = time.perf_counter()
        request = ctx.request
        memory = episodic_memory(ctx)
        edge = await self._affinity_edge(ctx)
        metacog = ctx.decisions["metacognition"]
        writes = {"memory_id": memory["memory_id"], "edges": [edge]}
        parent = started.event_id
        reply_event = self._event(
            ctx,
            "reply.completed",
            "speaker",
            self.speaker.decision(ctx, prompt, response),
            parent,
            model=self.backend.model,
            tokens_in=response.usage.prompt_tokens,
            tokens_out=response.usage.completion_tokens,
            latency_ms=round((response.total_s or 0) * 1000, 2),
        )
        post = [
            self._event(ctx, "memory.written", "memory", memory, parent),
            self._event(ctx, "edge.asserted", "memory", edge, parent),
            self._event(
                ctx,
                "telemetry.recorded",
                "metacognition",
                {
                    "chat_id": request.chat_id,
                    "persona_id": request.persona_id,
                    "turn_index": ctx.turn_index,
                    "telemetry": metacog["telemetry"],
                    "dialogue_state": metacog["dialogue_state"],
                },
                parent,
            ),
        ]
        ctx.timing_ms["post"] = round((time.perf_counter() - t0) * 1000, 3)
        overhead = sum(v for k, v in ctx.timing_ms.items() if k != "speaker")
        ctx.timing_ms["overhead_total"] = round(overhead, 3)
        meta = build_meta(
            ctx,
            config_hash=self.config_hash,
            backend=self.backend.name,
            model=self.backend.model,
            writes=writes,
        )
        done = self._event(
            ctx,
            "turn.completed",
            "runner",
            {
                "turn_id": ctx.turn_id,
                "chat_id": request.chat_id,
                "persona_id": request.persona_id,
                "reply": ctx.reply,
                "meta": meta,
            },
            parent,
        )
        await self.store.append([reply_event, *post, done])
        return meta

    async def _affinity_edge(self, ctx: TurnContext) -> dict[str, Any]:
        """The persona→user relationship edge, its weight following reward_signal."""
        src, rel, dst = (
            f"persona:{ctx.request.persona_id}",
            "talks_with",
            f"user:{ctx.request.user_id}",
        )
        current = await self.store.read(queries.get_edge, src, rel, dst)
        weight = current["weight"] if current else 0.0
        weight = (1 - AFFINITY_RATE) * weight + AFFINITY_RATE * ctx.request.reward_signal
        return {
            "persona_id": ctx.request.persona_id,
            "src": src,
            "rel": rel,
            "dst": dst,
            "weight": round(weight, 4),
        }

    async def _fail(self, ctx: TurnContext, started: Event, stage: str, error: str) -> None:
        await self.store.append(
            [
                self._event(
                    ctx,
                    "turn.failed",
                    "runner",
                    {
                        "turn_id": ctx.turn_id,
                        "chat_id": ctx.request.chat_id,
                        "persona_id": ctx.request.persona_id,
                        "stage": stage,
                        "error": error,
                        "partial_reply_chars": len(ctx.reply),
                    },
                    started.event_id,
                )
            ]
        )
