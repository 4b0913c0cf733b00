"""The turn runner: server-side turns, serialized per chat, independent of any request.

A turn is recorded (turn.queued) before `submit` returns, so every accepted message leaves
a trace. Each chat holds at most `server.chat_queue_limit` turns waiting or running; one
more is refused (QueueFull) before anything is written. At shutdown, running turns get
`server.shutdown_grace_s`, then are cancelled; queued ones never start and are failed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from persona.config import Settings
from persona.controls import strip_controls
from persona.errors import (
    ChatBusy,
    ChatConflict,
    MessageTooLong,
    NothingToStop,
    PersonaNotFound,
    QueueFull,
    ShuttingDown,
    TurnFailed,
    TurnStopped,
)
from persona.events import ChatStarted, TurnEdited, TurnQueued, TurnRegenerated
from persona.llm.base import Backend
from persona.pipeline.broadcast import Broadcaster, TurnEvent
from persona.pipeline.context import PostStage, Stage, StageEnv, TurnContext, TurnRequest
from persona.pipeline.gating import GatingStage, message_room
from persona.pipeline.memory import MemoryStage
from persona.pipeline.metacognition import MetacognitionStage
from persona.pipeline.perception import PerceptionStage
from persona.pipeline.post import DEFAULT_POST_STAGES
from persona.pipeline.prompts import PromptSet
from persona.pipeline.recovery import (
    QUEUE_STAGE,
    SHUTDOWN,
    SHUTDOWN_QUEUED,
    fail_unfinished,
    failure,
    recover,
)
from persona.pipeline.speaker import SpeakerStage
from persona.pipeline.turn import Identity, Turn, TurnResult, chat_stream
from persona.storage import queries
from persona.storage.eventlog import Event, NewEvent
from persona.storage.store import ReadOnly, Store, WriteTx
from persona.version import ENGINE_VERSION, build_sha

log = logging.getLogger(__name__)

# The built-in stages, in order; the speaker always runs after them.
DEFAULT_STAGES: tuple[Stage, ...] = (
    PerceptionStage(),
    MemoryStage(),
    GatingStage(),
    MetacognitionStage(),
)


# Retry-After per turn ahead of a refused one: a floor, honest for the small models this
# runs (a turn of a big model takes longer; the client then waits and retries again).
RETRY_S_PER_TURN = 1
# How long shutdown waits for cancelled turns to record their failure (a hang guard).
CANCEL_WAIT_S = 10.0


@dataclass
class TurnHandle:
    """A submitted turn: its ids now, its result when it ends."""

    trace_id: str
    turn_id: str
    chat_id: str
    result: asyncio.Future[TurnResult] = field(repr=False)


@dataclass
class _Slot:
    """A turn's place in its chat's queue; `go` resolves when the turns ahead have ended."""

    handle: TurnHandle
    go: asyncio.Future[None]
    started: bool = False


def retry_after_s(ahead: int) -> int:
    """Seconds a refused client should wait: a second per turn ahead, at least one."""
    return max(1, ahead * RETRY_S_PER_TURN)


def queue_events(tx: WriteTx, request: TurnRequest, handle: TurnHandle, ahead: int) -> list[Event]:
    """Record a turn as queued, and its chat as started if this is its first turn.

    Runs in the writer's transaction: of two first messages to one new chat, only the
    first writes chat.started.
    """
    chat = tx.read(queries.get_chat, request.chat_id)
    if chat is not None and chat["persona_id"] != request.persona_id:
        raise ChatConflict(f"session {request.chat_id!r} belongs to persona {chat['persona_id']!r}")
    stream = chat_stream(request.chat_id)
    new = []
    if chat is None:
        title = " ".join(request.message.split())[:60] or "chat"
        started = ChatStarted(
            chat_id=request.chat_id,
            persona_id=request.persona_id,
            user_id=request.user_id,
            title=title,
        )
        new.append(NewEvent(started, stream, "runner", trace_id=handle.trace_id))
    queued = TurnQueued(
        turn_id=handle.turn_id,
        chat_id=request.chat_id,
        persona_id=request.persona_id,
        user_id=request.user_id,
        message=request.message,
        reward_signal=request.reward_signal,
        ahead=ahead,
    )
    new.append(NewEvent(queued, stream, "runner", trace_id=handle.trace_id))
    variant = request.variant
    if variant is not None:
        # The leaf moves to the variant's parent now: nothing waits in this chat (submit
        # refused otherwise), so the new turn begins on exactly that state.
        origin = tx.read(queries.get_turn, variant.of_turn_id)
        if origin is None or origin["chat_id"] != request.chat_id:
            raise ChatConflict(f"turn {variant.of_turn_id!r} is not a turn of this chat")
        marker: TurnRegenerated | TurnEdited
        if variant.kind == "regenerate":
            marker = TurnRegenerated(
                turn_id=handle.turn_id,
                chat_id=request.chat_id,
                of_turn_id=variant.of_turn_id,
                parent_turn_id=variant.parent_turn_id,
            )
        else:
            marker = TurnEdited(
                turn_id=handle.turn_id,
                chat_id=request.chat_id,
                of_turn_id=variant.of_turn_id,
                parent_turn_id=variant.parent_turn_id,
                message=request.message,
                previous=variant.previous,
            )
        new.append(NewEvent(marker, stream, "user", trace_id=handle.trace_id))
    return tx.append(new)


class TurnRunner:
    """Run turns as tasks independent of any HTTP connection, one at a time per chat."""

    def __init__(
        self,
        store: Store,
        backend: Backend,
        settings: Settings,
        broadcaster: Broadcaster,
        stages: Sequence[Stage] = DEFAULT_STAGES,
        post_stages: Sequence[PostStage] = DEFAULT_POST_STAGES,
        prompts: PromptSet | None = None,
        ready: asyncio.Event | None = None,
        after_turn: Callable[[str], None] | None = None,
    ):
        self.store = store
        self.backend = backend
        # Called with the persona id once a turn has ended (completed or failed).
        self.after_turn = after_turn
        self.settings = settings
        self.broadcaster = broadcaster
        self.stages = tuple(stages)
        self.post_stages = tuple(post_stages)
        self.prompts = prompts or PromptSet.load()
        self.speaker = SpeakerStage(self.prompts)
        self.config_hash = settings.config_hash(self.prompts.sources)
        self.identity = Identity(
            backend=backend.name,
            model=backend.model,
            config_hash=self.config_hash,
            engine_version=ENGINE_VERSION,
            build_sha=build_sha(),
        )
        self.env = StageEnv(settings, ReadOnly(store), backend, backend.count_tokens, self.prompts)
        self.ready = ready
        # Per chat, its turns waiting or running, in order; a chat with none has no entry.
        self._queues: dict[str, deque[_Slot]] = {}
        self._tasks: dict[asyncio.Task[None], _Slot] = {}
        # The running turn of each chat that has one (what a stop cancels).
        self._running_turns: dict[str, tuple[Turn, asyncio.Task[None]]] = {}
        self._accepting: set[asyncio.Future[None]] = set()
        self._closing = False
        self._running = asyncio.Semaphore(settings.server.concurrent_turns)

    async def resolve(
        self, chat_id: str, persona_id: str | None, user_id: str, default_persona: str
    ) -> str:
        """Check the persona and chat before anything is written; return the persona id."""
        chat = await self.store.read(queries.get_chat, chat_id)
        if chat is not None:
            if persona_id is not None and persona_id != chat["persona_id"]:
                raise ChatConflict(f"session {chat_id!r} belongs to persona {chat['persona_id']!r}")
            if user_id != chat["user_id"]:
                # Its history would put another user's words in this user's prompt.
                raise ChatConflict(f"session {chat_id!r} belongs to another user")
            persona_id = chat["persona_id"]
        persona_id = persona_id or default_persona
        if await self.store.read(queries.get_persona, persona_id) is None:
            raise PersonaNotFound(f"unknown persona_id {persona_id!r}")
        return persona_id

    async def check_fits(self, request: TurnRequest) -> None:
        """Refuse, before anything is written, a message the context window cannot hold."""
        persona = await self.store.read(queries.get_persona, request.persona_id)
        if persona is None:
            raise PersonaNotFound(f"unknown persona_id {request.persona_id!r}")
        # Counting may load the local model: keep it off the event loop.
        tokens, limit = await asyncio.to_thread(message_room, request, persona, self.env)
        if tokens > limit:
            window = self.backend.context_window()
            raise MessageTooLong(tokens, max(limit, 0), window, request.gen.max_tokens)

    def queued(self, chat_id: str) -> int:
        """How many turns of a chat wait or run."""
        return len(self._queues.get(chat_id, ()))

    def stop(self, chat_id: str) -> str:
        """Stop the chat's streaming reply; return its trace id.

        The turn records turn.stopped with what streamed (Turn.execute). A reply already
        whole is recorded as completed: there was nothing left to stop. NothingToStop
        when no turn of the chat is running.
        """
        running = self._running_turns.get(chat_id)
        if running is None:
            raise NothingToStop(f"chat {chat_id!r} has no reply streaming")
        turn, task = running
        turn.stop_requested = True
        task.cancel()
        return turn.trace_id

    def busy_chats(self) -> int:
        """How many chats have a turn waiting or running: the only ones with state here."""
        return len(self._queues)

    async def submit(self, request: TurnRequest) -> TurnHandle:
        """Record a turn as queued on its chat, then run it even if the caller goes away.

        Raises QueueFull, before anything is written, when the chat already has
        `server.chat_queue_limit` turns waiting or running, or all chats together
        `server.turn_limit`.
        """
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        limit = self.settings.server.chat_queue_limit
        ahead = self.queued(request.chat_id)
        if request.variant is not None and ahead:
            raise ChatBusy(
                f"chat {request.chat_id!r} has a reply waiting or streaming: stop it or wait"
            )
        if ahead >= limit:
            raise QueueFull(request.chat_id, limit, retry_after_s(ahead))
        total_limit = self.settings.server.turn_limit
        total = sum(len(chat) for chat in self._queues.values())
        if total >= total_limit:
            running = self.settings.server.concurrent_turns
            raise QueueFull(None, total_limit, retry_after_s(total // running))
        loop = asyncio.get_running_loop()
        handle = TurnHandle(
            uuid.uuid4().hex, uuid.uuid4().hex, request.chat_id, loop.create_future()
        )
        # Fire-and-forget callers (the HTML form) never read the result: mark it retrieved.
        handle.result.add_done_callback(lambda f: f.cancelled() or f.exception())
        slot = _Slot(handle, loop.create_future())
        # Take the place before awaiting the write, so concurrent submits count it.
        chat = self._queues.setdefault(request.chat_id, deque())
        chat.append(slot)
        if len(chat) == 1:
            slot.go.set_result(None)
        # Shielded: a caller that goes away mid-write must not leave a queued turn behind
        # that no task runs.
        accept = asyncio.ensure_future(self._accept(request, slot, ahead))
        self._accepting.add(accept)
        accept.add_done_callback(self._accepted)
        await asyncio.shield(accept)
        return handle

    async def _accept(self, request: TurnRequest, slot: _Slot, ahead: int) -> None:
        handle = slot.handle
        try:
            await self.store.transact(lambda tx: queue_events(tx, request, handle, ahead))
        except BaseException:
            self._release(request.chat_id, slot)
            raise
        if self._closing:  # shutdown began during the write: it will never start
            await self._fail_queued(request, slot)
            return
        self._publish(
            handle,
            "queued",
            {
                "trace_id": handle.trace_id,
                "session_id": request.chat_id,
                "turn_id": handle.turn_id,
                "message": request.message,
            },
        )
        task = asyncio.create_task(self._run(request, slot), name=f"turn-{handle.trace_id}")
        self._tasks[task] = slot
        task.add_done_callback(self._forget)

    def _accepted(self, accept: asyncio.Future[None]) -> None:
        self._accepting.discard(accept)
        if not accept.cancelled():
            accept.exception()  # the submitter got it (or went away): mark it retrieved

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    def _release(self, chat_id: str, slot: _Slot) -> None:
        """Take an ended turn off its chat's queue; wake the next one, or forget the chat."""
        chat = self._queues.get(chat_id)
        if chat is None or slot not in chat:
            return
        chat.remove(slot)
        if not chat:
            del self._queues[chat_id]  # nothing waits: keep no per-chat state
        elif not chat[0].go.done():
            chat[0].go.set_result(None)

    async def drain(self, grace_s: float) -> None:
        """Shut down: queued turns never start; running ones get `grace_s`, then are cancelled.

        Returns once every turn's end is in the log: the cancelled ones record their own
        failure; the queued ones, and any a cancellation caught mid-write (left started
        or queued), are failed here. Every caller waiting on a handle is answered.
        """
        self._closing = True
        if self._accepting:  # turns being written now fail themselves once written
            await asyncio.wait(set(self._accepting), timeout=CANCEL_WAIT_S)
        slots = dict(self._tasks)
        # Cancelled before anything is awaited: no queued turn can start meanwhile.
        for task, slot in slots.items():
            if not slot.started:
                task.cancel()
        running = [task for task, slot in slots.items() if slot.started]
        if running:
            _, late = await asyncio.wait(running, timeout=grace_s)
            for task in late:
                task.cancel()  # cancels the model call; Turn.execute records the failure
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=CANCEL_WAIT_S)
        await fail_unfinished(
            self.store, started=("runner", SHUTDOWN), queued=(QUEUE_STAGE, SHUTDOWN_QUEUED)
        )
        for slot in slots.values():
            if not slot.handle.result.done():
                self._fail(slot.handle, SHUTDOWN if slot.started else SHUTDOWN_QUEUED)

    async def recover(self) -> int:
        """Record turns left started or queued by a dead process as failed. Returns how many."""
        return await recover(self.store)

    def _publish(self, handle: TurnHandle, kind: str, data: dict[str, Any]) -> None:
        self.broadcaster.publish(TurnEvent(kind, handle.chat_id, handle.trace_id, data))

    def _fail(self, handle: TurnHandle, error: str) -> None:
        if not handle.result.done():
            handle.result.set_exception(TurnFailed(error, handle.trace_id))
        self._publish(handle, "error", {"error": error, "trace_id": handle.trace_id})

    async def _run(self, request: TurnRequest, slot: _Slot) -> None:
        try:
            # Queued until here: a cancellation (shutdown) leaves drain to record it.
            await slot.go  # the turns ahead of it on this chat
            if self.ready is not None:
                await self.ready.wait()  # the model is still loading
            async with self._running:  # at most server.concurrent_turns at once
                slot.started = True
                try:
                    await self._execute(request, slot.handle)
                finally:
                    self._running_turns.pop(request.chat_id, None)
            if self.after_turn is not None:
                self.after_turn(request.persona_id)
        finally:
            self._release(request.chat_id, slot)

    async def _fail_queued(self, request: TurnRequest, slot: _Slot) -> None:
        handle = slot.handle
        ids = (handle.turn_id, request.chat_id, request.persona_id, handle.trace_id)
        try:
            await self.store.append([failure(*ids, QUEUE_STAGE, SHUTDOWN_QUEUED)])
        finally:
            self._release(request.chat_id, slot)
            self._fail(handle, SHUTDOWN_QUEUED)

    async def _execute(self, request: TurnRequest, handle: TurnHandle) -> None:
        turn = Turn(
            self.store,
            self.env,
            self.stages,
            self.speaker,
            self.post_stages,
            self.identity,
            request,
            handle.trace_id,
            handle.turn_id,
        )

        task = asyncio.current_task()

        def started(ctx: TurnContext) -> None:
            # From here a stop is recorded as turn.stopped (Turn.execute).
            if task is not None:
                self._running_turns[request.chat_id] = (turn, task)
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

        try:
            result = await turn.execute(
                started,
                # Live text without control characters (the reply check strips them from
                # the stored reply; the page must not show them meanwhile).
                lambda text: self._publish(handle, "delta", {"text": strip_controls(text)}),
            )
        except TurnStopped as exc:
            if not handle.result.done():
                handle.result.set_exception(exc)
            # The turn's own stream ends as every failed turn's does; every tab of the
            # chat then hears that the tree moved (the stopped turn is the leaf now).
            self._publish(handle, "error", {"error": str(exc), "trace_id": handle.trace_id})
            self._publish(
                handle,
                "tree",
                {"op": "stopped", "session_id": request.chat_id, "leaf_turn_id": exc.turn_id},
            )
        except TurnFailed as exc:
            self._fail(handle, str(exc))
        except asyncio.CancelledError:  # shutdown: Turn.execute recorded the failure
            self._fail(handle, SHUTDOWN)
            raise
        except BaseException as exc:  # never leave the caller waiting
            self._fail(handle, "internal error")
            if not isinstance(exc, Exception):
                raise
            log.exception("turn %s crashed", handle.trace_id)
        else:
            handle.result.set_result(result)
            self._publish(
                handle,
                "done",
                {"reply": result.reply, "meta": result.meta.model_dump(mode="json")},
            )
