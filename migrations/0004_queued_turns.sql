-- 0004: a turn is recorded when it is accepted (turn.queued), before it starts. A queued
-- turn has no parent, depth or start yet: those columns may be NULL until turn.started
-- (or, for a turn failed before it started, turn.failed) fills them. Only the turns
-- projection changes: it is recreated and the log replayed.
-- persona: rebuild-projections

DROP TABLE turns;

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
);
CREATE INDEX turns_chat ON turns (chat_id, started_seq);
CREATE INDEX turns_parent ON turns (parent_turn_id);
