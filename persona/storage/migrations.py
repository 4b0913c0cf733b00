"""Forward-only numbered migrations from `migrations/NNNN_name.sql`."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from persona.resources import migrations_dir

MIGRATIONS_DIR = migrations_dir()
_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# A migration that reshapes projection tables says so on a line of its own; the log is
# then replayed into the new tables in the same transaction as the DDL.
REBUILD_MARK = "-- persona: rebuild-projections"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def rebuilds(self) -> bool:
        """Whether applying it requires replaying the log into the projections."""
        return any(line.strip() == REBUILD_MARK for line in self.sql.splitlines())


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read every `NNNN_name.sql`, in version order; refuse gaps and duplicates."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME_RE.match(path.name)
        if not match:
            raise ValueError(f"migration file name must be NNNN_name.sql: {path.name}")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"migrations must be numbered 1..n without gaps: {versions}")
    return found


def split_statements(sql: str) -> list[str]:
    """Split a script into complete statements (trigger bodies stay whole)."""
    statements, buffer = [], ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in buffer.splitlines()
    ):
        raise ValueError(f"incomplete SQL statement at end of migration: {buffer[:80]!r}")
    return statements


def applied_versions(conn: sqlite3.Connection) -> set[int]:
    """Versions recorded in the bookkeeping table (empty for a blank DB)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def _is_empty(conn: sqlite3.Connection) -> bool:
    tables = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
        " AND name != 'schema_migrations'"
    ).fetchall()
    return not tables


class MigrationError(RuntimeError):
    """A migration cannot be applied safely as asked."""


def _has_events(conn: sqlite3.Connection) -> bool:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
    ).fetchone()
    return bool(exists) and conn.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None


def backup(conn: sqlite3.Connection, db_path: Path) -> Path:
    """Copy the live database to a timestamped file beside it (SQLite online backup)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    target_path = db_path.with_name(f"{db_path.name}.bak-{stamp}")
    target = sqlite3.connect(str(target_path))
    try:
        conn.backup(target)
    finally:
        target.close()
    return target_path


def migrate(
    conn: sqlite3.Connection,
    db_path: Path | None = None,
    rebuild: Callable[[sqlite3.Connection], object] | None = None,
    directory: Path = MIGRATIONS_DIR,
) -> list[int]:
    """Apply pending migrations, each with its bookkeeping row in one transaction.

    Before touching a non-empty database, back it up beside `db_path`. When a pending
    migration reshapes projections, every pending migration and `rebuild(conn)` run in
    one transaction: a crash leaves either the old schema or new, filled projections.
    Returns the versions applied (empty when already current: idempotent).
    """
    done = applied_versions(conn)
    pending = [m for m in load_migrations(directory) if m.version not in done]
    if not pending:
        return []
    if db_path is not None and not _is_empty(conn):
        backup(conn, db_path)
    reshaping = [m.version for m in pending if m.rebuilds]
    if reshaping and rebuild is None and _has_events(conn):
        # Applying it without a replay would leave empty projections behind the log.
        raise MigrationError(
            f"migrations {reshaping} reshape projections of a non-empty log: pass `rebuild`"
        )
    together = rebuild is not None and bool(reshaping)
    groups = [pending] if together else [[m] for m in pending]
    applied: list[int] = []
    for group in groups:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for migration in group:
                for statement in split_statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, datetime.now(UTC).isoformat()),
                )
            if together and rebuild is not None:
                rebuild(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        applied.extend(m.version for m in group)
    return applied


def schema_dump(conn: sqlite3.Connection) -> str:
    """The schema as SQL text, in a stable order (for the golden-file test)."""
    rows = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL"
        " AND name NOT LIKE 'sqlite_%' ORDER BY type, name"
    ).fetchall()
    return "\n".join(f"-- {r[0]} {r[1]}\n{r[2]};" for r in rows) + "\n"
