"""Migrations: forward-only, idempotent, backed up, and matching the golden schema."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing

import pytest

from persona.storage.migrations import MIGRATIONS_DIR, load_migrations, migrate, schema_dump


def test_blank_db_migrates_to_the_golden_schema(tmp_path, db, golden):
    conn = db(tmp_path / "a.db")
    assert migrate(conn, tmp_path / "a.db") == [m.version for m in load_migrations()]
    golden("schema.sql", schema_dump(conn))


def test_migrate_is_idempotent(tmp_path, db):
    conn = db(tmp_path / "a.db")
    migrate(conn, tmp_path / "a.db")
    before = schema_dump(conn)
    assert migrate(conn, tmp_path / "a.db") == []
    assert schema_dump(conn) == before
    assert not list(tmp_path.glob("*.bak-*")), "no backup when nothing is pending"


def test_existing_db_is_backed_up_before_a_new_migration(tmp_path, db):
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, migrations)
    path = tmp_path / "live.db"
    conn = db(path)
    migrate(conn, path, directory=migrations)
    conn.execute(
        "INSERT INTO events (event_id, stream_id, stream_version, wall_time, actor, type,"
        " payload) VALUES ('e1', 's', 1, 'now', 'x', 'persona.created', '{}')"
    )
    nxt = len(load_migrations()) + 1
    (migrations / f"{nxt:04d}_add_note.sql").write_text(
        "ALTER TABLE persona ADD COLUMN note TEXT;\n"
    )
    assert migrate(conn, path, directory=migrations) == [nxt]
    backups = list(tmp_path.glob("live.db.bak-*"))
    assert len(backups) == 1
    with closing(sqlite3.connect(backups[0])) as old:
        assert old.execute("SELECT event_id FROM events").fetchall() == [("e1",)]
        assert "note" not in [r[1] for r in old.execute("PRAGMA table_info(persona)")]
    assert "note" in [r[1] for r in conn.execute("PRAGMA table_info(persona)")]


def test_a_broken_migration_leaves_nothing_half_applied(tmp_path, db):
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, migrations)
    nxt = len(load_migrations()) + 1
    (migrations / f"{nxt:04d}_broken.sql").write_text(
        "CREATE TABLE half (x INTEGER);\nTHIS IS NOT SQL;\n"
    )
    conn = db(tmp_path / "b.db")
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, tmp_path / "b.db", directory=migrations)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name='half'").fetchone() is None
    applied = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert applied == list(range(1, nxt))


def test_gaps_in_numbering_are_refused(tmp_path):
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="gaps"):
        load_migrations(tmp_path)
