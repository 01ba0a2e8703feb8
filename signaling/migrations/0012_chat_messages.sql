-- Chat is kept for moderation and reports, then purged after `chat_retention_days`.
CREATE TABLE chat_messages (
    id         uuid        PRIMARY KEY,
    room       text        NOT NULL REFERENCES rooms (name) ON DELETE CASCADE,
    author_id  uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    text       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    deleted_by uuid        REFERENCES users (id) ON DELETE SET NULL
);
CREATE INDEX chat_messages_created ON chat_messages (created_at);
CREATE INDEX chat_messages_room ON chat_messages (room, created_at DESC);
CREATE INDEX chat_messages_author ON chat_messages (author_id, created_at DESC);
