"""The `persona` command: serve, rebuild, verify, sleep, config."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sqlite3
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from persona.config import Settings, config_file, get_settings

if TYPE_CHECKING:
    from persona.sleep import SleepReport
    from persona.storage.store import Store

log = logging.getLogger("persona.serve")


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """Run the web app with uvicorn; refuse to expose it beyond loopback without a token."""
    import uvicorn

    from persona.web.app import create_app
    from persona.web.security import access_token, is_loopback

    host = args.host or settings.host
    port = args.port or settings.port
    # The Host allow-list accepts the address bound to when it is a specific one.
    settings = settings.model_copy(update={"host": host, "port": port})
    if not is_loopback(host) and access_token(settings) is None:
        if not settings.server.insecure_expose:
            raise CommandError(
                f"refusing to listen on {host}: it is not a loopback address and no access"
                " token is set, so anyone who reaches it could read and write every chat."
                " Set PERSONA_ACCESS_TOKEN (a long random string), or to expose it without"
                " one set PERSONA_SERVER__INSECURE_EXPOSE=true ([server] insecure_expose)"
            )
        log.warning(
            "INSECURE: listening on %s with no access token (server.insecure_expose is set):"
            " anyone who reaches this address can read and write every chat",
            host,
        )
    print(f"Persona OS on http://{host}:{port}  (backend: {settings.llm.provider})", flush=True)
    app = create_app(settings)
    engine = app.state.engine

    class Server(uvicorn.Server):
        """uvicorn, telling the engine to end its turns the moment a stop is asked for."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            if engine.loop is not None:
                engine.loop.call_soon_threadsafe(engine.begin_shutdown)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=args.log_level,
        # Turns get the grace, then are cancelled and answered; open SSE streams never
        # finish on their own, so connections are waited on this long, no more.
        timeout_graceful_shutdown=math.ceil(settings.server.shutdown_grace_s) + SHUTDOWN_ANSWER_S,
    )
    Server(config).run()
    return 0


# Beyond the shutdown grace: time for cancelled turns to be recorded and their waiting
# clients answered before the HTTP server closes what is still open.
SHUTDOWN_ANSWER_S = 5


class CommandError(Exception):
    """A command that cannot run as asked; `main` prints it and exits with status 2."""


def _open(settings: Settings) -> sqlite3.Connection:
    """Open and migrate an existing DB (CommandError when there is none: never create one)."""
    from persona.projector import Projector
    from persona.storage.db import connect
    from persona.storage.migrations import migrate

    if not settings.db_path.is_file():
        # A mistyped path must not become a fresh empty log that "verifies" fine.
        raise CommandError(
            f"no database at {settings.db_path} (check PERSONA_DB_PATH or db_path in the"
            " config file); nothing was created"
        )
    conn = connect(settings.db_path)
    # The same migration path as the server's: a reshaping migration replays the log.
    migrate(conn, settings.db_path, Projector().rebuild)
    return conn


def cmd_rebuild(settings: Settings, args: argparse.Namespace) -> int:
    """Drop every projection and replay the log into it."""
    from tqdm import tqdm

    from persona.projector.replay import rebuild
    from persona.storage.eventlog import count_events

    conn = _open(settings)
    total = count_events(conn)
    with tqdm(total=total, unit="ev", desc="replaying", disable=args.quiet) as bar:
        count = rebuild(conn, bar.update)
    conn.close()
    print(f"rebuilt projections from {count} events")
    return 0


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    """Replay the log into a scratch DB and compare projection digests."""
    from tqdm import tqdm

    from persona.projector.replay import combined, verify
    from persona.storage.eventlog import count_events

    conn = _open(settings)
    total = count_events(conn)
    conn.close()
    with (
        tempfile.TemporaryDirectory() as tmp,
        tqdm(total=total, unit="ev", desc="replaying", disable=args.quiet) as bar,
    ):
        live, replayed = verify(settings.db_path, Path(tmp) / "scratch.db", bar.update)
    for table in live:
        mark = "ok " if live[table] == replayed[table] else "DIFF"
        print(f"{mark} {table:20} live {live[table][:16]}  replay {replayed[table][:16]}")
    print(f"live digest:     {combined(live)}")
    print(f"replayed digest: {combined(replayed)}")
    if live != replayed:
        print("verify FAILED: projections differ from a replay of the log", file=sys.stderr)
        return 1
    print(f"verify ok: {total} events replay to the same projections")
    if getattr(args, "replay", False):
        return _verify_decisions(settings)
    return 0


def _verify_decisions(settings: Settings) -> int:
    """Re-run every turn's control-plane stages from its recorded inputs (--replay)."""
    import asyncio

    from persona.decision_replay import replay_decisions
    from persona.llm.registry import make_backend

    # Only its tokenizer and window are used: model outputs come from the log.
    tokens = make_backend(settings)
    report = asyncio.run(replay_decisions(settings.db_path, settings, tokens))
    for diff in report.differences:
        print(f"DIFF {diff.render()}")
    if not report.ok:
        print(
            f"verify --replay FAILED: {len(report.differences)} difference(s) in"
            f" {report.turns} turn(s)",
            file=sys.stderr,
        )
        return 1
    print(f"replay ok: {report.turns} turn(s), {report.decisions} decisions identical")
    return 0


def _sleep_line(report: SleepReport) -> str:
    r = report
    if not r.event_id:
        return f"{r.persona_id}: nothing new to consolidate ({r.notes} L1 memories)"
    return (
        f"{r.persona_id}: {r.digests} digest(s), {r.beliefs} belief(s) from {r.notes} L1"
        f" memories ({r.consolidated} consolidated, {r.merged} merged, {r.superseded}"
        f" superseded, {r.narrated} worded by the model, {r.fallbacks} fell back)"
    )


