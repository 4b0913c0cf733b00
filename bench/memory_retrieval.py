"""Measure memory retrieval alone, as the store grows to 10k and 100k memories.

For each size: a fresh temporary database, one persona, that many episodic memories
seeded as `memory.written` events through the store's normal append-and-project path
(chats of 40, so each memory's `context` column holds the two before it, as in real
chats), then `retrieve` (exactly what the memory stage runs) in a reader snapshot for a
fixed set of messages in several classes: questions about people, places and things,
small talk, messages containing "said", messages naming the persona, messages of very
common words, and questions about nothing remembered. Reports p50/p95/max per size and
per class, candidates and dropped terms, then, at the largest size, the effect of
`memory.max_term_matches` and where the time goes (the common-term check, the BM25
search, the rest). Offline and deterministic text (fixed seeds); speed is measured
here and never asserted in tests.

    python bench/memory_retrieval.py [--sizes 10000,100000] [--messages 400] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from persona.clock import iso
from persona.config import MemorySettings
from persona.events import MemoryWritten, PersonaCreated, Utterance
from persona.pipeline.memory import PINNED_LIMIT, retrieve, search_terms
from persona.projector import Projector
from persona.storage import queries
from persona.storage.eventlog import NewEvent
from persona.storage.store import Store

DEFAULT_SIZES: tuple[int, ...] = (10_000, 100_000)
DEFAULT_CAPS: tuple[int, ...] = (500, 2_000, 10_000, 10**9)
SEED_BATCH = 2_000
CHAT_LENGTH = 40  # memories per seeded chat
PERSONA_ID = "bench"
PERSONA_NAME = "Mira"
USER_ID = "local"
START = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
SEED_SPAN = timedelta(days=90)  # memories spread over this, so recency varies
WARMUP = 20  # retrievals before the measured ones at each size and cap


def _words(text: str) -> tuple[str, ...]:
    """Split a comma-separated word list (kept as text so it stays compact)."""
    return tuple(word.strip() for word in text.split(","))


# Relations, places and things recur in every chat, as they do in real ones; given names,
# towns and the specific details are the long tail (each in a small share of memories), so
# a question about one of them has rare terms to find it by, as in real conversation.
NAMES = _words(
    "Anna, Tom, Priya, Omar, Lucia, Ben, Hana, Felix, Grace, Ivan, Jade, Kofi, Lena, Marco, "
    "Nadia, Oscar, Paula, Quentin, Rosa, Sam, Tara, Umar, Vera, Will, Xena, Yusuf, Zoe, "
    "Aiden, Bea, Carlos, Dana, Elif, Farah, Gus, Hugo, Isla, Jonas, Kira, Leo, Maya, Nico, "
    "Olga, Pedro, Ruth, Sofia, Theo, Uma, Viktor, Wendy, Yara, Zain, Amir, Bianca, Chloe, "
    "Dmitri, Emma, Finn, Gemma, Hassan, Ines, Jack, Keiko, Liam, Mei, Noah, Olivia, Pablo, "
    "Rhea, Stefan, Tessa, Victor, Wanda, Ada, Boris, Clara, Diego, Eva, Frank, Gita, Henry"
)
TOWNS = _words(
    "Leeds, Porto, Lyon, Bergen, Cork, Kyoto, Austin, Graz, Malmo, Split, Bruges, Dundee, "
    "Nantes, Turin, Krakow, Utrecht, Seville, Tartu, Bath, Galway, Basel, Aarhus, Bologna, "
    "Ghent, Hobart, Quebec, Oaxaca, Tromso, Valencia, Zagreb"
)
DETAILS = _words(
    "avocado, badger, bagpipes, balcony, bamboo, banjo, barbecue, basil, beetroot, biscuit, "
    "blender, blueberry, bonsai, bracelet, broccoli, bulldozer, cactus, canoe, caravan, "
    "cardigan, carousel, cello, chandelier, cheesecake, chimney, chihuahua, cinnamon, "
    "clarinet, coconut, cocktail, crossword, cucumber, cupcake, dachshund, daffodil, "
    "dolphin, doughnut, dumpling, easel, eclipse, espresso, falcon, ferret, fireworks, "
    "flamingo, fondue, fossil, fountain, gazebo, gecko, geranium, ginger, glacier, "
    "gnocchi, goldfish, gondola, gooseberry, granola, hammock, hamster, harmonica, "
    "hedgehog, hummus, iguana, igloo, jellyfish, jigsaw, kayak, kimono, koala, lasagne, "
    "lavender, lemonade, lighthouse, llama, lobster, mandolin, mango, marmalade, meerkat, "
    "meteor, microscope, mistletoe, moped, mosaic, mushroom, nutmeg, oboe, octopus, omelette, "
    "orchid, origami, otter, pancake, papaya, parrot, pelican, penguin, peony, pickles, "
    "pinecone, pistachio, planetarium, pomegranate, porcupine, pretzel, pumpkin, quilt, "
    "raccoon, raspberry, ravioli, rhubarb, rosemary, saffron, sandcastle, saxophone, "
    "scooter, seahorse, shipwreck, skateboard, snorkel, snowman, sourdough, spinach, "
    "squirrel, stalactite, strawberry, submarine, sunflower, sushi, tadpole, tambourine, "
    "tangerine, terrarium, thimble, toboggan, tortoise, trampoline, treehouse, trombone, "
    "tulip, turnip, ukulele, unicycle, vinyl, volcano, waffle, walnut, walrus, waterfall, "
    "wheelbarrow, windmill, wombat, xylophone, yacht, yoghurt, zebra, zucchini"
)
PEOPLE = _words(
    "sister, brother, mother, father, neighbour, colleague, friend, grandmother, son, "
    "daughter, partner, landlord, teacher, cousin, boss, uncle, aunt, flatmate, doctor, coach"
)
PLACES = _words(
    "library, harbour, market, bakery, station, garden, museum, office, lake, mountain, "
    "cafe, hospital, park, beach, attic, cinema, river, gym, school, church, pub, airport, "
    "supermarket, forest, allotment, pool, theatre, bookshop, castle, farm"
)
THINGS = _words(
    "map, bicycle, guitar, notebook, camera, letter, recipe, telescope, painting, violin, "
    "novel, puzzle, compass, lantern, kettle, umbrella, passport, watch, scarf, photograph, "
    "laptop, necklace, plant, jacket, ring, diary, postcard, backpack, piano, sketchbook, "
    "headphones, tent, cake, boots, mug, vase, clock, radio, blanket, kite"
)
ACTIVITIES = _words(
    "hiking, baking bread, painting watercolours, running, learning Spanish, "
    "fixing the roof, planting tomatoes, reading poetry, studying for exams, playing chess, "
    "sailing, knitting, birdwatching, cooking curry, swimming, climbing, journaling, "
    "practising yoga, writing songs, restoring furniture, volunteering, cycling to work, "
    "learning to drive, making pottery, training for a marathon"
)
FEELINGS = _words(
    "anxious, happy, tired, proud, lonely, excited, nervous, calm, frustrated, hopeful, "
    "grateful, overwhelmed, sad, curious, relieved, guilty, restless, content"
)
TIMES = _words(
    "this morning, last night, yesterday, on Sunday, last week, after work, before dinner, "
    "during the storm, at dawn, over the holidays, last summer, on my birthday, in spring"
)
USER_LINES = (
    "I went to the {place} with my {person} {time} and we found an old {thing}.",
    "I've been {activity} {time} and I feel {feeling} about it.",
    "My {person} gave me a {thing} for my birthday; it reminds me of the {place}.",
    "I lost my {thing} near the {place} {time}.",
    "I feel {feeling} because my {person} is moving away from {town}.",
    "Can you remind me to bring the {thing} when I visit {name}?",
    "We argued about {activity} at the {place} and now I feel {feeling}.",
    "{name} said the {place} in {town} is closing, which made me {feeling}.",
    "My {person} {name} told me they started {activity}.",
    "I think I'll go back to {town} soon, I really miss the {place} there.",
    "{persona}, do you think I should tell {name} about the {thing}?",
    "Honestly today was a long day, I just want to rest and maybe do some {activity}.",
    "I keep thinking about what my {person} said {time}.",
    "We saw a {detail} at the {place} in {town} {time}!",
    "My {person} bought a {detail} and a {thing}, no idea why.",
    "I tried making {detail} {time}, it cost me {number} pounds.",
    "{name} is obsessed with the {detail} from the {place}.",
)
REPLY_LINES = (
    "That sounds lovely. Tell me more about the {thing}.",
    "You mentioned the {place} before. How is your {person} doing?",
    "It makes sense to feel {feeling}. What would help right now?",
    "I will remember the {thing}. Is {activity} still part of your week?",
    "How did {name} take it?",
    "{town} sounds like a place with a lot of memories for you.",
    "A {detail}? That is not something you see every day.",
    "That must have been hard. What did you say back?",
)
# The messages retrieval is measured on, by class.
MESSAGE_CLASSES: dict[str, tuple[str, ...]] = {
    "question": (
        "Do you remember what I told you about the {thing} from the {place}?",
        "What did my {person} give me, was it the {thing}?",
        "When did I last go to the {place} in {town}?",
        "Who is {name} again? I think I mentioned them with the {thing}.",
        "Where did I lose my {thing}?",
        "What was the {detail} thing with {name}?",
        "Did I ever tell you about the {detail} at the {place}?",
    ),
    "small_talk": (
        "hello! how are you?",
        "good morning :)",
        "thanks, that helps a lot",
        "haha yes exactly",
        "I'm back, sorry it took a while",
        "what have you been up to?",
    ),
    "said": (
        "You said something about the {thing} last week, what was it?",
        "My {person} said I should try {activity}, what do you think?",
        "What did I say about {name}?",
        "{name} said I was being {feeling}, was I?",
    ),
    "persona_name": (
        "{persona}, do you remember the {place}?",
        "Thanks {persona}, you always know what to say.",
        "Hey {persona}! Guess what happened {time}.",
        "{persona} what do you think about {activity}?",
    ),
    "common": (
        "I think I really want to do something good today, what do you think?",
        "I feel tired and I don't know what to do about it.",
        "Do you remember the time we talked about my day?",
        "I just want to go back and think about it again, maybe tomorrow.",
        "I miss my friend and my family, it was a long week.",
    ),
    "unseen": (  # no word of these is in any seeded memory
        "Is a platypus a mammal?",
        "What is the capital of Mongolia?",
        "Can you explain quantum entanglement simply?",
        "My dentist appointment is on Thursday afternoon.",
    ),
}
CLASSES: tuple[str, ...] = tuple(MESSAGE_CLASSES)


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        person=rng.choice(PEOPLE),
        place=rng.choice(PLACES),
        thing=rng.choice(THINGS),
        activity=rng.choice(ACTIVITIES),
        feeling=rng.choice(FEELINGS),
        time=rng.choice(TIMES),
        name=rng.choice(NAMES),
        town=rng.choice(TOWNS),
        detail=rng.choice(DETAILS),
        number=rng.randint(3, 400),
        persona=PERSONA_NAME,
    )


def memory_events(count: int, rng: random.Random) -> list[NewEvent]:
    """`count` memory.written events shaped like the ones turns write, oldest first."""
    step = SEED_SPAN / max(count, 1)
    events = []
    for i in range(count):
        chat_id = f"seed-chat-{i // CHAT_LENGTH:05d}"
        turn_id = f"{rng.getrandbits(128):032x}"
        user = " ".join(_fill(rng.choice(USER_LINES), rng) for _ in range(rng.randint(1, 3)))
        reply = _fill(rng.choice(REPLY_LINES), rng)
        events.append(
            NewEvent(
                payload=MemoryWritten(
                    memory_id=f"ep:{turn_id}",
                    persona_id=PERSONA_ID,
                    tier="L1",
                    kind="exchange",
                    chat_id=chat_id,
                    turn_id=turn_id,
                    content=f"{user}\n{reply}",
                    said=[
                        Utterance(role="user", name="User", text=user),
                        Utterance(role="persona", name=PERSONA_NAME, text=reply),
                    ],
                    importance=round(rng.uniform(0.2, 0.9), 4),
                    witnesses=[USER_ID],
                ),
                stream_id=f"chat:{chat_id}",
                actor="episodic",
                trace_id=f"{rng.getrandbits(128):032x}",
                chat_time=iso(START + step * i),
                event_id=f"{rng.getrandbits(128):032x}",
            )
        )
    return events


def messages(count: int, rng: random.Random) -> list[tuple[str, str]]:
    """`count` (class, message) pairs, the classes taking turns."""
    out = []
    for i in range(count):
        cls = CLASSES[i % len(CLASSES)]
        out.append((cls, _fill(rng.choice(MESSAGE_CLASSES[cls]), rng)))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def seed(store: Store, count: int, rng: random.Random) -> dict[str, float]:
    """Create the persona and append `count` memories in batches; return the throughput."""
    store.sync_append(
        [
            NewEvent(
                payload=PersonaCreated(
                    persona_id=PERSONA_ID,
                    name=PERSONA_NAME,
                    description="A bench persona.",
                    genesis=f"I am {PERSONA_NAME}, a companion who remembers.",
                ),
                stream_id=f"persona:{PERSONA_ID}",
                actor="system",
                chat_time=iso(START),
            )
        ]
    )
    events = memory_events(count, rng)
    t0 = time.perf_counter()
    for start in range(0, len(events), SEED_BATCH):
        store.sync_append(events[start : start + SEED_BATCH])
    seconds = time.perf_counter() - t0
    return {
        "events": count,
        "seconds": round(seconds, 3),
        "events_per_s": round(count / seconds, 1) if seconds > 0 else 0.0,
    }


@dataclass(frozen=True)
class Sample:
    """One measured retrieval."""

    cls: str
    ms: float
    candidates: int
    dropped: int
    terms: int


def measure(
    store: Store, msgs: list[tuple[str, str]], now: datetime, settings: MemorySettings
) -> list[Sample]:
    """Time `retrieve` through a reader snapshot for each message, after a warm-up."""
    for _, message in msgs[:WARMUP]:
        store.sync_read(retrieve, PERSONA_ID, USER_ID, message, now, settings)
    out = []
    for cls, message in msgs:
        t0 = time.perf_counter()
        got = store.sync_read(retrieve, PERSONA_ID, USER_ID, message, now, settings)
        ms = (time.perf_counter() - t0) * 1000
        terms = len(got.query.split()) if got.query else 0
        out.append(Sample(cls, ms, got.candidates, len(got.dropped_terms), terms))
    return out


def summarize(samples: Sequence[Sample]) -> dict[str, float]:
    """p50/p95/max in ms, mean candidates, terms and dropped terms."""
    ms = [s.ms for s in samples]
    n = max(len(samples), 1)
    return {
        "n": len(samples),
        "p50": round(percentile(ms, 50), 3),
        "p95": round(percentile(ms, 95), 3),
        "max": round(max(ms, default=0.0), 3),
        "candidates": round(sum(s.candidates for s in samples) / n, 1),
        "terms": round(sum(s.terms for s in samples) / n, 2),
        "dropped": round(sum(s.dropped for s in samples) / n, 2),
    }


def by_class(samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
    """The summary of all samples (`all`) and of each message class."""
    out = {"all": summarize(samples)}
    for cls in CLASSES:
        out[cls] = summarize([s for s in samples if s.cls == cls])
    return out


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn(*args)
    return value, (time.perf_counter() - t0) * 1000


def _parts(
    conn: sqlite3.Connection, message: str, now: datetime, s: MemorySettings
) -> dict[str, float]:
    """One retrieval's parts, timed in one snapshot: the common-term check, the BM25
    search on the kept terms, the core and pinned memories, and the whole `retrieve`
    (what the parts leave is building and fusing the candidates)."""
    terms = search_terms(message)
    dropped, common_ms = _timed(queries.common_terms, conn, terms, s.max_term_matches)
    kept = [t for t in terms if t not in dropped]
    _, search_ms = _timed(
        queries.search_memories,
        conn,
        PERSONA_ID,
        USER_ID,
        kept,
        s.fts_candidates,
        s.weight_context,
    )
    _, core_ms = _timed(queries.core_memory, conn, PERSONA_ID)
    _, pinned_ms = _timed(queries.pinned_memories, conn, PERSONA_ID, USER_ID, PINNED_LIMIT)
    _, total_ms = _timed(retrieve, conn, PERSONA_ID, USER_ID, message, now, s)
    return {
        "common_terms": common_ms,
        "search": search_ms,
        "core": core_ms,
        "pinned": pinned_ms,
        "retrieve": total_ms,
    }


PARTS: tuple[str, ...] = ("common_terms", "search", "core", "pinned", "retrieve")


def breakdown(
    store: Store, msgs: list[tuple[str, str]], now: datetime, s: MemorySettings
) -> dict[str, dict[str, float]]:
    """p50/p95 of each part of retrieval over the messages (default settings)."""
    rows = [store.sync_read(_parts, message, now, s) for _, message in msgs]
    return {
        part: {
            "p50": round(percentile([r[part] for r in rows], 50), 3),
            "p95": round(percentile([r[part] for r in rows], 95), 3),
        }
        for part in PARTS
    }


def bench_size(
    size: int,
    msgs: list[tuple[str, str]],
    caps: Sequence[int],
    seed_value: int,
    workdir: Path,
    sweep: bool,
) -> dict[str, Any]:
    """Seed a fresh DB with `size` memories and measure retrieval on it."""
    rng = random.Random(seed_value * 1_000_003 + size)
    store = Store(workdir / f"retrieval-{size}.db", Projector())
    store.open()
    try:
        append = seed(store, size, rng)
        stored = store.sync_read(queries.count_memories, PERSONA_ID)
        now = START + SEED_SPAN + timedelta(hours=1)
        result: dict[str, Any] = {
            "memories": size,
            "memories_in_store": stored,
            "append": append,
            "retrieval_ms": by_class(measure(store, msgs, now, MemorySettings())),
        }
        if sweep:
            result["caps"] = {
                str(cap): summarize(measure(store, msgs, now, MemorySettings(max_term_matches=cap)))
                for cap in caps
            }
            result["breakdown_ms"] = breakdown(store, msgs, now, MemorySettings())
    finally:
        store.close()
    return result


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(terse=True),
    }


def run_bench(
    sizes: Sequence[int],
    message_count: int,
    caps: Sequence[int] = DEFAULT_CAPS,
    seed_value: int = 7,
    keep: Path | None = None,
) -> dict[str, Any]:
    """The whole benchmark as a JSON-ready report (databases kept in `keep` when given)."""
    msgs = messages(message_count, random.Random(seed_value))
    largest = max(sizes)
    with tempfile.TemporaryDirectory(prefix="persona-bench-") as tmp:
        workdir = keep or Path(tmp)
        results = [
            bench_size(size, msgs, caps, seed_value, workdir, size == largest) for size in sizes
        ]
    return {
        "machine": machine_info(),
        "params": {
            "sizes": list(sizes),
            "messages": message_count,
            "caps": list(caps),
            "seed": seed_value,
            "defaults": MemorySettings().model_dump(
                include={"max_term_matches", "fts_candidates", "recent_candidates", "top_k"}
            ),
        },
        "results": results,
    }


def _cap_label(cap: int) -> str:
    return "unlimited" if cap >= 10**9 else f"{cap:,}"


def render_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: machine line, per-class table, cap sweep, breakdown, seeding."""
    m, p = report["machine"], report["params"]
    d = p["defaults"]
    lines = [
        f"Machine: {m['cpu_count']} CPUs, Python {m['python']}, SQLite {m['sqlite']},"
        f" {m['platform']}. {p['messages']} messages per size, seed {p['seed']};"
        f" defaults max_term_matches {d['max_term_matches']:,},"
        f" fts_candidates {d['fts_candidates']}.",
        "",
        "`retrieve` in ms, p50 / p95 / max (mean candidates; mean terms dropped of the query's):",
        "",
        "| memories | class | n | p50 | p95 | max | candidates | dropped / terms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        for cls, s in r["retrieval_ms"].items():
            lines.append(
                f"| {r['memories']:,} | {cls} | {s['n']} | {s['p50']:.2f} | {s['p95']:.2f}"
                f" | {s['max']:.2f} | {s['candidates']:.1f} | {s['dropped']:.2f}"
                f" / {s['terms']:.2f} |"
            )
    for r in report["results"]:
        if "caps" not in r:
            continue
        lines += [
            "",
            f"`max_term_matches` at {r['memories']:,} memories (all messages):",
            "",
            "| max_term_matches | p50 | p95 | max | candidates | dropped / terms |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for cap, s in r["caps"].items():
            lines.append(
                f"| {_cap_label(int(cap))} | {s['p50']:.2f} | {s['p95']:.2f} | {s['max']:.2f}"
                f" | {s['candidates']:.1f} | {s['dropped']:.2f} / {s['terms']:.2f} |"
            )
        b = r["breakdown_ms"]
        lines += [
            "",
            f"Where the time goes at {r['memories']:,} memories (defaults; ms, p50 / p95):",
            "",
            "| common_terms | search (BM25) | core | pinned | retrieve (whole) |",
            "|---:|---:|---:|---:|---:|",
            "| " + " | ".join(f"{b[k]['p50']:.2f} / {b[k]['p95']:.2f}" for k in PARTS) + " |",
        ]
    lines += [
        "",
        "| seeding | memories | seconds | events/s |",
        "|---|---:|---:|---:|",
    ]
    for r in report["results"]:
        a = r["append"]
        lines.append(
            f"| batches of {SEED_BATCH:,} | {r['memories']:,} | {a['seconds']:.1f}"
            f" | {a['events_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("positive integers, comma-separated")
    return list(dict.fromkeys(values))  # a repeated size would reuse its database file


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark from the command line; print markdown, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=_ints,
        default=list(DEFAULT_SIZES),
        help="memory-store sizes, comma-separated (default 10000,100000)",
    )
    parser.add_argument("--messages", type=int, default=400, help="measured messages per size")
    parser.add_argument(
        "--caps",
        type=_ints,
        default=list(DEFAULT_CAPS),
        help="max_term_matches values swept at the largest size",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed for text and messages")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument(
        "--keep", type=Path, help="write the databases to this (new) folder and keep them"
    )
    args = parser.parse_args(argv)
    if args.messages < 1:
        parser.error("--messages must be at least 1")
    if args.keep is not None:
        args.keep.mkdir(parents=True)  # a fresh folder: an old database would be reseeded
    report = run_bench(args.sizes, args.messages, args.caps, args.seed, args.keep)
    print(render_markdown(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
