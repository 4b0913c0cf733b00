"""Real turns on the embedded SmolLM2 model: time to first token, decode speed, overhead.

Run: python bench/local_model.py [--turns N]. Uses the real local backend (no network);
prints p50/p95 over N turns of one growing chat, after one warm-up turn.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from turn_overhead import _BenchSettings, percentile

from persona.engine import Engine
from persona.llm.base import GenOptions
from persona.pipeline.context import TurnRequest

MESSAGES = (
    "Hi! I'm Sam. I keep a little boat on the lake.",
    "What do you like to do on quiet mornings?",
    "My sister Ana just moved to Lisbon.",
    "Can you suggest a name for my boat?",
    "Do you remember where my sister lives?",
    "I feel a bit tired today.",
    "Tell me something about old maps.",
    "What should I cook tonight?",
)


async def run(turns: int, max_tokens: int) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = _BenchSettings(
            db_path=Path(tmp) / "local.db",
            llm={"provider": "local"},
            generation={"max_tokens": max_tokens},
        )
        engine = Engine(settings)
        await engine.start()
        rows = []
        try:
            for i in range(turns + 1):
                request = TurnRequest(
                    MESSAGES[i % len(MESSAGES)],
                    "local",
                    "bench",
                    "default",
                    0.0,
                    GenOptions(max_tokens=max_tokens, temperature=0.7),
                )
                result = await (await engine.runner.submit(request)).result
                meta = result.meta.model_dump(mode="json")
                if i == 0:
                    continue  # warm-up
                llm = meta["llm"]
                decode_s = max(llm["generation_ms"] - llm["first_token_ms"], 1e-6) / 1000
                rows.append(
                    {
                        "prompt_tokens": llm["prompt_tokens"],
                        "first_token_ms": llm["first_token_ms"],
                        "tokens_per_s": max(llm["completion_tokens"] - 1, 0) / decode_s,
                        "overhead_ms": meta["timing_ms"]["overhead_total"],
                        "turn_ms": meta["timing_ms"]["overhead_total"]
                        + meta["timing_ms"]["speaker"],
                    }
                )
        finally:
            await engine.stop()
        return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args.turns, args.max_tokens))
    print(
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"SmolLM2-135M-Instruct Q4_1, {args.turns} turns of one chat, max_tokens "
        f"{args.max_tokens}, after 1 warm-up turn.\n"
    )
    print("| measure | p50 | p95 |\n|---|---:|---:|")
    for key, label in (
        ("prompt_tokens", "prompt tokens"),
        ("first_token_ms", "time to first token (ms)"),
        ("tokens_per_s", "decode speed (tokens/s)"),
        ("overhead_ms", "pipeline overhead outside the LLM (ms)"),
        ("turn_ms", "whole turn (ms)"),
    ):
        values = [r[key] for r in rows]
        print(f"| {label} | {percentile(values, 50):.1f} | {percentile(values, 95):.1f} |")


if __name__ == "__main__":
    main()