async def _sleep_all(settings: Settings, store: Store, args: argparse.Namespace) -> list[str]:
    """Sleep each persona asked for (every one by default), a progress bar each."""
    from tqdm import tqdm

    from persona.sleep import sleep
    from persona.storage.sleep_queries import persona_ids

    method = args.method or settings.sleep.method
    backend = None
    if method == "narrative":
        from persona.llm.registry import make_backend

        backend = make_backend(settings)
        await backend.warm()
    lines = []
    try:
        for pid in [args.persona] if args.persona else await store.read(persona_ids):
            with tqdm(total=1, unit="step", desc=pid, disable=args.quiet) as bar:

                def progress(done: int, total: int, stage: str, bar: tqdm = bar) -> None:
                    bar.total, bar.n = total, done
                    bar.set_description(stage)

                report = await sleep(
                    store, pid, "command", settings.sleep, backend, progress, method
                )
            lines.append(_sleep_line(report))
    finally:
        if backend is not None:
            await backend.aclose()
    return lines


def cmd_sleep(settings: Settings, args: argparse.Namespace) -> int:
    """Consolidate memories now: L1 into L2 digests and L3 beliefs (docs/memory.md)."""
    import asyncio

    from persona.errors import PersonaNotFound
    from persona.projector import Projector
    from persona.storage.store import Store

    _open(settings).close()  # refuse a missing DB; migrate an old one
    store = Store(settings.db_path, Projector())
    store.open()
    try:
        lines = asyncio.run(_sleep_all(settings, store, args))
    except PersonaNotFound as exc:
        raise CommandError(str(exc)) from exc
    finally:
        store.close()
    print("\n".join(lines))
    return 0


def cmd_bench_control_plane(settings: Settings, args: argparse.Namespace) -> int:
    """Run the control-plane bench; exit 1 with the differences when anything fails."""
    from persona.bench.control_plane import CaseError, default_cases_path, run_bench

    try:
        cases = Path(args.cases) if args.cases else default_cases_path()
        if not cases.is_file():
            raise CommandError(f"no cases file at {cases}")
        report = run_bench(cases, write_baseline=args.write_baseline)
    except CaseError as exc:
        raise CommandError(str(exc)) from exc
    sys.stdout.write(report.render())
    return 0 if report.ok else 1


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--k takes numbers like 1,5,10: {text!r}") from exc
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError("--k takes positive numbers like 1,5,10")
    return ks


def cmd_eval_locomo(settings: Settings, args: argparse.Namespace) -> int:
    """Recall@k of the memory write path and retrieval on a LoCoMo-format file."""
    from persona.bench.recall import LocomoError, evaluate

    path = Path(args.path)
    if not path.is_file():
        raise CommandError(f"no file at {path}")
    try:
        report = evaluate(path, args.k, settings.memory)
    except LocomoError as exc:
        raise CommandError(str(exc)) from exc
    if args.json:
        print(json.dumps(report.as_json(), sort_keys=True))
    else:
        print(report.render())
    return 0


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    """Print the effective configuration (secrets masked), where its files are, its hash."""
    from persona.pipeline.prompts import PromptSet

    shown = {
        **settings.masked(),
        "config_file": str(config_file()),
        "default_persona_path": str(settings.default_persona_path()),
        "config_hash": settings.config_hash(PromptSet.load().sources),
    }
    print(json.dumps(shown, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="persona", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the web app")
    serve.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default from config: 8000)")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(fn=cmd_serve)
    for name, fn, text in (
        ("rebuild", cmd_rebuild, "drop projections and replay the event log"),
        ("verify", cmd_verify, "check projections against a replay of the log"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.set_defaults(fn=fn)
        if name == "verify":
            p.add_argument(
                "--replay",
                action="store_true",
                help="also re-run every turn's control-plane decisions and compare them",
            )
    sleep = sub.add_parser("sleep", help="consolidate memories into digests and beliefs now")
    sleep.add_argument("--persona", help="one persona's id (default: every persona)")
    sleep.add_argument(
        "--method",
        choices=("extractive", "narrative"),
        help="how digests are worded (default from config: sleep.method)",
    )
    sleep.add_argument("--quiet", action="store_true", help="no progress bar")
    sleep.set_defaults(fn=cmd_sleep)
    sub.add_parser("config", help="print the effective config and config_hash").set_defaults(
        fn=cmd_config
    )
    bench = sub.add_parser("bench", help="run a bench").add_subparsers(dest="bench", required=True)
    control = bench.add_parser("control-plane", help="the control-plane cases and baseline")
    control.add_argument("--cases", help="a cases.toml (default: the checkout's bench)")
    control.add_argument(
        "--write-baseline",
        action="store_true",
        help="rewrite baseline.json beside the cases with this run (on purpose)",
    )
    control.set_defaults(fn=cmd_bench_control_plane)
    evals = sub.add_parser("eval", help="evaluate against a data set").add_subparsers(
        dest="eval", required=True
    )
    locomo = evals.add_parser("locomo", help="memory recall@k on a LoCoMo-format file")
    locomo.add_argument("path", help="the LoCoMo-format JSON file")
    locomo.add_argument("--k", type=_ks, default=[1, 5, 10], help="cut-offs (default 1,5,10)")
    locomo.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    locomo.set_defaults(fn=cmd_eval_locomo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `persona` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(get_settings(), args))
    except CommandError as exc:
        print(f"persona {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
