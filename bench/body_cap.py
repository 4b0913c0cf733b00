"""What a huge request body costs the server: status, time and the server's memory.

Run: python bench/body_cap.py [--mb 300] [--path /chats/chat-bench/messages] [--uncapped].
Starts `persona serve` in a subprocess (scripted backend, a temporary database, a free
loopback port), then for each way of sending (a declared Content-Length, then chunked)
posts a streamed body of `--mb` megabytes in 64 KiB chunks, one fresh server each, and
prints the status, the time until the answer, how much of the body went out before the
server answered, the server's peak and current RSS (VmHWM, VmRSS from /proc/<pid>/status,
before and after; "n/a" without /proc) and whether any event was written.
`--uncapped` adds a run with the cap raised past the body, to compare with what the cap
saves (the app then reads the whole body as it did before the cap).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
CHUNK = b"m" * (64 * 1024)
START_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_kib(pid: int) -> dict[str, int] | None:
    """VmHWM (peak RSS) and VmRSS of a process in KiB; None where there is no /proc."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            values[name] = int(rest.split()[0])
    return values


def mib(values: dict[str, int] | None, name: str) -> str:
    return f"{values[name] / 1024:.0f} MiB" if values and name in values else "n/a"


class Server:
    """`persona serve` on a loopback port with a fresh database, stopped with SIGTERM."""

    def __init__(self, tmp: Path, max_body_bytes: int | None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = tmp / f"bench-{self.port}.db"
        env = {
            **os.environ,
            "PERSONA_CONFIG_FILE": str(tmp / "absent.toml"),
            "PERSONA_DB_PATH": str(self.db),
            "PERSONA_LLM_PROVIDER": "scripted",
        }
        env.pop("PERSONA_ACCESS_TOKEN", None)
        if max_body_bytes is not None:
            env["PERSONA_SERVER__MAX_BODY_BYTES"] = str(max_body_bytes)
        command = [sys.executable, "-m", "persona.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--log-level", "warning"]
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"persona serve exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).json().get("model") == "ready":
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("persona serve did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def events(self) -> int:
        with sqlite3.connect(self.db) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def upload(total: int, sent: list[int]) -> Iterator[bytes]:
    """`total` bytes in 64 KiB chunks, counting in `sent` what was pulled."""
    while sent[0] < total:
        chunk = CHUNK[: total - sent[0]]
        sent[0] += len(chunk)
        yield chunk


def run(tmp: Path, mb: int, path: str, declared: bool, cap: int | None) -> dict[str, Any]:
    total = mb * 1_000_000
    with Server(tmp, cap) as server:
        # One ordinary turn first, so "before" is a server that has done some work.
        httpx.post(f"{server.url}/persona/chat", json={"message": "hello"}, timeout=60)
        events_before = server.events()
        before = memory_kib(server.proc.pid)
        sent = [0]
        headers = {"content-type": "application/x-www-form-urlencoded"}
        if declared:
            headers["content-length"] = str(total)
        started = time.perf_counter()
        try:
            response = httpx.post(
                f"{server.url}{path}", content=upload(total, sent), headers=headers, timeout=600
            )
            status: int | str = response.status_code
        except httpx.HTTPError as exc:
            status = f"{type(exc).__name__}"
        elapsed = time.perf_counter() - started
        after = memory_kib(server.proc.pid)
        time.sleep(0.2)  # let a turn the body may have started land before counting
        written = server.events() - events_before
    return {
        "mode": "content-length" if declared else "chunked",
        "cap": "uncapped" if cap else "default",
        "status": status,
        "seconds": elapsed,
        "sent_mb": sent[0] / 1_000_000,
        "before": before,
        "after": after,
        "events_written": written,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300, help="body size in MB (default 300)")
    parser.add_argument("--path", default="/chats/chat-bench/messages")
    parser.add_argument("--uncapped", action="store_true", help="also run with the cap raised")
    args = parser.parse_args(argv)
    runs: list[tuple[bool, int | None]] = [(True, None), (False, None)]
    if args.uncapped:
        runs.append((True, 2 * args.mb * 1_000_000))
    results = []
    print(f"POST {args.path} with a {args.mb} MB streamed body (64 KiB chunks)\n")
    print(
        "| body | cap | status | time | sent before the answer | server peak RSS"
        " before → after | RSS after | events written |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for declared, cap in runs:
            r = run(Path(tmp), args.mb, args.path, declared, cap)
            results.append(r)
            print(
                f"| {r['mode']} | {r['cap']} | {r['status']} | {r['seconds']:.2f} s"
                f" | {r['sent_mb']:.1f} MB | {mib(r['before'], 'VmHWM')} →"
                f" {mib(r['after'], 'VmHWM')} | {mib(r['after'], 'VmRSS')}"
                f" | {r['events_written']} |",
                flush=True,
            )
    return results


if __name__ == "__main__":
    main()
