-- Tips sent in a stream's room: one row per tip id (the ledger holds the money; this holds the
-- room's view: who, how much, the message, and whether `tip.received` went out).
CREATE TABLE stream_tips (
    tip_id       uuid        PRIMARY KEY,
    stream_id    uuid        NOT NULL REFERENCES streams (id),
    from_user_id uuid        NOT NULL REFERENCES users (id),
    to_user_id   uuid        NOT NULL REFERENCES users (id),
    amount       bigint      NOT NULL CHECK (amount > 0),
    fee          bigint      NOT NULL CHECK (fee >= 0 AND fee <= amount),
    message      text        NOT NULL DEFAULT '' CHECK (length(message) <= 1000),
    created_at   timestamptz NOT NULL DEFAULT now(),
    broadcast_at timestamptz
);
CREATE INDEX stream_tips_stream ON stream_tips (stream_id, created_at DESC, tip_id);

-- Each tipper's total per stream, for the top-tippers list.
CREATE TABLE stream_tippers (
    stream_id uuid   NOT NULL REFERENCES streams (id),
    user_id   uuid   NOT NULL REFERENCES users (id),
    total     bigint NOT NULL CHECK (total > 0),
    PRIMARY KEY (stream_id, user_id)
);
CREATE INDEX stream_tippers_top ON stream_tippers (stream_id, total DESC, user_id);
