-- Every batch rewrites its accounts' counters: leave room in each page so those updates stay HOT
-- (heap-only: no new index entries per update) and the pruned versions are reused in place.
ALTER TABLE ledger_accounts SET (fillfactor = 50);
