-- A keyed request in progress (status NULL) is leased to one run: a retry that finds the lease
-- expired, or its owner process gone, takes the key over and runs the request again (see
-- rest/framework/idempotency.py). Rows in progress from before this migration have no lease: a
-- retry takes them over at once (their process is long gone).
ALTER TABLE idempotency_keys
    ADD COLUMN locked_until timestamptz,
    -- The worker running it (server/kernel/instance.py): alive while it holds its advisory lock.
    ADD COLUMN owner        bigint,
    -- The run holding the key: only that run stores its answer or releases the key.
    ADD COLUMN run_id       uuid;
