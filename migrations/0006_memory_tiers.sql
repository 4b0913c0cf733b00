-- 0006: memory that lasts. A memory has a tier (L1 episodic, L2 digest, L3 core), keeps
-- what was said as data (no "User said:" labels in the searched text), the users who
-- witnessed it (memory_witness: retrieval is scoped to who is present), entities, and
-- its life: versions, pins, tombstones, consolidation, accesses; and the words around it
-- (`context`, a second, lighter full-text column: what was being talked about). Edges
-- gain invalid_at (a contradicting fact retires an edge, never deletes it). Chinese and
-- Japanese are indexed as bigrams (`cjk`): the tokenizer would keep a run as one token.
-- Only projections change: they are recreated and the log replayed.
-- persona: rebuild-projections

DROP TABLE memory_fts;
DROP TABLE memory;
DROP TABLE edge;

CREATE TABLE memory (
    memory_id         TEXT PRIMARY KEY,
    persona_id        TEXT NOT NULL,
    tier              TEXT NOT NULL,      -- L1 | L2 | L3 (pinned memories read as L3)
    kind              TEXT NOT NULL,      -- exchange | utterance | fact | digest | belief | core
    content           TEXT NOT NULL,      -- the words, searched by memory_fts
    context           TEXT NOT NULL,      -- the words of the two memories before it in its chat
    cjk               TEXT NOT NULL,      -- its Chinese/Japanese as space-separated bigrams
    said              TEXT NOT NULL,      -- JSON list of {role, name, text}
    importance        REAL NOT NULL,      -- 0..1
    importance_score  INTEGER,            -- 1..10 from perception
    chat_id           TEXT,
    turn_id           TEXT,               -- the turn that wrote it (NULL for core)
    trace_id          TEXT,
    created_at        TEXT NOT NULL,      -- chat clock
    wall_time         TEXT NOT NULL,
    entities          TEXT NOT NULL,      -- JSON list of names
    shared            INTEGER NOT NULL DEFAULT 0,
    source_ref        TEXT,
    valid_from        TEXT,
    invalid_at        TEXT,
    pinned            INTEGER NOT NULL DEFAULT 0,
    tombstone         INTEGER NOT NULL DEFAULT 0,
    version           INTEGER NOT NULL DEFAULT 1,
    consolidated_into TEXT,
    last_accessed     TEXT,
    access_count      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX memory_persona ON memory (persona_id, tier);
CREATE INDEX memory_recent ON memory (persona_id, created_at);
CREATE INDEX memory_turn ON memory (turn_id);
-- Always-in-context L3 memories (pinned ones, beliefs): read on every turn, so an index
-- that holds exactly them, in the order they are shown.
CREATE INDEX memory_always ON memory (persona_id, created_at, memory_id)
    WHERE pinned = 1 OR (tier = 'L3' AND kind = 'belief');

CREATE TABLE memory_witness (
    user_id   TEXT NOT NULL,
    memory_id TEXT NOT NULL,
    PRIMARY KEY (user_id, memory_id)
) WITHOUT ROWID;
CREATE INDEX memory_witness_memory ON memory_witness (memory_id, user_id);

CREATE INDEX memory_chat ON memory (chat_id, tier);

CREATE VIRTUAL TABLE memory_fts USING fts5 (
    content,
    context,
    cjk,
    content = 'memory',
    content_rowid = 'rowid',
    tokenize = 'porter unicode61'
);

CREATE TABLE edge (
    edge_id     TEXT PRIMARY KEY,   -- src|rel|dst
    persona_id  TEXT NOT NULL,
    src         TEXT NOT NULL,
    rel         TEXT NOT NULL,
    dst         TEXT NOT NULL,
    weight      REAL NOT NULL,
    evidence    INTEGER NOT NULL,   -- how many assertions support it
    valid_from  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    invalid_at  TEXT,               -- set when a contradicting fact retired it
    source_memory TEXT              -- the fact memory that stated it (NULL: not a fact)
);
CREATE INDEX edge_subject ON edge (persona_id, src, rel);
CREATE INDEX edge_source ON edge (source_memory) WHERE source_memory IS NOT NULL;
