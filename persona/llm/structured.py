"""Structured output through instructor, bounded in time, never raising.

Response models used here must have a default for every field: on persistent failure
the caller gets `response_model()` with `ok=False` and decides what to record. The model
itself is asked for every field (defaults are the fallback, not an answer): a reply of
`{}` is a validation failure, re-asked once, not a silent success.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Generic, TypeVar

import instructor
from pydantic import BaseModel, Field, ValidationError, create_model

from persona.controls import strip_controls
from persona.llm.base import Backend, ChatMessage

T = TypeVar("T", bound=BaseModel)

# Backends name their mode with a `structured_mode` attribute (default "json"). JSON puts
# the schema in the prompt and asks for json_object: fine for the scripted backend and big
# models. JSON_SCHEMA sends the schema as response_format, which llama.cpp turns into a
# grammar: a 135M model writes schema-shaped JSON only under that constraint.
_MODES = {"json": instructor.Mode.JSON, "json_schema": instructor.Mode.JSON_SCHEMA}


@dataclass(frozen=True)
class StructuredResult(Generic[T]):
    """The parsed value (or the schema's default), whether it worked, and what it cost."""

    value: T
    ok: bool
    error: str | None
    attempts: int
    latency_ms: float


async def structured_call(
    backend: Backend,
    response_model: type[T],
    messages: list[ChatMessage],
    *,
    model: str,
    timeout_s: float,
    retries: int = 1,
    max_tokens: int = 256,
) -> StructuredResult[T]:
    """Ask for `response_model` with `retries` re-asks; fall back to its default on failure."""
    started = time.perf_counter()
    attempts = 0

    def elapsed_ms() -> float:
        return (time.perf_counter() - started) * 1000

    def counted(create: Callable[..., Any]) -> Callable[..., Any]:
        def call(**kwargs: Any) -> Any:
            nonlocal attempts
            attempts += 1
            return create(**kwargs)

        return call

    def run(create: Callable[..., Any]) -> T:
        mode = _MODES[getattr(backend, "structured_mode", "json")]
        patched = instructor.patch(create=counted(create), mode=mode)
        # instructor 1.17 counts max_retries *after* the first attempt.
        return patched(  # type: ignore[no-any-return]
            response_model=_required(response_model),
            messages=[m.model_dump() for m in messages],
            model=model,
            max_retries=retries,
            strict=False,  # small models write "3" for 3; lax parsing is the useful kind
            temperature=0.0,
            max_tokens=max_tokens,
        )

    try:
        # Built here, not in the worker thread, so lazily created clients never race.
        create = backend.structured_create()
        loop = asyncio.get_running_loop()
        value = await asyncio.wait_for(loop.run_in_executor(_WORKERS, run, create), timeout_s)
    except TimeoutError:
        error = f"timeout after {timeout_s:g}s"
    except Exception as exc:
        error = _short(exc)
    else:
        # instructor returns a dynamic subclass carrying `_raw_response`; hand back the
        # caller's own class so values compare, serialize and pickle as expected.
        fields = {name: getattr(value, name) for name in response_model.model_fields}
        plain = response_model.model_construct(value.model_fields_set, **fields)
        return StructuredResult(plain, True, None, attempts, elapsed_ms())
    return StructuredResult(response_model(), False, error, attempts, elapsed_ms())


def schema_as_json_object(response_format: Any) -> dict[str, Any] | None:
    """Rewrite a json_schema response_format as llama-cpp-python's json_object + schema."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    schema = response_format.get("json_schema", {}).get("schema", {})
    return {"type": "json_object", "schema": schema}


@cache
def _required(model: type[T]) -> type[T]:
    """Derive `model` with every field required, keeping its types, constraints, validators."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        kind = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[name] = (
            kind,
            Field(
                alias=info.alias,
                title=info.title,
                description=info.description,
                examples=info.examples,
            ),
        )
    return create_model(model.__name__, __base__=model, __doc__=model.__doc__, **fields)


def _short(exc: Exception) -> str:
    """One line naming the failure; backends already keep secrets out of their errors."""
    failed = getattr(exc, "failed_attempts", None)  # instructor's retry exhaustion
    if failed:
        exc = failed[-1].exception
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "root"
        text = f"{exc.error_count()} validation error(s); {where}: {first['msg']}"
    else:
        text = " ".join(strip_controls(str(exc)).split()) or "no detail"
    return f"{type(exc).__name__}: {text}"[:240]


# Structured calls are synchronous SDK calls in threads. A timeout stops the waiting, not
# the thread: a stalled upstream can hold one until its own socket timeout. Their own small
# pool keeps such threads from filling the default executor, which every turn's
# admission (`check_fits`) needs; a call that finds both busy times out like a slow one
# and the stage falls back to its lexical reading.
STRUCTURED_WORKERS = 2
_WORKERS = ThreadPoolExecutor(max_workers=STRUCTURED_WORKERS, thread_name_prefix="structured")

# instructor logs every exhausted retry at ERROR with fragments of model output; the
# failure is already recorded as a `classifier.failed` event, so keep the console quiet.
logging.getLogger("instructor").setLevel(logging.CRITICAL)
