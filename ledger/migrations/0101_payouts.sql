-- Payout requests. Each is a hold (earnings -> payment_clearing, code 'payout') with the same id;
-- its status is the hold's (`ledger_pending`): pending, posted (approved), voided (rejected), expired.
CREATE TABLE payout_requests (
    id          uuid        PRIMARY KEY REFERENCES ledger_transfers (id),
    user_id     uuid        NOT NULL REFERENCES users (id),
    amount      bigint      NOT NULL CHECK (amount > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_by uuid        REFERENCES users (id),
    note        text        NOT NULL DEFAULT '' CHECK (length(note) <= 500)
);
CREATE INDEX payout_requests_user ON payout_requests (user_id, created_at DESC);
CREATE INDEX payout_requests_created ON payout_requests (created_at DESC);
