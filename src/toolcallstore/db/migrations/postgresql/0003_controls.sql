-- Money controls (DESIGN §2, §5): caps, spend counters, quotes, approvals, holds, executions,
-- receipts, the append-only ledger and the event log later read by webhooks.
-- Money is integer micro-USD; *_at columns are epoch microseconds; periods are 'YYYY-MM' (UTC).

ALTER TABLE tenants ADD COLUMN monthly_cap_micros BIGINT;
ALTER TABLE tenants ADD COLUMN approval_threshold_micros BIGINT;
ALTER TABLE projects ADD COLUMN monthly_cap_micros BIGINT;

-- One row per (tenant or project, month, mode): the row every hold locks and checks.
CREATE TABLE spend_counters (
    owner_id TEXT NOT NULL,
    period TEXT NOT NULL,
    livemode SMALLINT NOT NULL,
    spent_micros BIGINT NOT NULL,
    held_micros BIGINT NOT NULL,
    PRIMARY KEY (owner_id, period, livemode)
);

CREATE TABLE quotes (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    project_id TEXT REFERENCES projects (id),
    api_key_id TEXT NOT NULL,
    livemode SMALLINT NOT NULL,
    tool TEXT NOT NULL,
    params_hash TEXT NOT NULL,
    params TEXT NOT NULL,
    price_micros BIGINT NOT NULL,
    max_cost_micros BIGINT NOT NULL,
    provider_cost_micros BIGINT NOT NULL,
    breakdown TEXT NOT NULL,
    requires_approval SMALLINT NOT NULL,
    approval_reasons TEXT NOT NULL,
    inline SMALLINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'used')),
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX quotes_tenant ON quotes (tenant_id, id);

CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    quote_id TEXT NOT NULL REFERENCES quotes (id),
    requested_by_key_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'granted', 'denied', 'expired', 'used')),
    decided_by_key_id TEXT,
    note TEXT,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    decided_at BIGINT,
    used_at BIGINT
);
CREATE INDEX approvals_tenant ON approvals (tenant_id, id);
-- A quote has at most one approval that can still be used.
CREATE UNIQUE INDEX approvals_live_quote ON approvals (quote_id)
    WHERE state IN ('pending', 'granted');
CREATE INDEX approvals_expiry ON approvals (expires_at) WHERE state IN ('pending', 'granted');

CREATE TABLE executions (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    project_id TEXT,
    api_key_id TEXT NOT NULL,
    quote_id TEXT NOT NULL UNIQUE REFERENCES quotes (id),
    approval_id TEXT,
    tool TEXT NOT NULL,
    livemode SMALLINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    hold_id TEXT NOT NULL,
    job_id TEXT,
    receipt_id TEXT,
    price_micros BIGINT,
    request_id TEXT NOT NULL,
    idempotency_key TEXT,
    result TEXT,
    error TEXT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX executions_tenant ON executions (tenant_id, id);

CREATE TABLE holds (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    project_id TEXT,
    period TEXT NOT NULL,
    livemode SMALLINT NOT NULL,
    amount_micros BIGINT NOT NULL,
    settled_micros BIGINT,
    state TEXT NOT NULL CHECK (state IN ('open', 'settled', 'released')),
    execution_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    closed_at BIGINT
);
CREATE INDEX holds_open ON holds (expires_at) WHERE state = 'open';

CREATE TABLE receipts (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    project_id TEXT,
    execution_id TEXT NOT NULL UNIQUE,
    quote_id TEXT NOT NULL,
    approval_id TEXT,
    tool TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('succeeded', 'failed')),
    price_micros BIGINT NOT NULL,
    provider_cost_micros BIGINT NOT NULL,
    margin_micros BIGINT NOT NULL,
    providers TEXT NOT NULL,
    attempts TEXT NOT NULL,
    usage TEXT NOT NULL,
    estimated SMALLINT NOT NULL,
    livemode SMALLINT NOT NULL,
    period TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX receipts_tenant ON receipts (tenant_id, id);
CREATE INDEX receipts_period ON receipts (period);

CREATE TABLE ledger_entries (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    project_id TEXT,
    receipt_id TEXT,
    kind TEXT NOT NULL CHECK (kind IN ('charge', 'provider_cost', 'refund', 'adjustment')),
    amount_micros BIGINT NOT NULL,
    tool TEXT NOT NULL,
    provider TEXT,
    period TEXT NOT NULL,
    livemode SMALLINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX ledger_period ON ledger_entries (period, tenant_id);
CREATE INDEX ledger_receipt ON ledger_entries (receipt_id);

CREATE TABLE events (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX events_tenant ON events (tenant_id, id);
