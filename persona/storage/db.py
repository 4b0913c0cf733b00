"""Open SQLite connections with the pragmas the event log relies on."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def connect(path: Path | str) -> sqlite3.Connection:
    """Open `path` in autocommit mode (we issue BEGIN ourselves), WAL, rows as dicts."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before we report it, even across power loss (WAL+NORMAL
    # may drop the newest commits then); a turn costs a few fsyncs, measured in bench/.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def run_in_transaction(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(conn, *args)` inside BEGIN IMMEDIATE; commit on success, roll back on error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result
