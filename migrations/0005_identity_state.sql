-- 0005: the persona-scoped control state (traits, values, temporal identity, operator
-- overrides). A new table folded from identity.updated and operator.override, which
-- carry the whole state; no other table changes, so nothing is rebuilt.
CREATE TABLE identity_state (
    persona_id TEXT PRIMARY KEY,
    state      TEXT NOT NULL,   -- JSON of events.IdentityState
    event_id   TEXT NOT NULL,   -- the event that left it
    updated_at TEXT NOT NULL
);
