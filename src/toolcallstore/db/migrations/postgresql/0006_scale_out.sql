-- Billable transactions no longer serialise on the audit chain's head. A row is appended with
-- the id of the transaction that wrote it (`xid`) and no place in the chain; the sealer (one at
-- a time, by advisory lock) gives rows their `seq`, `prev_hash` and `hash` in (xid, id) order
-- once no transaction older than theirs can still commit, so the chained order never changes
-- after the fact. `sealed_at` records when, for the operator's lag figure.
ALTER TABLE audit_log DROP CONSTRAINT audit_log_pkey;
ALTER TABLE audit_log ADD COLUMN id BIGSERIAL PRIMARY KEY;
ALTER TABLE audit_log ADD COLUMN xid XID8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE audit_log ADD COLUMN sealed_at BIGINT;
ALTER TABLE audit_log ALTER COLUMN seq DROP NOT NULL;
ALTER TABLE audit_log ALTER COLUMN prev_hash DROP NOT NULL;
ALTER TABLE audit_log ALTER COLUMN hash DROP NOT NULL;
CREATE UNIQUE INDEX audit_log_seq ON audit_log (seq);
CREATE INDEX audit_log_unsealed ON audit_log (xid, id) WHERE seq IS NULL;

-- Statements sent in the same message as COMMIT (the spend counters' updates) cannot return a
-- refusal to Python before committing: they raise this instead, and the transaction is retried
-- with the decision taken inline (db/sync.py, COMMIT_REFUSED_SQLSTATE).
CREATE FUNCTION toolcallstore_refuse(why TEXT) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'refused at commit: %', why USING ERRCODE = 'TC409';
END
$$;

-- A job that lost its lease may finish its effect after the sweep released its hold and wrote
-- a zero receipt: that receipt is then settled late (controls/executions.py), and says so.
ALTER TABLE receipts ADD COLUMN settled_late INTEGER NOT NULL DEFAULT 0;
