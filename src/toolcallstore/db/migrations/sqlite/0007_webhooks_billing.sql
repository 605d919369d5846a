-- Outbound webhooks (DESIGN §5.7) and Stripe billing (§11).
-- Events gain their mode and a dispatch mark: the dispatcher turns each undispatched event into
-- one delivery (and one job) per subscribed endpoint, in the transaction that marks it.
ALTER TABLE events ADD COLUMN livemode INTEGER;
ALTER TABLE events ADD COLUMN dispatched_at INTEGER;
UPDATE events SET dispatched_at = created_at;
CREATE INDEX events_undispatched ON events (id) WHERE dispatched_at IS NULL;

-- A signing secret is AES-256-GCM under TOOLCALLSTORE_MASTER_KEY (bound to the row); after a
-- rotation the previous one keeps signing beside it until previous_expires_at.
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    livemode INTEGER NOT NULL,
    url TEXT NOT NULL,
    description TEXT NOT NULL,
    events TEXT NOT NULL,
    disabled INTEGER NOT NULL,
    disabled_reason TEXT,
    master_key_id TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    previous_master_key_id TEXT,
    previous_nonce BLOB,
    previous_ciphertext BLOB,
    previous_expires_at INTEGER,
    failing_since INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id, id) WHERE deleted_at IS NULL;

-- One row per (event, endpoint) from the dispatcher (kind 'event'), plus manual redeliveries
-- and tests; each is delivered by its own job.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('event', 'redelivery', 'test')),
    state TEXT NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed')),
    job_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    next_attempt_at INTEGER,
    created_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (event_id, endpoint_id)
    WHERE kind = 'event';
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);

CREATE TABLE webhook_attempts (
    id TEXT PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status INTEGER,
    error TEXT,
    response_body TEXT,
    duration_ms INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);

-- Stripe: one customer per tenant, the plan its subscription pays for, and payment state.
CREATE TABLE billing_accounts (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants (id),
    stripe_customer_id TEXT NOT NULL UNIQUE,
    plan TEXT,
    subscription_id TEXT,
    subscription_status TEXT,
    -- the Stripe `created` of the newest subscription event applied (events come in any order)
    subscription_event_at INTEGER,
    payment_failed_at INTEGER,
    -- the Stripe `created` of the newest invoice event applied
    payment_event_at INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Stripe events handled, by Stripe's event id: a redelivered event changes nothing twice.
CREATE TABLE stripe_events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    created INTEGER NOT NULL,
    received_at INTEGER NOT NULL
);

-- Live receipts sent to Stripe as Billing Meter events (identifier = receipt id).
CREATE TABLE meter_reports (
    receipt_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    stripe_customer_id TEXT NOT NULL,
    value_micros INTEGER NOT NULL,
    period TEXT NOT NULL,
    sent_at INTEGER NOT NULL
);
CREATE INDEX meter_reports_period ON meter_reports (period, tenant_id);
