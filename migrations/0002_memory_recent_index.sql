-- 0002: newest-first memory reads without sorting every episodic row (7 ms -> 0.04 ms at 10k).
CREATE INDEX memory_recent ON memory (persona_id, kind, created_at);
