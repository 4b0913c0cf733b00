"""The model loads in the background: the server answers at once, turns wait for it."""

from __future__ import annotations

import asyncio

from helpers import async_wait_until, run_turn

from persona.engine import Engine
from persona.llm.scripted import ScriptedBackend
from persona.storage import queries


class SlowToLoad(ScriptedBackend):
    """A backend whose warm-up holds until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.warming = asyncio.Event()

    async def warm(self) -> None:
        self.warming.set()
        await self.gate.wait()


async def test_turns_wait_for_the_model_then_run(settings, clock):
    backend = SlowToLoad()
    engine = Engine(settings, backend=backend, clock=clock)
    await engine.start()  # returns while the model is still loading
    try:
        await backend.warming.wait()
        assert not engine.ready.is_set()
        turn = asyncio.ensure_future(run_turn(engine, "hello while loading"))
        # Accepted (queued) at once, but nothing begins while the model loads.
        queued = await async_wait_until(lambda: engine.store.read(queries.conversation, "chat-1"))
        for _ in range(5):  # let the runner reach the wait
            await asyncio.sleep(0)
        assert not turn.done() and backend.calls == []
        assert [t["status"] for t in queued] == ["queued"]
        turns = await engine.store.read(queries.conversation, "chat-1")
        assert [t["status"] for t in turns] == ["queued"]  # still: nothing begun
        backend.gate.set()
        result = await turn
        assert result["reply"] and engine.ready.is_set()
    finally:
        backend.gate.set()
        await engine.stop()


class BrokenModel(ScriptedBackend):
    async def warm(self) -> None:
        raise RuntimeError("no such model file")


async def test_a_model_that_fails_to_load_still_lets_the_server_answer(settings, clock):
    engine = Engine(settings, backend=BrokenModel(), clock=clock)
    await engine.start()
    try:
        await asyncio.wait_for(engine.ready.wait(), 10)  # ready: turns report failures
        assert (await run_turn(engine, "hi"))["reply"]
    finally:
        await engine.stop()


def test_health_says_warming_until_the_model_is_loaded(settings, clock):
    from fastapi.testclient import TestClient

    from persona.web.app import create_app

    backend = SlowToLoad()
    engine = Engine(settings, backend=backend, clock=clock)
    with TestClient(create_app(engine=engine), base_url="http://localhost") as client:
        assert client.get("/health").json() == {"status": "ok", "model": "warming"}
        client.portal.call(backend.gate.set)  # open the gate on the app's loop
        client.portal.call(engine.ready.wait)
        assert client.get("/health").json() == {"status": "ok", "model": "ready"}
