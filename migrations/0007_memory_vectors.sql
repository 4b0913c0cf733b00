-- 0007: dense vectors of memories (memory.embedded), one per memory: the newest replaces
-- an older one. `vector` holds `dim` little-endian float32 values. Rows are written with
-- ever-growing rowids, so a search cache refreshes by reading only rowid > the last seen.

CREATE TABLE memory_vector (
    memory_id  TEXT PRIMARY KEY,
    persona_id TEXT NOT NULL,
    model      TEXT NOT NULL,
    dim        INTEGER NOT NULL,
    vector     BLOB NOT NULL
);
CREATE INDEX memory_vector_persona ON memory_vector (persona_id, model);
