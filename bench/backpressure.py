"""Backpressure over real HTTP: a flood of posts to one chat, and streams that never read.

Run: python bench/backpressure.py [--posts 1000] [--turns 400] [--subscribers 20]
[--delay 0.002] [--server-path DIR] [--json FILE]. Each phase starts its own server (this
script with `--serve`: uvicorn on a free loopback port, the scripted backend sleeping
`--delay` before each chunk) on a fresh database, and reads the server's VmRSS and VmHWM
(peak) from /proc before and after.

flood: `--posts` form posts to one chat, 50 in flight at a time; counts 202 and 429, then
  waits until every accepted turn has ended.
slow: `--subscribers` streams of one chat (half the HTML page stream, half the JSON event
  stream) connect with a 4 KiB receive buffer and never read, while `--turns` turns run
  on that chat one after another (each message 200 characters: about 40 deltas a turn).
  `no_streams` runs the same turns with no stream open: what the turns cost by themselves.

`--server-path` runs the server from another checkout (e.g. a `git worktree` of an older
commit) to compare; the client side is this script either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
START_S = 60
IN_FLIGHT = 50
DRAIN_S = 600
# 200 characters: the scripted echo repeats it, about 40 chunks.
MESSAGE = ("the tide came in over the old stone pier and " * 5)[:200]


# ---- the server side (run as a subprocess) -------------------------------------------------


def serve(port: int, db_path: str, delay_s: float) -> None:
    """Serve the app with a scripted backend that sleeps before each chunk."""
    import uvicorn

    from persona.clock import FixedClock
    from persona.config import Settings
    from persona.engine import Engine
    from persona.llm.scripted import ScriptedBackend
    from persona.web.app import create_app

    settings = Settings(db_path=Path(db_path), llm={"provider": "scripted"})
    engine = Engine(settings, backend=ScriptedBackend(delay_s=delay_s), clock=FixedClock())
    uvicorn.run(create_app(engine=engine), host="127.0.0.1", port=port, log_level="warning")


# ---- the client side -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident size) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


@contextmanager
def server(delay_s: float, server_path: Path | None) -> Iterator[tuple[str, int]]:
    """Start a server subprocess on a fresh database; yield (url, pid)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PERSONA_") and k.lower() not in ("http_proxy", "https_proxy")
        }
        env["PERSONA_CONFIG_FILE"] = str(Path(tmp) / "absent.toml")
        env["NO_PROXY"] = "127.0.0.1"
        if server_path is not None:
            env["PYTHONPATH"] = str(server_path)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(port)]
        cmd += [str(Path(tmp) / "bench.db"), str(delay_s)]
        proc = subprocess.Popen(cmd, env=env, cwd=server_path or ROOT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_S
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=1).json().get("model") == "ready":
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the bench server did not start")
                time.sleep(0.1)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def ended(url: str, chat_id: str) -> int:
    """Turns of a chat that have ended (completed or failed)."""
    r = httpx.get(f"{url}/persona/chat/{chat_id}", timeout=30)
    if r.status_code == 404:
        return 0
    return sum(
        m["turn_status"] in ("completed", "failed")
        for m in r.json()["messages"]
        if m["role"] == "user"
    )


async def _flood(url: str, posts: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    gate = asyncio.Semaphore(IN_FLIGHT)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def post(i: int) -> None:
            async with gate:
                r = await http.post("/chats/flood/messages", data={"message": f"message {i}"})
                counts[str(r.status_code)] = counts.get(str(r.status_code), 0) + 1

        await asyncio.gather(*(post(i) for i in range(posts)))
    return counts


def flood(posts: int, delay_s: float, server_path: Path | None) -> dict[str, Any]:
    """Many quick posts to one chat: how many are accepted, what it costs the server."""
    with server(delay_s, server_path) as (url, pid):
        before = memory_kib(pid)
        t0 = time.perf_counter()
        counts = asyncio.run(_flood(url, posts))
        posted_s = time.perf_counter() - t0
        deadline = time.monotonic() + DRAIN_S
        while ended(url, "flood") < counts.get("202", 0) and time.monotonic() < deadline:
            time.sleep(0.2)
        drained_s = time.perf_counter() - t0
        after = memory_kib(pid)
    return {
        "posts": posts,
        "status_counts": counts,
        "posting_s": round(posted_s, 2),
        "until_all_ended_s": round(drained_s, 2),
        "rss_kib": {"before": before, "after": after},
        "peak_growth_kib": after["VmHWM"] - before["VmHWM"],
    }


def _stuck_stream(port: int, path: str) -> socket.socket:
    """Open an SSE stream and never read it (a small receive window fills at once)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
    sock.sendall(request.encode())
    return sock


def slow(turns: int, subscribers: int, delay_s: float, server_path: Path | None) -> dict[str, Any]:
    """Streams that never read while turns run: what they cost the server."""
    with server(delay_s, server_path) as (url, pid):
        port = int(url.rsplit(":", 1)[1])
        with httpx.Client(base_url=url, timeout=60) as http:
            http.post("/persona/chat", json={"message": "hello", "session_id": "slow"})
            before = memory_kib(pid)
            paths = ["/chats/slow/stream", "/persona/chat/slow/events"]
            socks = [_stuck_stream(port, paths[i % 2]) for i in range(subscribers)]
            try:
                t0 = time.perf_counter()
                samples = []
                for i in range(turns):
                    r = http.post("/persona/chat", json={"message": MESSAGE, "session_id": "slow"})
                    r.raise_for_status()
                    if (i + 1) % max(1, turns // 4) == 0:
                        samples.append({"turns": i + 1, **memory_kib(pid)})
                elapsed = time.perf_counter() - t0
                after = memory_kib(pid)
            finally:
                for sock in socks:
                    sock.close()
    return {
        "turns": turns,
        "subscribers": subscribers,
        "turns_per_s": round(turns / elapsed, 1),
        "rss_kib": {"before": before, "after": after},
        "samples": samples,
        "peak_growth_kib": after["VmHWM"] - before["VmHWM"],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=400)
    parser.add_argument("--subscribers", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.002, help="seconds before each chunk")
    parser.add_argument("--server-path", type=Path, help="run the server from this checkout")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--serve", nargs=3, metavar=("PORT", "DB", "DELAY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], float(args.serve[2]))
        return {}
    report = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "server": str(args.server_path or "this checkout"),
        "delay_s": args.delay,
        "flood": flood(args.posts, args.delay, args.server_path),
        # The same turns with no stream open: the growth the turns cost by themselves.
        "no_streams": slow(args.turns, 0, args.delay, args.server_path),
        "slow": slow(args.turns, args.subscribers, args.delay, args.server_path),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
