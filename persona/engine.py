"""Wire the parts of one process: store, default persona, backend, broadcaster, runner."""

from __future__ import annotations

import asyncio
import logging

from persona.clock import Clock
from persona.config import Settings
from persona.llm.base import Backend, LLMError
from persona.personas import ensure_persona
from persona.pipeline import dense
from persona.pipeline.broadcast import Broadcaster
from persona.pipeline.runner import TurnRunner
from persona.projector import Projector
from persona.sleep import SleepReport, due, sleep
from persona.storage import queries, sleep_queries
from persona.storage.eventlog import NewEvent
from persona.storage.store import Store

log = logging.getLogger(__name__)


class Engine:
    """Everything a running Persona OS holds; the web app and tests build one each."""

    def __init__(
        self, settings: Settings, backend: Backend | None = None, clock: Clock | None = None
    ):
        self.settings = settings
        self.store = Store(settings.db_path, Projector(), clock)
        if backend is None:
            from persona.llm.registry import make_backend

            backend = make_backend(settings)
        self.backend = backend
        self.broadcaster = Broadcaster(settings.server.subscriber_buffer)
        # Set once the backend has loaded (or failed to): turns wait for it, pages show it.
        self.ready = asyncio.Event()
        self.runner = TurnRunner(
            self.store,
            backend,
            settings,
            self.broadcaster,
            ready=self.ready,
            after_turn=self._after_turn,
        )
        self._embedding: dict[str, asyncio.Task[int]] = {}
        self._embed_locks: dict[str, asyncio.Lock] = {}
        self.default_persona_id = ""
        self._warming: asyncio.Task[None] | None = None
        self._draining: asyncio.Future[None] | None = None
        self._sleeper: asyncio.Task[None] | None = None
        # Per persona: the newest activity when its last inactivity sleep ran.
        self._slept_spell: dict[str, str | None] = {}
        # Per persona: the unconsolidated count a pressure sleep left (it will not group).
        self._slept_pressure: dict[str, int] = {}
        # Memories whose text the embedding model refused: not asked again until restart.
        self._unembeddable: set[str] = set()
        # The loop the engine runs on (set by start): signal handlers schedule onto it.
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Open the DB (migrating), create the default persona, recover dead turns."""
        self.loop = asyncio.get_running_loop()
        applied = self.store.open()
        if applied:
            log.info("applied migrations %s", applied)
        self.default_persona_id = ensure_persona(self.store, self.settings.default_persona_path())
        recovered = await self.runner.recover()
        if recovered:
            log.warning("marked %d interrupted turn(s) as failed", recovered)
        # Load the model in the background: the server answers (and shows "warming up")
        # at once; turns submitted meanwhile wait for it, then run.
        self._warming = asyncio.create_task(self._warm(), name="persona-warm")
        if self.settings.sleep.check_every_s > 0:
            self._sleeper = asyncio.create_task(self._sleep_loop(), name="persona-sleep")

    async def maybe_sleep(self, persona_id: str) -> SleepReport | None:
        """Consolidate the persona's memories if a sleep is due (context pressure, or an
        idle spell in wall time), at most once per idle spell; None when not due."""
        now = self.store.clock.now()
        trigger = await self.store.read(due, persona_id, now, self.settings.sleep)
        if trigger is None:
            return None
        figures = await self.store.read(sleep_queries.pressure, persona_id)
        if trigger == "inactivity" and self._slept_spell.get(persona_id) == figures.last_activity:
            return None  # this spell's sleep ran; what is left did not group
        if trigger == "pressure" and self._slept_pressure.get(persona_id) == figures.unconsolidated:
            return None  # nothing new since the last one: what is left did not group
        report = await sleep(self.store, persona_id, trigger, self.settings.sleep, self.backend)
        self._slept_spell[persona_id] = figures.last_activity
        after = await self.store.read(sleep_queries.pressure, persona_id)
        self._slept_pressure[persona_id] = after.unconsolidated
        log.info(
            "sleep (%s) for %s: %d digest(s), %d belief(s)",
            trigger,
            persona_id,
            report.digests,
            report.beliefs,
        )
        return report

    def _after_turn(self, persona_id: str) -> None:
        """Embed the turn's new memories off the turn path (when a model is configured)."""
        model = self.settings.memory.embedding_model
        if not model or not self.backend.supports_embeddings:
            return
        running = self._embedding.get(persona_id)
        if running is None or running.done():
            self._embedding[persona_id] = asyncio.create_task(self.embed_pending(persona_id))

    async def embed_pending(self, persona_id: str, batch: int = 64) -> int:
        """Write `memory.embedded` for the persona's memories without a vector of the
        configured model (also catches up after a restart or a failed call); returns how
        many. A failed call leaves them for the next turn: lexical retrieval still works."""
        model = self.settings.memory.embedding_model
        if not model:
            return 0
        # One at a time per persona: two runs would embed the same memories twice.
        lock = self._embed_locks.setdefault(persona_id, asyncio.Lock())
        async with lock:
            return await self._embed_unembedded(persona_id, model, batch)

    async def _embed_unembedded(self, persona_id: str, model: str, batch: int) -> int:
        done = 0
        while True:
            found = await self.store.read(
                queries.unembedded, persona_id, model, batch + len(self._unembeddable)
            )
            todo = [t for t in found if t[0] not in self._unembeddable][:batch]
            if not todo:
                return done
            try:
                vectors = await self.backend.embed([text for _, text in todo], model)
                pairs = list(zip(todo, vectors, strict=True))
            except LLMError as exc:
                # One text may be what the model refuses (too long): ask one at a time and
                # set aside the ones that fail, so the rest still get their vectors.
                log.warning("embedding %d memories failed, one at a time: %s", len(todo), exc)
                pairs, refused = [], []
                for item in todo:
                    try:
                        pairs.append((item, (await self.backend.embed([item[1]], model))[0]))
                    except LLMError:
                        refused.append(item[0])
                if not pairs:
                    return done  # every one failed: the model is away, not these texts
                self._unembeddable.update(refused)
            events = [
                NewEvent(
                    payload=dense.embedded(mid, persona_id, model, vec),
                    stream_id=f"persona:{persona_id}",
                    actor="memory",
                )
                for (mid, _), vec in pairs
            ]
            await self.store.append(events)
            done += len(events)

    async def _sleep_loop(self) -> None:
        """Check every persona for a due sleep, every `sleep.check_every_s` seconds."""
        while True:
            await asyncio.sleep(self.settings.sleep.check_every_s)
            if self._draining is not None:
                return
            try:
                personas = await self.store.read(queries.list_personas)
                for p in personas:
                    await self.maybe_sleep(p["persona_id"])
            except Exception as exc:  # a failed sleep is retried next time; nothing is lost
                log.error("sleep check failed: %s", exc)

    async def _warm(self) -> None:
        try:
            await self.backend.warm()
        except Exception as exc:  # a broken model must not stop the server: turns report it
            log.error("could not warm the %s backend: %s", self.backend.name, exc)
        finally:
            self.ready.set()

    def begin_shutdown(self) -> asyncio.Future[None]:
        """Start ending every turn now (idempotent); stop() finishes what this starts.

        Called as soon as the process is told to stop (SIGTERM), before the HTTP server
        waits on open connections: a client waiting on a turn then gets its answer (the
        turn failed by shutdown) instead of a dropped connection.
        """
        if self._draining is None:
            self._draining = asyncio.ensure_future(
                self.runner.drain(self.settings.server.shutdown_grace_s)
            )
        return self._draining

    async def stop(self) -> None:
        """End every turn (running ones get the shutdown grace), close the backend and DB.

        Queued turns never start (they are recorded as failed); running ones have
        `server.shutdown_grace_s` to finish before their model calls are cancelled and
        they are recorded as failed.
        """
        await self.begin_shutdown()
        if self._sleeper is not None:
            self._sleeper.cancel()
            await asyncio.gather(self._sleeper, return_exceptions=True)
        await asyncio.gather(*self._embedding.values(), return_exceptions=True)
        if self._warming is not None:
            await asyncio.wait([self._warming], timeout=60)
        await self.backend.aclose()
        self.store.close()
