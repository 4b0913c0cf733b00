"""The async boundary of storage: one writer thread, a small pool of snapshot readers.

Storage does not know how events are folded: the projection is injected where the app
is wired, and every append runs it in the same transaction as the insert.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from persona.clock import Clock, SystemClock, iso
from persona.storage.db import connect, run_in_transaction
from persona.storage.eventlog import Event, NewEvent, insert_events, stream_version
from persona.storage.migrations import migrate

T = TypeVar("T")

DEFAULT_READERS = 4


class Projection(Protocol):
    """Folds events into the read-side tables (the projector implements it)."""

    def fold(self, conn: sqlite3.Connection, event: Event) -> None: ...

    def rebuild(self, conn: sqlite3.Connection) -> int: ...


class ReadView(Protocol):
    """What pipeline stages may do with storage: read, never write."""

    async def read(self, fn: Callable[..., T], *args: Any) -> T: ...


class ReadOnly:
    """A store seen through its read side only: what pipeline stages are given."""

    def __init__(self, store: Store):
        self._store = store

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a query function in one snapshot (see Store.read)."""
        return await self._store.read(fn, *args)


class WriteTx:
    """One open write transaction: read through it, append through it, atomically."""

    def __init__(self, conn: sqlite3.Connection, projection: Projection, wall_time: str):
        self.conn = conn
        self._projection = projection
        self.wall_time = wall_time

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a query function on the transaction's connection (sees its own writes)."""
        return fn(self.conn, *args)

    def stream_version(self, stream_id: str) -> int:
        """The stream's current version inside this transaction."""
        return stream_version(self.conn, stream_id)

    def append(
        self, events: list[NewEvent], expected_versions: Mapping[str, int] | None = None
    ) -> list[Event]:
        """Insert events (checking expected stream versions) and fold each one."""
        stored = insert_events(self.conn, events, self.wall_time, expected_versions)
        for event in stored:
            self._projection.fold(self.conn, event)
        return stored


def _read_snapshot(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
    # One deferred transaction per read: every query of `fn` sees the same snapshot,
    # so a page's several queries never straddle a commit.
    conn.execute("BEGIN")
    try:
        return fn(conn, *args)
    finally:
        conn.execute("COMMIT")


class Store:
    """Owns the database: every write runs in one thread inside BEGIN IMMEDIATE."""

    def __init__(
        self,
        db_path: Path,
        projection: Projection,
        clock: Clock | None = None,
        readers: int = DEFAULT_READERS,
    ):
        self.db_path = Path(db_path)
        self.clock = clock or SystemClock()
        self.projection = projection
        self._readers = readers
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="persona-writer")
        self._reader_pool = ThreadPoolExecutor(readers, thread_name_prefix="persona-reader")
        self._writer: sqlite3.Connection | None = None
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._reader_conns: list[sqlite3.Connection] = []

    def open(self) -> list[int]:
        """Connect and apply pending migrations (backing up a non-empty DB first).

        A migration that reshapes projections replays the log in the same transaction.
        """
        self._writer = self._writer_pool.submit(connect, self.db_path).result()
        applied = self._writer_pool.submit(
            migrate, self._writer, self.db_path, self.projection.rebuild
        ).result()
        for _ in range(self._readers):
            conn = connect(self.db_path)
            self._reader_conns.append(conn)
            self._idle.put(conn)
        return applied

    def close(self) -> None:
        """Close connections and stop the threads."""
        if self._writer is not None:
            self._writer_pool.submit(self._writer.close).result()
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()
        self._reader_conns.clear()
        self._idle = queue.SimpleQueue()
        self._writer = None

    def _with_reader(self, fn: Callable[..., T], *args: Any) -> T:
        conn = self._idle.get()
        try:
            return _read_snapshot(conn, fn, *args)
        finally:
            self._idle.put(conn)

    def _tx(self, fn: Callable[[WriteTx], T]) -> T:
        assert self._writer is not None, "store is not open"
        tx = WriteTx(self._writer, self.projection, iso(self.clock.now()))
        return run_in_transaction(self._writer, lambda _conn: fn(tx))

    async def transact(self, fn: Callable[[WriteTx], T]) -> T:
        """Run `fn(tx)` in the writer thread, in one IMMEDIATE transaction.

        Decisions about persona-scoped state (several chats touch it) are made inside
        `fn`, on what the transaction reads, so concurrent turns never lose an update.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer_pool, self._tx, fn)

    async def append(
        self, events: list[NewEvent], expected_versions: Mapping[str, int] | None = None
    ) -> list[Event]:
        """Append events and fold them into projections atomically."""
        return await self.transact(lambda tx: tx.append(events, expected_versions))

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` on a pooled reader, in one snapshot (committed data only)."""
        assert self._reader_conns, "store is not open"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader_pool, self._with_reader, fn, *args)

    def sync_append(
        self, events: list[NewEvent], expected_versions: Mapping[str, int] | None = None
    ) -> list[Event]:
        """Append from synchronous code (start-up, CLI) through the same writer thread."""

        def append(tx: WriteTx) -> list[Event]:
            return tx.append(events, expected_versions)

        return self._writer_pool.submit(self._tx, append).result()

    def sync_read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a read from synchronous code."""
        assert self._reader_conns, "store is not open"
        return self._reader_pool.submit(self._with_reader, fn, *args).result()
