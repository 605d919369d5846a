-- Foundation: tenants, projects, API keys, idempotency keys, the audit chain.
-- Every *_at column is integer epoch microseconds; money is integer micro-USD.

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX projects_tenant ON projects (tenant_id, id);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    project_id TEXT REFERENCES projects (id),
    name TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('live', 'test')),
    lookup TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL,
    last4 TEXT NOT NULL,
    scopes TEXT NOT NULL,
    auto_quote_max_micros INTEGER,
    created_by_key_id TEXT,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, id);

CREATE TABLE idempotency_keys (
    api_key_id TEXT NOT NULL,
    key TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done')),
    status INTEGER,
    response_body TEXT,
    created_at INTEGER NOT NULL,
    locked_at INTEGER NOT NULL,
    PRIMARY KEY (api_key_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    tenant_id TEXT,
    api_key_id TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    route TEXT,
    tool TEXT,
    scope TEXT,
    decision TEXT NOT NULL,
    reason TEXT,
    status INTEGER NOT NULL,
    cost_micros INTEGER,
    quote_id TEXT,
    approval_id TEXT,
    receipt_id TEXT,
    ip TEXT,
    latency_us INTEGER NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);

-- The chain's head: updated in the same transaction as each appended batch, so that
-- deleting the newest rows is detected too, and so that writers serialise on one row.
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
