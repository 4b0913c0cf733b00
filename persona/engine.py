"""Wire the parts of one process: store, default persona, backend, broadcaster, runner."""

from __future__ import annotations

import asyncio
import logging

from persona.clock import Clock
from persona.config import Settings
from persona.llm.base import Backend
from persona.personas import ensure_persona
from persona.pipeline.broadcast import Broadcaster
from persona.pipeline.runner import TurnRunner
from persona.projector import Projector
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
        self.runner = TurnRunner(self.store, backend, settings, self.broadcaster, ready=self.ready)
        self.default_persona_id = ""
        self._warming: asyncio.Task[None] | None = None
        self._draining: asyncio.Future[None] | None = None
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
        if self._warming is not None:
            await asyncio.wait([self._warming], timeout=60)
        await self.backend.aclose()
        self.store.close()
