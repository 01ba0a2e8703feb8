-- Token purchases through Stripe Checkout, their reversals (refunds, disputes) and wallet debts.

-- One row per Checkout Session. `status` = 'paid' exactly when the tokens were credited.
CREATE TABLE purchases (
    session_id     text        PRIMARY KEY CHECK (length(session_id) BETWEEN 1 AND 255),
    user_id        uuid        NOT NULL REFERENCES users (id),
    tokens         bigint      NOT NULL CHECK (tokens > 0),
    -- What the customer pays, in the currency's smallest unit; refunds and disputes are
    -- turned into tokens in proportion to it.
    amount_total   bigint      NOT NULL CHECK (amount_total > 0),
    currency       text        NOT NULL CHECK (length(currency) BETWEEN 3 AND 8),
    status         text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'paid', 'failed', 'expired')),
    payment_intent text        UNIQUE,
    credited_at    timestamptz,
    -- Tokens of this purchase taken back so far (from the wallet or recorded as debt).
    reversed_tokens bigint     NOT NULL DEFAULT 0,
    -- Debt from earlier reversals paid out of this purchase's tokens when it was credited.
    debt_settled   bigint      NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'paid') = (credited_at IS NOT NULL)),
    CHECK (reversed_tokens BETWEEN 0 AND tokens),
    CHECK (debt_settled BETWEEN 0 AND tokens)
);
CREATE INDEX purchases_user ON purchases (user_id, created_at DESC);

-- One row per reversal step of a purchase (a refund or dispute raising what must come back).
CREATE TABLE purchase_reversals (
    -- The ledger transfer's id (wallet -> payment_clearing); no transfer exists when taken = 0.
    transfer_id     uuid        PRIMARY KEY,
    session_id      text        NOT NULL REFERENCES purchases (session_id),
    user_id         uuid        NOT NULL REFERENCES users (id),
    reason          text        NOT NULL CHECK (reason IN ('refund', 'dispute')),
    tokens          bigint      NOT NULL CHECK (tokens > 0),
    taken           bigint      NOT NULL CHECK (taken >= 0),
    shortfall       bigint      NOT NULL CHECK (shortfall >= 0),
    stripe_event_id text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (taken + shortfall = tokens)
);
CREATE INDEX purchase_reversals_session ON purchase_reversals (session_id);

-- Refund/dispute events that arrived before their purchase was credited (out of order); applied
-- when it is.
CREATE TABLE purchase_reversals_waiting (
    stripe_event_id text        PRIMARY KEY,
    payment_intent  text        NOT NULL,
    reason          text        NOT NULL CHECK (reason IN ('refund', 'dispute')),
    amount          bigint      NOT NULL CHECK (amount > 0),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX purchase_reversals_waiting_pi ON purchase_reversals_waiting (payment_intent);

-- Tokens a user owes after a reversal found the wallet short. owed > 0 restricts the wallet.
CREATE TABLE wallet_debts (
    user_id    uuid        PRIMARY KEY REFERENCES users (id),
    owed       bigint      NOT NULL CHECK (owed >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
