-- Media generations (issue 14): one per media.image / media.video execution, and its attempts,
-- one per provider submission. An attempt is written 'submitting' (committed) before the
-- submit is sent, and 'submitted' with the provider's request id and handle in the transaction
-- that records the acceptance, before anything waits: a restarted job resumes polling it and
-- never submits again.
CREATE TABLE media_generations (
    id TEXT PRIMARY KEY,
    execution_id TEXT NOT NULL UNIQUE,
    job_id TEXT,
    tenant_id TEXT NOT NULL,
    livemode INTEGER NOT NULL,
    project_id TEXT,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    progress DOUBLE PRECISION,
    assets TEXT NOT NULL,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT,
    deleted_at BIGINT
);
CREATE INDEX media_generations_tenant ON media_generations (tenant_id, livemode, id);
CREATE INDEX media_generations_updated ON media_generations (updated_at);

CREATE TABLE media_attempts (
    id TEXT PRIMARY KEY,
    generation_id TEXT NOT NULL REFERENCES media_generations (id),
    seq INTEGER NOT NULL,
    target TEXT NOT NULL,
    provider TEXT NOT NULL,
    state TEXT NOT NULL,
    request_id TEXT,
    handle TEXT,
    cost_micros BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (generation_id, seq)
);
CREATE INDEX media_attempts_request ON media_attempts (provider, request_id);
