-- SQLite has one writer, so rows are chained as they are written (audit.py); the column that
-- Postgres's sealer fills is kept here too, equal to the row's own time, so that both dialects
-- answer the same questions about the chain.
ALTER TABLE audit_log ADD COLUMN sealed_at INTEGER;
UPDATE audit_log SET sealed_at = ts;

-- A job that lost its lease may finish its effect after the sweep released its hold and wrote
-- a zero receipt: that receipt is then settled late (controls/executions.py), and says so.
ALTER TABLE receipts ADD COLUMN settled_late INTEGER NOT NULL DEFAULT 0;
