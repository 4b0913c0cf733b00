"""What each model fault does to a turn, through the whole app over real HTTP.

Run: python bench/fault_modes.py [--first-token 1.0] [--call 2.0] [--turn 3.0] [--json F].
Starts the fake OpenAI-compatible server of the tests (`tests/fake_openai.py`, imported by
putting `tests/` on sys.path, as is `tests/helpers.py` for its loopback uvicorn server),
points an Engine with the `openai` backend at it, and for each mode runs one turn through
`POST /persona/chat` and one through `POST /persona/chat/stream`, then reads what was
stored (`GET /persona/traces/{id}`) and runs the chat's next turn. Prints a markdown table:
mode, what the client got, what was stored, the time the JSON request took, and whether
the chat went on. Offline; the deadlines are the flags (small, so faults end quickly).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import httpx
from fake_openai import FakeOpenAI, Mode
from helpers import LiveServer, read_sse

from persona.clock import FixedClock
from persona.config import LLMSettings, Settings
from persona.engine import Engine
from persona.events import (
    ChatStarted,
    ChatStateRecorded,
    EdgeAsserted,
    MemoryRetrieval,
    MemoryWritten,
    Metacognition,
    Perception,
    TelemetryRecorded,
    Workspace,
)

# Shown folded: the decisions every turn records before its reply, and the post-reply ones.
FOLDED = {
    "decisions": {c.event_type for c in (Perception, MemoryRetrieval, Workspace, Metacognition)},
    "post": {
        c.event_type for c in (MemoryWritten, EdgeAsserted, TelemetryRecorded, ChatStateRecorded)
    },
}
HANG_GUARD_S = 120.0


def modes(first_token_s: float) -> list[tuple[str, Mode]]:
    """(row label, the fake's answer) for every fault, and the normal finishes."""
    return [
        ("normal (finish stop)", Mode("normal")),
        ("finish length", Mode("length")),
        ("3 chunks, then closed (no finish, no [DONE])", Mode("truncated")),
        ("200 JSON body, not SSE", Mode("json_body")),
        ("200 text body, not SSE", Mode("text_body")),
        ("bare data: [DONE]", Mode("bare_done")),
        ("finish content_filter", Mode("content_filter")),
        ("empty reply (finish stop)", Mode("normal", text="")),
        (": ping keep-alives forever", Mode("pings")),
        ("first token after 3x the deadline", Mode("slow_first", delay_s=3 * first_token_s)),
        ("tokens trickle forever", Mode("trickle")),
        ("HTTP 500", Mode("error", status=500, message="upstream fell over")),
    ]


def stored_summary(events: list[dict[str, Any]]) -> str:
    """The turn's event types (chat.started left out), stage and post events counted."""
    shown: list[str] = []
    counts = dict.fromkeys(FOLDED, 0)
    for kind in (e["type"] for e in events if e["type"] != ChatStarted.event_type):
        group = next((name for name, types in FOLDED.items() if kind in types), None)
        if group is None:
            shown.append(kind)
            continue
        if not counts[group]:
            shown.append(group)
        counts[group] += 1
    shown = [f"{counts[item]} {item}" if item in counts else item for item in shown]
    failed = next((e["payload"] for e in events if e["type"] == "turn.failed"), None)
    text = ", ".join(shown)
    if failed is not None:
        partial = failed.get("partial_reply")
        text += f" (partial_reply: {len(partial)} chars)" if partial else " (no partial)"
    return text


def short(error: str, limit: int = 110) -> str:
    """An error for a table cell: the part after the backend's address, cut to `limit`."""
    text = error.split("): ", 1)[-1] if "backend (" in error else error
    text = text.removeprefix("LLM failed: ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def frames_summary(frames: list[tuple[str, Any]]) -> str:
    """SSE frames as `start, delta×n, error`."""
    out: list[str] = []
    for kind, _ in frames:
        if out and out[-1].split("×")[0] == kind:
            count = int(out[-1].split("×")[1]) + 1 if "×" in out[-1] else 2
            out[-1] = f"{kind}×{count}"
        else:
            out.append(kind)
    return ", ".join(out)


def run_mode(
    client: httpx.Client, fake: FakeOpenAI, label: str, mode: Mode, n: int
) -> dict[str, Any]:
    """One mode through both endpoints, then the chat's next turn."""
    session = f"fault-{n}"
    fake.enqueue(mode)
    t0 = time.perf_counter()
    r = client.post("/persona/chat", json={"message": "hello", "session_id": session})
    took = time.perf_counter() - t0
    body = r.json()
    trace_id = body.get("trace_id") or body.get("meta", {}).get("trace_id")
    events = client.get(f"/persona/traces/{trace_id}").json()["events"]
    if r.status_code == 200:
        got = "200, reply"
    else:
        got = f"{r.status_code} + trace_id: {short(body['error'])}"

    fake.enqueue(mode)
    stream_body = {"message": "hello", "session_id": f"{session}-sse"}
    t0 = time.perf_counter()
    with client.stream("POST", "/persona/chat/stream", json=stream_body) as response:
        frames = list(read_sse(response))
    sse_took = time.perf_counter() - t0

    fake.enqueue("normal")
    after = client.post("/persona/chat", json={"message": "again?", "session_id": session})
    return {
        "mode": label,
        "client": got,
        "sse": frames_summary(frames),
        "stored": stored_summary(events),
        "json_s": round(took, 2),
        "sse_s": round(sse_took, 2),
        "next_turn": after.status_code,
    }


def run(llm: dict[str, Any], rows: list[tuple[str, Mode]]) -> list[dict[str, Any]]:
    """Serve the app against a fresh fake server and database; run each row."""
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI() as fake:
        settings = Settings.model_validate(
            {
                "db_path": Path(tmp) / "persona.db",
                "llm": LLMSettings(provider="openai", base_url=fake.base_url, **llm),
            }
        )
        with (
            LiveServer(Engine(settings, clock=FixedClock())) as server,
            httpx.Client(base_url=server.url, timeout=HANG_GUARD_S) as client,
        ):
            return [run_mode(client, fake, label, mode, n) for n, (label, mode) in enumerate(rows)]


def table(results: list[dict[str, Any]], deadlines: str) -> str:
    """The results as markdown."""
    lines = [
        f"Deadlines: {deadlines}.",
        "",
        "| mode | client gets (POST /persona/chat) | SSE frames | stored (the turn's events)"
        " | time JSON / SSE (s) | next turn |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['client']} | {r['sse']} | {r['stored']}"
            f" | {r['json_s']:.2f} / {r['sse_s']:.2f} | {r['next_turn']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-token", type=float, default=1.0, help="first-token deadline")
    parser.add_argument("--call", type=float, default=2.0, help="total deadline per call")
    parser.add_argument("--turn", type=float, default=3.0, help="deadline per turn")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    llm = {
        "first_token_timeout_s": args.first_token,
        "timeout_s": args.call,
        "turn_timeout_s": args.turn,
    }
    results = run(llm, modes(args.first_token))
    # The turn's own deadline: call deadlines far off, tokens that never end.
    turn_only = {"first_token_timeout_s": 600.0, "timeout_s": 600.0, "turn_timeout_s": args.turn}
    late = run(turn_only, [("tokens trickle forever (turn deadline only)", Mode("trickle"))])
    results += late
    deadlines = (
        f"first token {args.first_token:g} s, call {args.call:g} s, turn {args.turn:g} s"
        " (last row: call deadlines 600 s)"
    )
    print(table(results, deadlines))
    report = {"deadlines": llm, "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
