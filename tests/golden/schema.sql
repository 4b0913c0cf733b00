-- index chats_persona_recent
CREATE INDEX chats_persona_recent ON chats (persona_id, archived, updated_at);
-- index chats_recent
CREATE INDEX chats_recent ON chats (updated_at);
-- index edge_log_edge
CREATE INDEX edge_log_edge ON edge_log (edge_id, seq, ord);
-- index edge_log_memory
CREATE INDEX edge_log_memory ON edge_log (memory_id) WHERE memory_id IS NOT NULL;
-- index edge_log_turn
CREATE INDEX edge_log_turn ON edge_log (turn_id);
-- index edge_source
CREATE INDEX edge_source ON edge (source_memory) WHERE source_memory IS NOT NULL;
-- index edge_subject
CREATE INDEX edge_subject ON edge (persona_id, src, rel);
-- index events_trace
CREATE INDEX events_trace ON events (trace_id);
-- index events_type
CREATE INDEX events_type ON events (type);
-- index identity_log_persona
CREATE INDEX identity_log_persona ON identity_log (persona_id, seq);
-- index identity_log_turn
CREATE INDEX identity_log_turn ON identity_log (turn_id) WHERE turn_id IS NOT NULL;
-- index memory_access_memory
CREATE INDEX memory_access_memory ON memory_access (memory_id, seq);
-- index memory_access_turn
CREATE INDEX memory_access_turn ON memory_access (turn_id);
-- index memory_always
CREATE INDEX memory_always ON memory (persona_id, created_at, memory_id)
    WHERE pinned = 1 OR (tier = 'L3' AND kind = 'belief');
