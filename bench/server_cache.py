"""Time to first token on the `openai` backend against a local llama.cpp server.

Run: python bench/server_cache.py [--layout merged|stable|both] [--turns 10]. Starts
llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server --n_ctx 4096`,
its defaults otherwise) on a free loopback port with the packaged SmolLM2 GGUF, one
fresh server per layout, and runs one chat of fixed messages (history grows every turn)
through the real Engine; the layouts take turns, so background load falls on both alike.
Prints time to first token, speaker time and prompt tokens, and from the server's log
how much of each prompt it reused from its KV cache. That reuse needs no server flag:
llama-cpp-python keeps the last prompt's KV state and re-reads only what differs.

`merged` is the 0.1.0 layout (the per-turn note joined to the first system message,
as in `speaker.build_prompt` through 0.2.0);
`stable` is `persona.pipeline.layout` as it is (the note travels with the newest user
message on backends without a late system message, as on this one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_model import MESSAGES as LOCAL_MESSAGES
from turn_overhead import _BenchSettings, percentile

import persona.pipeline.layout as layout_module
from persona.config import GenerationSettings, LLMSettings
from persona.engine import Engine
from persona.llm.base import ChatMessage
from persona.llm.local import find_gguf
from persona.pipeline.context import TurnRequest
from persona.pipeline.layout import PromptParts, traits_text, turn_note
from persona.pipeline.prompts import PromptSet

# The local-model bench's eight, and two more: ten turns of a growing history.
MESSAGES = (
    *LOCAL_MESSAGES,
    "Have you ever seen the lake in winter?",
    "Thanks for talking with me, see you tomorrow.",
)
SERVER_START_S = 60
MODEL = "SmolLM2-135M-Instruct"
# With `verbose` (its default) llama-cpp-python's server logs, per request, how much of
# the prompt it found in its KV cache and then a timing block that ends in "total time".
PREFIX_HIT = re.compile(rb"Llama\.generate: (\d+) prefix-match hit")
PROMPT_EVAL = re.compile(rb"prompt eval time = .*?/\s*(\d+) tokens")
REQUEST_END = b"total time ="
LayoutFn = Callable[[PromptParts, PromptSet, bool], list[ChatMessage]]


def layout_0_1_0(parts: PromptParts, prompts: PromptSet, late_system_ok: bool) -> list[ChatMessage]:
    """The 0.1.0 layout (unchanged through 0.2.0), kept here for comparison only.

    Without a late system message the per-turn note joins the identity in the first
    system message, so a turn's prompt differs from the last one right after the
    identity. Placement is the only difference kept: the parts are today's.
    """
    identity = prompts.render(
        "system.j2", persona=parts.persona, traits=traits_text(parts.persona.traits)
    )
    note = turn_note(parts, prompts)
    if not late_system_ok:
        identity = f"{identity}\n\n{note}"
    messages = [ChatMessage(role="system", content=identity)]
    for h in parts.history:
        messages.append(ChatMessage(role="user", content=h.user_message))
        messages.append(ChatMessage(role="assistant", content=h.reply))
    if late_system_ok:
        messages.append(ChatMessage(role="system", content=note))
    messages.append(ChatMessage(role="user", content=parts.message))
    return messages


@contextlib.contextmanager
def using_layout(replacement: LayoutFn) -> Iterator[None]:
    """Swap `layout` in every persona module that imported it (speaker, gating, …)."""
    original = layout_module.layout
    patched = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("persona.") and getattr(module, "layout", None) is original
    ]
    for module in patched:
        module.layout = replacement  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module in patched:
            module.layout = original  # type: ignore[attr-defined]


def free_port() -> int:
    """A loopback port nothing listens on (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _open(url: str, data: bytes | None = None, timeout: float = 60) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    headers = {"Content-Type": "application/json"} if data else {}
    with opener.open(urllib.request.Request(url, data, headers), timeout=timeout) as response:
        return bytes(response.read())


@contextlib.contextmanager
def llama_server(log: Path, extra: Sequence[str]) -> Iterator[str]:
    """Run llama-cpp-python's server on loopback until the block ends; yield its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(find_gguf())]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", *extra]
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
            try:
                _open(f"{base_url}/models", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server silent for {SERVER_START_S}s") from None
                time.sleep(0.2)
        # One tiny request first, so the first turn does not pay for loading pages.
        body = b'{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}'
        _open(f"{base_url}/chat/completions", body)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cache_use(log: Path) -> list[tuple[int, int]]:
    """Per request in the server's log: prompt tokens reused from its KV cache, evaluated."""
    requests = log.read_bytes().split(REQUEST_END)[:-1]
    used = []
    for text in requests:
        hit = PREFIX_HIT.search(text)
        evaluated = PROMPT_EVAL.search(text)
        used.append((int(hit[1]) if hit else 0, int(evaluated[1]) if evaluated else 0))
    return used


LAYOUTS: dict[str, LayoutFn] = {"merged": layout_0_1_0, "stable": layout_module.layout}


def _settings(base_url: str, db: Path, max_tokens: int) -> _BenchSettings:
    llm = LLMSettings(
        provider="openai", base_url=base_url, narrative_model=MODEL, context_window=4096
    )
    return _BenchSettings(db_path=db, llm=llm, generation=GenerationSettings(max_tokens=max_tokens))


async def run_chats(
    servers: dict[str, str], tmp: Path, turns: int, max_tokens: int
) -> dict[str, list[dict[str, Any]]]:
    """One chat per layout, each on its own server, turns taken in turn: background load
    on the machine falls on both layouts alike."""
    engines = {
        name: Engine(_settings(url, tmp / f"{name}.db", max_tokens))
        for name, url in servers.items()
    }
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    started = []
    try:
        for engine in engines.values():
            await engine.start()
            started.append(engine)
        for i in range(turns):
            for name, engine in engines.items():
                # The backend's own sampling for served models, as the web API resolves it.
                gen = engine.backend.default_gen().with_overrides(max_tokens=max_tokens, seed=7)
                request = TurnRequest(
                    MESSAGES[i % len(MESSAGES)],
                    "bench",
                    "bench",
                    engine.default_persona_id,
                    0.0,
                    gen,
                )
                with using_layout(LAYOUTS[name]):
                    meta = (await (await engine.runner.submit(request)).result).meta
                rows[name].append(
                    {
                        "first_token_ms": meta.llm.first_token_ms,
                        "speaker_ms": meta.timing_ms["speaker"],
                        "estimated_tokens": meta.llm.prompt_tokens,
                    }
                )
    finally:
        for engine in started:
            await engine.stop()
    return rows


def run(
    names: Sequence[str], turns: int, max_tokens: int, extra: Sequence[str], log_dir: Path | None
) -> dict[str, list[dict[str, Any]]]:
    """Start one fresh server per layout, run the chats, add what each server re-read."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        logs = {name: (log_dir or Path(tmp)) / f"server-{name}.log" for name in names}
        servers = {name: stack.enter_context(llama_server(logs[name], extra)) for name in names}
        results = asyncio.run(run_chats(servers, Path(tmp), turns, max_tokens))
        stack.close()  # stop the servers: their logs are complete
        for name, rows in results.items():
            for row, (reused, evaluated) in zip(rows, cache_use(logs[name])[-turns:], strict=True):
                row["reused_tokens"] = reused
                row["evaluated_tokens"] = evaluated
                row["prompt_tokens"] = reused + evaluated
    return results


MEASURES = (
    ("first_token_ms", "time to first token (ms)"),
    ("speaker_ms", "speaker, whole (ms)"),
    ("prompt_tokens", "prompt tokens (the server's count)"),
    ("reused_tokens", "prompt tokens reused from the server's KV cache"),
    ("evaluated_tokens", "prompt tokens evaluated"),
    # llama-cpp-python's server sends no usage when streaming: meta has the estimate.
    ("estimated_tokens", "meta.llm.prompt_tokens (the backend's estimate)"),
)


def report(results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: p50 / p95 per layout, then each turn."""
    names = list(results)
    lines = [
        f"| measure | {' | '.join(f'{n}: p50 / p95' for n in names)} |",
        "|---|" + "---:|" * len(names),
    ]
    for key, label in MEASURES:
        cells = []
        for n in names:
            values = [r[key] for r in results[n]]
            cells.append(f"{percentile(values, 50):,.0f} / {percentile(values, 95):,.0f}")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines += [
        "",
        "Per turn: time to first token in ms (prompt tokens, of which evaluated)",
        "",
        f"| turn | {' | '.join(names)} |",
        "|---:|" + "---:|" * len(names),
    ]
    for i in range(len(results[names[0]])):
        cells = [
            f"{r['first_token_ms']:,.0f} ({r['prompt_tokens']:,}, {r['evaluated_tokens']:,})"
            for r in (results[n][i] for n in names)
        ]
        lines.append(f"| {i + 1} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layout", choices=("merged", "stable", "both"), default="both")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="an extra llama_cpp.server flag, e.g. --server-arg=--n_threads=2 (repeatable)",
    )
    parser.add_argument("--log-dir", type=Path, help="keep the servers' logs here")
    args = parser.parse_args(argv)
    names = ("merged", "stable") if args.layout == "both" else (args.layout,)
    results = run(names, args.turns, args.max_tokens, args.server_arg, args.log_dir)
    flags = " ".join(["--n_ctx 4096", *args.server_arg])
    print(
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"llama_cpp.server {flags} with SmolLM2-135M-Instruct Q4_1 on loopback, a fresh "
        f"server per layout; {args.turns} turns of one chat, max_tokens {args.max_tokens}, "
        "layouts taking turns.\n"
    )
    print(report(results))


if __name__ == "__main__":
    main()
