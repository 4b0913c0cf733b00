-- 0003: a log ready for branches. Turns form a tree (parent, depth) and a chat has a head;
-- memory rows keep the turn that wrote them; each completed turn leaves a chat-state
-- snapshot; meta is derived from a turn's events instead of being stored. Only
-- projections change (never the events): they are recreated and the log replayed.
-- persona: rebuild-projections

DROP TABLE messages;
DROP TABLE turns;
DROP TABLE chats;
DROP TABLE memory_fts;
DROP TABLE memory;
DROP TABLE telemetry;

CREATE TABLE chats (
    chat_id      TEXT PRIMARY KEY,
    persona_id   TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    title        TEXT NOT NULL,
    head_turn_id TEXT,              -- newest completed turn of the active branch
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    turn_count   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX chats_recent ON chats (updated_at);

CREATE TABLE turns (
    turn_id        TEXT PRIMARY KEY,
    chat_id        TEXT NOT NULL,
    trace_id       TEXT NOT NULL UNIQUE,
    parent_turn_id TEXT,             -- NULL for a chat's first turn
    depth          INTEGER NOT NULL, -- parent's depth + 1
    started_seq    INTEGER NOT NULL, -- seq of turn.started: order among siblings
    status         TEXT NOT NULL,    -- started | completed | failed
    user_message   TEXT NOT NULL,
    reply          TEXT,
    error          TEXT,
    started_at     TEXT NOT NULL,
    ended_at       TEXT
);
CREATE INDEX turns_chat ON turns (chat_id, started_seq);
CREATE INDEX turns_parent ON turns (parent_turn_id);

CREATE TABLE messages (
    message_id  TEXT PRIMARY KEY,   -- the event that said it
    chat_id     TEXT NOT NULL,
    turn_id     TEXT NOT NULL,
    role        TEXT NOT NULL,      -- user | assistant
    content     TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX messages_turn ON messages (turn_id);

CREATE TABLE memory (
    memory_id   TEXT PRIMARY KEY,
    persona_id  TEXT NOT NULL,
    kind        TEXT NOT NULL,      -- core | episodic
    content     TEXT NOT NULL,
    importance  REAL NOT NULL,
    chat_id     TEXT,
    turn_id     TEXT,               -- the turn that wrote it (NULL for core)
    trace_id    TEXT,
    created_at  TEXT NOT NULL
);
CREATE INDEX memory_persona ON memory (persona_id, kind);
CREATE INDEX memory_recent ON memory (persona_id, kind, created_at);
CREATE INDEX memory_turn ON memory (turn_id);

CREATE VIRTUAL TABLE memory_fts USING fts5 (
    content,
    content = 'memory',
    content_rowid = 'rowid',
    tokenize = 'porter unicode61'
);

CREATE TABLE telemetry (
    trace_id        TEXT PRIMARY KEY,
    chat_id         TEXT NOT NULL,
    persona_id      TEXT NOT NULL,
    turn_id         TEXT,
    c               REAL NOT NULL,
    n               REAL NOT NULL,
    m               REAL NOT NULL,
    s               REAL NOT NULL,
    r               REAL NOT NULL,
    dialogue_state  TEXT NOT NULL,
    recorded_at     TEXT NOT NULL
);

CREATE TABLE chat_state (
    turn_id     TEXT PRIMARY KEY,   -- the completed turn this snapshot follows
    chat_id     TEXT NOT NULL,
    state       TEXT NOT NULL,      -- JSON of events.ChatState
    recorded_at TEXT NOT NULL
);
