-- 0009: branches that carry the persona's state. A chat's active path is the path from
-- its root to its leaf (`chats.head_turn_id`, a completed or stopped turn, or NULL for the
-- root); `turns.active` marks it and `memory.active` follows the turn that wrote a memory,
-- so what an abandoned branch wrote is never recalled and comes back with the branch.
-- What several turns fold into one row (a memory's access count, an edge, the identity
-- state) keeps its per-turn entries, so a branch switch recomputes exactly the rows the
-- turns leaving and entering the path touched. A chat also gets its own clock offset
-- (chat time = wall time + offset). Only projections change: the log is replayed.
-- persona: rebuild-projections

ALTER TABLE turns ADD COLUMN active INTEGER NOT NULL DEFAULT 0;
ALTER TABLE turns ADD COLUMN completed_seq INTEGER;
ALTER TABLE turns ADD COLUMN origin TEXT NOT NULL DEFAULT 'message';
ALTER TABLE turns ADD COLUMN variant_of TEXT;
ALTER TABLE turns ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0;
-- The wall time the turn ended (`ended_at` is its chat's clock): a chat's place in the list
-- and the persona's idleness are real time, whatever year a chat's story is set in.
ALTER TABLE turns ADD COLUMN ended_wall_at TEXT;
CREATE INDEX turns_active ON turns (chat_id, active, depth);

ALTER TABLE memory ADD COLUMN active INTEGER NOT NULL DEFAULT 1;

ALTER TABLE chats ADD COLUMN clock_offset_s REAL NOT NULL DEFAULT 0;

-- When the persona itself last changed (its updated_at is the newer of this and its newest
-- completed turn on an active path).
ALTER TABLE persona ADD COLUMN revised_seq INTEGER;
ALTER TABLE persona ADD COLUMN revised_at TEXT;

-- One row per memory a turn used: access_count and last_accessed fold the active ones.
CREATE TABLE memory_access (
    seq       INTEGER NOT NULL,   -- the memory.accessed event
    memory_id TEXT NOT NULL,
    turn_id   TEXT NOT NULL,
    at        TEXT NOT NULL,
    PRIMARY KEY (seq, memory_id)
) WITHOUT ROWID;
CREATE INDEX memory_access_memory ON memory_access (memory_id, seq);
CREATE INDEX memory_access_turn ON memory_access (turn_id);

-- Every change to an edge, in log order: an edge row is the fold of its active entries.
CREATE TABLE edge_log (
    seq        INTEGER NOT NULL,
    ord        INTEGER NOT NULL,  -- its place among the entries of one event
    edge_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,     -- asserted | fact | superseded | retired
    turn_id    TEXT,              -- the turn whose event it is (NULL: not a turn's)
    persona_id TEXT NOT NULL,
    src        TEXT,
    rel        TEXT,
    dst        TEXT,
    weight     REAL,
    memory_id  TEXT,              -- fact: its memory; retired: the deleted memory
    at         TEXT NOT NULL,
    PRIMARY KEY (seq, ord)
) WITHOUT ROWID;
CREATE INDEX edge_log_edge ON edge_log (edge_id, seq, ord);
CREATE INDEX edge_log_turn ON edge_log (turn_id);
CREATE INDEX edge_log_memory ON edge_log (memory_id) WHERE memory_id IS NOT NULL;

-- Every identity state recorded: the current one is the newest active entry.
CREATE TABLE identity_log (
    seq        INTEGER PRIMARY KEY,
    persona_id TEXT NOT NULL,
    turn_id    TEXT,              -- NULL: an operator's override
    event_id   TEXT NOT NULL,
    state      TEXT NOT NULL,
    at         TEXT NOT NULL
);
CREATE INDEX identity_log_persona ON identity_log (persona_id, seq);
CREATE INDEX identity_log_turn ON identity_log (turn_id) WHERE turn_id IS NOT NULL;
