"""Reply quality of the default local model over a fixed 20-turn conversation.

Run: python bench/reply_quality.py [--runs 3] [--seed 1] [--json report.json] [--log]
[--set generation.temperature=0.5 ...].
Drives the real engine with the default settings (a temporary database, the local
backend, requests built exactly as the HTTP API builds them) and reports, per run and as
a mean: the share of replies that ran to the token cap, the share with a 4-gram repeated
3+ times, the share starting with a speaker label, and whether the persona's name and
the user's stated facts come back when asked. Needs the real model; not deterministic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from turn_overhead import _BenchSettings

from persona.engine import Engine
from persona.errors import TurnFailed
from persona.events import ReplyCompleted, TurnStarted
from persona.llm.base import GenOptions
from persona.storage.queries import trace_events
from persona.web.schemas import ChatRequest
from persona.web.turns import build_request

PERSONA_NAME = "Mira"  # data/personas/default.toml

# (message, what a correct reply must contain: None = nothing checked).
# Introductions, facts to remember, questions about them, a sad message, an OOC request.
CONVERSATION: tuple[tuple[str, str | None], ...] = (
    ("Hi! I'm Sam.", None),
    ("What's your name?", "name:Mira"),
    ("I have a dog called Biscuit. He's a beagle.", None),
    ("What do you like to do on quiet mornings?", None),
    ("I work as a nurse, mostly night shifts.", None),
    ("Can you suggest something easy to cook tonight?", None),
    ("What is my dog called?", "fact:Biscuit"),
    ("I feel really sad today. My grandmother is in hospital.", None),
    ("Thank you. It helps to talk.", None),
    ("((Out of character: please keep your replies short from now on.))", None),
    ("My sister Ana lives in Lisbon.", None),
    ("Tell me something about old maps.", None),
    ("Where does my sister live?", "fact:Lisbon"),
    ("What's my name?", "fact:Sam"),
    ("Do you have a dog?", None),
    ("What job do I do?", "fact:nurse"),
    ("Who are you, really?", "name:Mira"),
    ("What is my sister called?", "fact:Ana"),
    ("What's my dog's name again?", "fact:Biscuit"),
    ("I'm going to sleep now. Good night!", None),
)

# A reply that opens like a transcript line: "Mira:", "User said:", "**Mira replied**: …".
SPEAKER_LABEL = re.compile(
    rf"^\W*(?:{PERSONA_NAME}|user|assistant|human|ai|you|me|sam|a|q)\b\s*"
    r"(?:said|replied|says|replies|asked|answered)?\s*\**\s*:",
    re.IGNORECASE,
)
# The persona taking the user's facts as its own.
CLAIMS_USER_FACTS = re.compile(
    r"\b(?:my (?:dog|beagle|sister|grandmother)|I have a (?:dog|beagle)|my Biscuit)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+(?:'\w+)?")


def max_ngram_repeats(text: str, n: int = 4) -> int:
    """How often the most frequent word n-gram of `text` occurs (0 if it has none)."""
    tokens = [w.lower() for w in _WORD.findall(text)]
    grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return max(grams.values(), default=0)


def char_run(text: str) -> int:
    """The longest run of one repeated non-space character or emoji ("🐦🐦🐦" = 3)."""
    best, run, prev = 0, 0, ""
    for ch in text:
        if ch.isspace():
            continue
        run = run + 1 if ch == prev else 1
        prev = ch
        best = max(best, run)
    return best


def is_loop(text: str) -> bool:
    """A 4-gram repeated 3+ times, or one character repeated 10+ times in a row."""
    return max_ngram_repeats(text) >= 3 or char_run(text) >= 10


def check(expect: str | None, reply: str) -> bool | None:
    """Whether a reply holds what its question asked for (None: nothing to check)."""
    if expect is None:
        return None
    _, want = expect.split(":", 1)
    said = re.search(rf"\b{re.escape(want)}\b", reply, re.IGNORECASE) is not None
    denied = re.search(rf"\bnot {re.escape(want)}\b", reply, re.IGNORECASE) is not None
    return said and not denied


def overrides(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`section.name=value` pairs as settings sections (values parsed as JSON if they can)."""
    sections: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        dotted, _, raw = pair.partition("=")
        section, _, name = dotted.partition(".")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        sections.setdefault(section, {})[name] = value
    return sections


