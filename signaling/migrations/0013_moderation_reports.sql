-- Reports filed by users; admins read them as moderation flags. `snapshot` keeps the reported
-- content (a chat message's text) so the evidence outlives the chat retention purge.
CREATE TABLE moderation_reports (
    id          uuid        PRIMARY KEY,
    reporter_id uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    target_type text        NOT NULL CHECK (target_type IN ('user', 'stream', 'chat_message')),
    target_id   uuid        NOT NULL,
    reason      text        NOT NULL,
    details     text        NOT NULL DEFAULT '',
    snapshot    jsonb       NOT NULL DEFAULT '{}',
    status      text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'reviewed', 'dismissed')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- One open report per reporter and target: repeated reports are refused, not counted twice.
CREATE UNIQUE INDEX moderation_reports_open_once ON moderation_reports (reporter_id, target_type, target_id)
    WHERE status = 'open';
CREATE INDEX moderation_reports_status ON moderation_reports (status, created_at DESC);
CREATE INDEX moderation_reports_target ON moderation_reports (target_type, target_id);
