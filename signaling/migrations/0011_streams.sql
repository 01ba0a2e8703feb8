-- A performer's stream; its room is `stream:{id}`. Viewer counts come from presence, not here.
CREATE TABLE streams (
    id                    uuid        PRIMARY KEY,
    host_id               uuid        NOT NULL REFERENCES users (id),
    title                 text        NOT NULL,
    description           text        NOT NULL DEFAULT '',
    category              text,
    tags                  text[]      NOT NULL DEFAULT '{}',
    status                text        NOT NULL DEFAULT 'created' CHECK (status IN ('created', 'live', 'ended')),
    access                text        NOT NULL DEFAULT 'public' CHECK (access IN ('public', 'ticket', 'pass', 'private')),
    total_tokens_received bigint      NOT NULL DEFAULT 0 CHECK (total_tokens_received >= 0),
    started_at            timestamptz,
    ended_at              timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK (status <> 'live' OR started_at IS NOT NULL),
    CHECK (status <> 'ended' OR ended_at IS NOT NULL)
);
-- A performer is live in at most one stream at a time; the index makes concurrent starts safe.
CREATE UNIQUE INDEX streams_one_live_per_host ON streams (host_id) WHERE status = 'live';
CREATE INDEX streams_host ON streams (host_id, created_at DESC);
CREATE INDEX streams_status_started ON streams (status, started_at DESC);
CREATE INDEX streams_status_category ON streams (status, category);