-- index memory_chat
CREATE INDEX memory_chat ON memory (chat_id, tier);
-- index memory_persona
CREATE INDEX memory_persona ON memory (persona_id, tier);
-- index memory_recent
CREATE INDEX memory_recent ON memory (persona_id, created_at);
-- index memory_turn
CREATE INDEX memory_turn ON memory (turn_id);
-- index memory_vector_persona
CREATE INDEX memory_vector_persona ON memory_vector (persona_id, model);
-- index memory_witness_memory
CREATE INDEX memory_witness_memory ON memory_witness (memory_id, user_id);
-- index messages_chat
CREATE INDEX messages_chat ON messages (chat_id);
-- index messages_turn
CREATE INDEX messages_turn ON messages (turn_id);
-- index turns_active
CREATE INDEX turns_active ON turns (chat_id, active, depth);
-- index turns_chat
CREATE INDEX turns_chat ON turns (chat_id, started_seq);
-- index turns_parent
CREATE INDEX turns_parent ON turns (parent_turn_id);
-- table chat_state
CREATE TABLE chat_state (
    turn_id     TEXT PRIMARY KEY,   -- the completed turn this snapshot follows
    chat_id     TEXT NOT NULL,
    state       TEXT NOT NULL,      -- JSON of events.ChatState
    recorded_at TEXT NOT NULL
);
-- table chat_title_fts
CREATE VIRTUAL TABLE chat_title_fts USING fts5 (
    title,
    content = 'chats',
    content_rowid = 'rowid',
    tokenize = 'porter unicode61'
);
-- table chat_title_fts_config
CREATE TABLE 'chat_title_fts_config'(k PRIMARY KEY, v) WITHOUT ROWID;
-- table chat_title_fts_data
CREATE TABLE 'chat_title_fts_data'(id INTEGER PRIMARY KEY, block BLOB);
-- table chat_title_fts_docsize
CREATE TABLE 'chat_title_fts_docsize'(id INTEGER PRIMARY KEY, sz BLOB);
-- table chat_title_fts_idx
CREATE TABLE 'chat_title_fts_idx'(segid, term, pgno, PRIMARY KEY(segid, term)) WITHOUT ROWID;
-- table chats
CREATE TABLE chats (
    chat_id      TEXT PRIMARY KEY,
    persona_id   TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    title        TEXT NOT NULL,
    head_turn_id TEXT,              -- newest completed turn of the active branch
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    turn_count   INTEGER NOT NULL DEFAULT 0
, archived INTEGER NOT NULL DEFAULT 0, last_snippet TEXT NOT NULL DEFAULT '', clock_offset_s REAL NOT NULL DEFAULT 0);
-- table classifier_failures
CREATE TABLE classifier_failures (
    event_id    TEXT PRIMARY KEY,
    trace_id    TEXT,
    stage       TEXT NOT NULL,
    schema_name TEXT NOT NULL,
    model       TEXT,
    error       TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    failed_at   TEXT NOT NULL
);
-- table edge
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
-- table edge_log
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
-- table events
CREATE TABLE events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,  -- global order
    event_id        TEXT    NOT NULL UNIQUE,
    stream_id       TEXT    NOT NULL,                   -- e.g. chat:<id>, persona:<id>
    stream_version  INTEGER NOT NULL,                   -- 1, 2, ... within the stream
    trace_id        TEXT,                               -- one per turn
    parent_event_id TEXT,
    wall_time       TEXT    NOT NULL,                   -- ISO-8601 UTC, when appended
    chat_time       TEXT,                               -- the chat clock's time
    actor           TEXT    NOT NULL,                   -- stage or actor that decided
    type            TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL DEFAULT 1,
    payload         TEXT    NOT NULL,                   -- JSON object
    model           TEXT,
    tokens_in       INTEGER,
    tokens_out      INTEGER,
    latency_ms      REAL,
    UNIQUE (stream_id, stream_version)
);
-- table identity_log
CREATE TABLE identity_log (
    seq        INTEGER PRIMARY KEY,
    persona_id TEXT NOT NULL,
    turn_id    TEXT,              -- NULL: an operator's override
    event_id   TEXT NOT NULL,
    state      TEXT NOT NULL,
    at         TEXT NOT NULL
);
-- table identity_state
CREATE TABLE identity_state (
    persona_id TEXT PRIMARY KEY,
    state      TEXT NOT NULL,   -- JSON of events.IdentityState
    event_id   TEXT NOT NULL,   -- the event that left it
    updated_at TEXT NOT NULL
);
-- table memory
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
, active INTEGER NOT NULL DEFAULT 1);
-- table memory_access
CREATE TABLE memory_access (
    seq       INTEGER NOT NULL,   -- the memory.accessed event
    memory_id TEXT NOT NULL,
    turn_id   TEXT NOT NULL,
    at        TEXT NOT NULL,
    PRIMARY KEY (seq, memory_id)
) WITHOUT ROWID;
-- table memory_fts
CREATE VIRTUAL TABLE memory_fts USING fts5 (
    content,
    context,
    cjk,
    content = 'memory',
    content_rowid = 'rowid',
    tokenize = 'porter unicode61'
);
-- table memory_fts_config
CREATE TABLE 'memory_fts_config'(k PRIMARY KEY, v) WITHOUT ROWID;
-- table memory_fts_data
CREATE TABLE 'memory_fts_data'(id INTEGER PRIMARY KEY, block BLOB);
-- table memory_fts_docsize
CREATE TABLE 'memory_fts_docsize'(id INTEGER PRIMARY KEY, sz BLOB);
-- table memory_fts_idx
CREATE TABLE 'memory_fts_idx'(segid, term, pgno, PRIMARY KEY(segid, term)) WITHOUT ROWID;
-- table memory_vector
CREATE TABLE memory_vector (
    memory_id  TEXT PRIMARY KEY,
    persona_id TEXT NOT NULL,
    model      TEXT NOT NULL,
    dim        INTEGER NOT NULL,
    vector     BLOB NOT NULL
);
-- table memory_witness
CREATE TABLE memory_witness (
    user_id   TEXT NOT NULL,
    memory_id TEXT NOT NULL,
    PRIMARY KEY (user_id, memory_id)
) WITHOUT ROWID;
-- table message_fts
CREATE VIRTUAL TABLE message_fts USING fts5 (
    content,
    content = 'messages',
    content_rowid = 'rowid',
    tokenize = 'porter unicode61'
);
-- table message_fts_config
CREATE TABLE 'message_fts_config'(k PRIMARY KEY, v) WITHOUT ROWID;
-- table message_fts_data
CREATE TABLE 'message_fts_data'(id INTEGER PRIMARY KEY, block BLOB);
-- table message_fts_docsize
CREATE TABLE 'message_fts_docsize'(id INTEGER PRIMARY KEY, sz BLOB);
-- table message_fts_idx
CREATE TABLE 'message_fts_idx'(segid, term, pgno, PRIMARY KEY(segid, term)) WITHOUT ROWID;
-- table messages
CREATE TABLE messages (
    message_id  TEXT PRIMARY KEY,   -- the event that said it
    chat_id     TEXT NOT NULL,
    turn_id     TEXT NOT NULL,
    role        TEXT NOT NULL,      -- user | assistant
    content     TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
-- table persona
CREATE TABLE persona (
    persona_id  TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    genesis     TEXT NOT NULL,
    traits      TEXT NOT NULL,      -- JSON object of trait -> 0..1
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    turn_count  INTEGER NOT NULL DEFAULT 0
, revised_seq INTEGER, revised_at TEXT);
-- table schema_migrations
CREATE TABLE schema_migrations ( version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL);
-- table telemetry
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
-- table turns
CREATE TABLE turns (
    turn_id        TEXT PRIMARY KEY,
    chat_id        TEXT NOT NULL,
    trace_id       TEXT NOT NULL UNIQUE,
    parent_turn_id TEXT,             -- NULL for a chat's first turn (and while queued)
    depth          INTEGER,          -- parent's depth + 1 (NULL while queued)
    queued_seq     INTEGER,          -- seq of turn.queued (NULL: logged before turns queued)
    started_seq    INTEGER,          -- seq of turn.started, or of the turn.failed of a turn
                                     -- that never started: order among siblings
    status         TEXT NOT NULL,    -- queued | started | completed | failed
    user_message   TEXT NOT NULL,
    reply          TEXT,
    error          TEXT,
    started_at     TEXT,             -- NULL until it starts (never, if it failed queued)
    ended_at       TEXT
, active INTEGER NOT NULL DEFAULT 0, completed_seq INTEGER, origin TEXT NOT NULL DEFAULT 'message', variant_of TEXT, truncated INTEGER NOT NULL DEFAULT 0, ended_wall_at TEXT);
-- trigger events_no_delete
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: DELETE refused');
END;
-- trigger events_no_update
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: UPDATE refused');
END;
