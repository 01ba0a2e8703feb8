-- What admins did: one append-only row per action (wallet adjustments, payout decisions, ...).
CREATE TABLE admin_audit_log (
    -- Chosen by the caller (e.g. the ledger transfer's id), so a retried action logs once.
    id             uuid        PRIMARY KEY,
    actor_id       uuid        NOT NULL REFERENCES users (id),
    action         text        NOT NULL CHECK (action ~ '^[a-z][a-z_.]{0,63}$'),
    target_user_id uuid        REFERENCES users (id),
    details        jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(details) = 'object'),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_audit_log_created ON admin_audit_log (created_at DESC);
CREATE INDEX admin_audit_log_target ON admin_audit_log (target_user_id, created_at DESC)
    WHERE target_user_id IS NOT NULL;

CREATE FUNCTION admin_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'admin_audit_log is append-only: % refused', TG_OP USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER admin_audit_log_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON admin_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION admin_audit_log_append_only();