async def one_run(
    seed: int | None, log: bool, changed: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Play the conversation once on a fresh database; one row per turn."""
    rows: list[dict[str, Any]] = []
    sections = {"llm": {"provider": "local"}}
    for section, values in (changed or {}).items():
        sections[section] = {**sections.get(section, {}), **values}
    with tempfile.TemporaryDirectory() as tmp:
        settings = _BenchSettings(db_path=Path(tmp) / "quality.db", **sections)
        engine = Engine(settings)
        await engine.start()
        try:
            session = "bench-quality"
            for i, (message, expect) in enumerate(CONVERSATION):
                request = await build_request(
                    engine, ChatRequest(message=message, session_id=session)
                )
                if seed is not None and "seed" in GenOptions.model_fields:
                    gen = request.gen.model_copy(update={"seed": seed * 1000 + i})
                    request = replace(request, gen=gen)
                handle = await engine.runner.submit(request)
                try:
                    result = await handle.result
                except TurnFailed as exc:  # recorded as failed (e.g. an empty reply)
                    rows.append(failed_row(i, message, expect, str(exc)))
                    if log:
                        print(f"  {i + 1:2d}> {message}\n      FAILED: {exc}")
                    continue
                events = await engine.store.read(trace_events, result.trace_id)
                started = next(e.payload for e in events if isinstance(e.payload, TurnStarted))
                done = next(e.payload for e in events if isinstance(e.payload, ReplyCompleted))
                raw = getattr(done, "raw_reply", None) or done.reply
                meta = result.meta.model_dump(mode="json")
                row = {
                    "turn": i + 1,
                    "message": message,
                    "reply": result.reply,
                    "raw_reply": raw,
                    "flags": meta.get("reply_flags", []),
                    "completion_tokens": meta["llm"]["completion_tokens"],
                    "max_tokens": started.gen.max_tokens,
                    "gen": started.gen.model_dump(mode="json"),
                    "expect": expect,
                }
                rows.append(row)
                mark(rows)
                if log:
                    verdict = "" if row["correct"] is None else f" [{expect}: {row['correct']}]"
                    print(f"  {i + 1:2d}> {message}\n      {result.reply[:160]!r}{verdict}")
        finally:
            await engine.stop()
    return rows


def failed_row(i: int, message: str, expect: str | None, error: str) -> dict[str, Any]:
    """A turn that failed: no reply (its check counts as wrong)."""
    return {
        "turn": i + 1,
        "message": message,
        "reply": "",
        "raw_reply": "",
        "error": error,
        "flags": [],
        "completion_tokens": 0,
        "max_tokens": 0,
        "expect": expect,
    }


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def mark(rows: list[dict[str, Any]]) -> None:
    """Set each row's quality marks from its texts (so a saved report can be rescored)."""
    earlier: list[list[str]] = []
    for row in rows:
        reply, raw = row["reply"], row["raw_reply"]
        words = _words(reply)
        failed = "error" in row
        row.update(
            cap_hit=not failed and row["completion_tokens"] >= row["max_tokens"],
            loop_raw=is_loop(raw),
            loop=is_loop(reply),
            label_start_raw=bool(SPEAKER_LABEL.match(raw)),
            label_start=bool(SPEAKER_LABEL.match(reply)),
            repeat=len(words) >= 4 and words in earlier,
            claims_user_facts=bool(CLAIMS_USER_FACTS.search(reply)),
            # A label is no answer: "Mira: I don't know anyone named Mira" does not count.
            correct=check(row["expect"], SPEAKER_LABEL.sub("", reply, count=1)),
        )
        earlier.append(words)


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The run's shares (0..1) and counts."""
    n = len(rows)

    def share(key: str) -> float:
        return sum(bool(r[key]) for r in rows) / n

    names = [r["correct"] for r in rows if (r["expect"] or "").startswith("name:")]
    facts = [r["correct"] for r in rows if (r["expect"] or "").startswith("fact:")]
    return {
        "replies": n,
        "cap_hit": share("cap_hit"),
        "loop": share("loop"),
        "loop_raw": share("loop_raw"),
        "label_start": share("label_start"),
        "label_start_raw": share("label_start_raw"),
        "flagged": sum(bool(r["flags"]) for r in rows) / n,
        "failed": sum("error" in r for r in rows) / n,
        "repeat": share("repeat"),
        "claims_user_facts": share("claims_user_facts"),
        "name_correct": sum(names) / len(names),
        "facts_correct": sum(facts) / len(facts),
        "mean_completion_tokens": sum(r["completion_tokens"] for r in rows) / n,
    }


ROWS = (
    ("cap_hit", "replies hitting the token cap", "≤ 10%"),
    ("loop_raw", "4-gram ×3+ or char run, as generated", "≤ 5%"),
    ("loop", "4-gram ×3+ or char run, as stored", "≤ 5%"),
    ("label_start_raw", "starts with a speaker label, as generated", "0%"),
    ("label_start", "starts with a speaker label, as stored", "0%"),
    ("flagged", "replies flagged and trimmed", ""),
    ("failed", "turns failed (no reply)", ""),
    ("repeat", "repeats an earlier reply word for word", ""),
    ("claims_user_facts", "claims the user's dog/sister as its own", ""),
    ("name_correct", "own name given when asked (2 questions)", ""),
    ("facts_correct", "user's facts recalled when asked (6 questions)", ""),
    ("mean_completion_tokens", "mean completion tokens", ""),
)


def table(runs: list[dict[str, float]]) -> str:
    """Markdown: one row per measure, one column per run, then the mean."""
    head = "| measure | " + " | ".join(f"run {i + 1}" for i in range(len(runs)))
    lines = [head + " | mean | target |", "|---|" + "---:|" * (len(runs) + 1) + "---|"]
    for key, label, target in ROWS:
        values = [r[key] for r in runs]
        mean = sum(values) / len(values)
        fmt = (lambda v: f"{v:.0f}") if key == "mean_completion_tokens" else "{:.0%}".format
        cells = " | ".join(fmt(v) for v in values)
        lines.append(f"| {label} | {cells} | {fmt(mean)} | {target} |")
    return "\n".join(lines)


async def run(
    runs: int, seed: int | None, log: bool, changed: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    report: dict[str, Any] = {"runs": [], "settings": changed or {}}
    for k in range(runs):
        t0 = time.perf_counter()
        rows = await one_run(None if seed is None else seed + k, log, changed)
        report["runs"].append(
            {"summary": summarize(rows), "turns": rows, "seconds": time.perf_counter() - t0}
        )
    turns = (t for r in report["runs"] for t in r["turns"])
    report["gen"] = next((t["gen"] for t in turns if "gen" in t), {})
    keys = report["runs"][0]["summary"].keys()
    report["mean"] = {k: sum(r["summary"][k] for r in report["runs"]) / runs for k in keys}
    return report


def rescore(report: dict[str, Any]) -> dict[str, Any]:
    """Mark and summarize a saved report's replies again with the current rules."""
    for one in report["runs"]:
        mark(one["turns"])
        one["summary"] = summarize(one["turns"])
    keys = report["runs"][0]["summary"].keys()
    runs = len(report["runs"])
    report["mean"] = {k: sum(r["summary"][k] for r in report["runs"]) / runs for k in keys}
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (base)")
    parser.add_argument("--json", type=Path, default=None, help="write the full report")
    parser.add_argument("--log", action="store_true", help="print every reply")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.NAME=VALUE",
        help="change a setting from its default, e.g. generation.temperature=0.5",
    )
    parser.add_argument(
        "--rescore",
        type=Path,
        default=None,
        metavar="REPORT",
        help="score the replies of a saved --json report again (no model runs)",
    )
    args = parser.parse_args(argv)
    if args.rescore:
        report = rescore(json.loads(args.rescore.read_text(encoding="utf-8")))
        print(f"Rescored {args.rescore}: generation {report['gen']}.\n")
        print(table([r["summary"] for r in report["runs"]]))
        return report
    report = asyncio.run(run(args.runs, args.seed, args.log, overrides(args.set)))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    print(
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}; default local "
        f"model, {len(CONVERSATION)} turns x {args.runs} run(s); settings changed: "
        f"{report['settings'] or 'none'}; generation {report['gen']}.\n"
    )
    print(table([r["summary"] for r in report["runs"]]))
    return report


if __name__ == "__main__":
    main()
