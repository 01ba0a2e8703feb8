-- Rooms are durable records: a stream's or show's room survives restarts with its access rules,
-- staff, bans and settings. Room events (history, offsets) live in the broker, not here.
CREATE TABLE rooms (
    name       text        PRIMARY KEY,
    kind       text        NOT NULL CHECK (kind IN ('stream', 'show')),
    ref_id     uuid        NOT NULL,
    host_id    uuid        NOT NULL REFERENCES users (id),
    access     text        NOT NULL DEFAULT 'public' CHECK (access IN ('public', 'ticket', 'pass', 'private')),
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (name = kind || ':' || ref_id::text)
);
CREATE INDEX rooms_host ON rooms (host_id);

-- Who may enter a non-public room: ticketing and access passes insert here; invites by the host.
CREATE TABLE room_grants (
    room       text        NOT NULL REFERENCES rooms (name) ON DELETE CASCADE,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    source     text        NOT NULL CHECK (source IN ('ticket', 'pass', 'invite')),
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, user_id, source)
);
CREATE INDEX room_grants_user ON room_grants (user_id);

CREATE TABLE room_moderators (
    room       text        NOT NULL REFERENCES rooms (name) ON DELETE CASCADE,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    added_by   uuid        REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, user_id)
);

-- `until` NULL is a permanent ban.
CREATE TABLE room_bans (
    room       text        NOT NULL REFERENCES rooms (name) ON DELETE CASCADE,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    until      timestamptz,
    reason     text        NOT NULL DEFAULT '',
    banned_by  uuid        REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, user_id)
);
CREATE INDEX room_bans_until ON room_bans (until) WHERE until IS NOT NULL;

CREATE TABLE room_mutes (
    room       text        NOT NULL REFERENCES rooms (name) ON DELETE CASCADE,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    until      timestamptz NOT NULL,
    muted_by   uuid        REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, user_id)
);
CREATE INDEX room_mutes_until ON room_mutes (until);

CREATE TABLE room_settings (
    room        text    PRIMARY KEY REFERENCES rooms (name) ON DELETE CASCADE,
    slow_mode_s integer NOT NULL DEFAULT 0 CHECK (slow_mode_s >= 0)
);
