-- 0008: the chat rail. A chat can be archived (hidden from the list, nothing removed) and
-- keeps a snippet of its last message; its title and its messages are searchable through
-- two external-content full-text indexes over the chats and messages projections (the
-- projector writes them; `persona verify` checks each against its table). Only
-- projections change: the log is replayed into them.
-- persona: rebuild-projections

ALTER TABLE chats ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chats ADD COLUMN last_snippet TEXT NOT NULL DEFAULT '';
CREATE INDEX chats_persona_recent ON chats (persona_id, archived, updated_at);
CREATE INDEX messages_chat ON messages (chat_id);

CREATE VIRTUAL TABLE chat_title_fts USING fts5 (
    title,
    content = 'chats',
    content_rowid = 'rowid',
    tokenize = 'porter unicode61'
);

CREATE VIRTUAL TABLE message_fts USING fts5 (
    content,
    content = 'messages',
    content_rowid = 'rowid',
    tokenize = 'porter unicode61'
);
