"""The async boundary of storage: one writer thread, one reader thread, plain SQL inside."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from persona.clock import Clock, SystemClock, iso
from persona.projector import append_and_project
from persona.storage.db import connect, run_in_transaction
from persona.storage.eventlog import Event, NewEvent
from persona.storage.migrations import migrate

T = TypeVar("T")


class Store:
    """Owns the database: every write runs in one thread inside BEGIN IMMEDIATE."""

    def __init__(self, db_path: Path, clock: Clock | None = None):
        self.db_path = Path(db_path)
        self.clock = clock or SystemClock()
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="persona-writer")
        self._reader_pool = ThreadPoolExecutor(1, thread_name_prefix="persona-reader")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None

    def open(self) -> list[int]:
        """Connect and apply pending migrations (backing up a non-empty DB first)."""
        self._writer = self._writer_pool.submit(connect, self.db_path).result()
        applied = self._writer_pool.submit(migrate, self._writer, self.db_path).result()
        self._reader = self._reader_pool.submit(connect, self.db_path).result()
        return applied

    def close(self) -> None:
        """Close connections and stop the threads."""
        for pool, conn in ((self._writer_pool, self._writer), (self._reader_pool, self._reader)):
            if conn is not None:
                pool.submit(conn.close).result()
            pool.shutdown(wait=True)
        self._writer = self._reader = None

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` in the writer thread, in one IMMEDIATE transaction."""
        assert self._writer is not None, "store is not open"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._writer_pool, run_in_transaction, self._writer, fn, *args
        )

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` in the reader thread (sees committed data only)."""
        assert self._reader is not None, "store is not open"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader_pool, fn, self._reader, *args)

    async def append(
        self, events: list[NewEvent], expected_versions: dict[str, int] | None = None
    ) -> list[Event]:
        """Append events and fold them into projections atomically."""
        wall_time = iso(self.clock.now())
        return await self.write(append_and_project, events, wall_time, expected_versions)

    def sync_append(self, events: list[NewEvent]) -> list[Event]:
        """Append from synchronous code (start-up, CLI) through the same writer thread."""
        assert self._writer is not None, "store is not open"
        wall_time = iso(self.clock.now())
        return self._writer_pool.submit(
            run_in_transaction, self._writer, append_and_project, events, wall_time, None
        ).result()

    def sync_read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a read from synchronous code."""
        assert self._reader is not None, "store is not open"
        return self._reader_pool.submit(fn, self._reader, *args).result()
