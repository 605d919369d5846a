-- The job queue (DESIGN §6). States: queued, running, succeeded, failed (dead letter), cancelled.

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    type TEXT NOT NULL,
    tenant_id TEXT,
    payload TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    run_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    unique_key TEXT,
    lease_until INTEGER,
    locked_by TEXT,
    progress INTEGER NOT NULL,
    progress_message TEXT,
    result TEXT,
    errors TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX jobs_ready ON jobs (queue, priority, run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
-- Enqueueing a key that is live (queued or running) returns the existing job.
CREATE UNIQUE INDEX jobs_unique_live ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'running');

-- Effects of the sandbox.record job type: one row per job however often it ran, and the
-- number of runs, so crash tests can tell "ran twice" from "happened twice".
CREATE TABLE sandbox_effects (
    job_id TEXT PRIMARY KEY,
    worker TEXT NOT NULL,
    runs INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
