"""The turn runner: server-side turns, serialized per chat, independent of any request."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from persona.config import Settings
from persona.errors import ChatConflict, MessageTooLong, PersonaNotFound, TurnFailed
from persona.llm.base import Backend
from persona.pipeline.broadcast import Broadcaster, TurnEvent
from persona.pipeline.context import PostStage, Stage, StageEnv, TurnContext, TurnRequest
from persona.pipeline.gating import GatingStage, message_room
from persona.pipeline.memory import MemoryStage
from persona.pipeline.metacognition import MetacognitionStage
from persona.pipeline.perception import PerceptionStage
from persona.pipeline.post import DEFAULT_POST_STAGES
from persona.pipeline.prompts import PromptSet
from persona.pipeline.recovery import recover
from persona.pipeline.speaker import SpeakerStage
from persona.pipeline.turn import Identity, Turn, TurnResult
from persona.storage import queries
from persona.storage.store import ReadOnly, Store
from persona.version import ENGINE_VERSION, build_sha

log = logging.getLogger(__name__)

# The built-in stages, in order; the speaker always runs after them.
DEFAULT_STAGES: tuple[Stage, ...] = (
    PerceptionStage(),
    MemoryStage(),
    GatingStage(),
    MetacognitionStage(),
)


@dataclass
class TurnHandle:
    """A submitted turn: its ids now, its result when it ends."""

    trace_id: str
    turn_id: str
    chat_id: str
    result: asyncio.Future[TurnResult] = field(repr=False)


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
    ):
        self.store = store
        self.backend = backend
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
        return await recover(self.store)

    def _publish(self, handle: TurnHandle, kind: str, data: dict[str, Any]) -> None:
        self.broadcaster.publish(TurnEvent(kind, handle.chat_id, handle.trace_id, data))

    async def _run(self, request: TurnRequest, handle: TurnHandle) -> None:
        lock = self._locks.setdefault(request.chat_id, asyncio.Lock())
        async with lock:
            if self.ready is not None:
                await self.ready.wait()  # the model is still loading
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

            def started(ctx: TurnContext) -> None:
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
                    started, lambda text: self._publish(handle, "delta", {"text": text})
                )
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
                self._publish(
                    handle,
                    "done",
                    {"reply": result.reply, "meta": result.meta.model_dump(mode="json")},
                )
