-- Mail on Stalwart (issue 16): a tenant's mail domains and mailboxes, and each mailbox's
-- monthly charges. Secrets: the domain's own administrator credential is AES-256-GCM under the
-- master key (as BYOK keys are); a mailbox's password is never stored, only when it was set.

CREATE TABLE mail_domains (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    project_id TEXT,
    livemode INTEGER NOT NULL,
    name TEXT NOT NULL,
    -- pending -> created (on Stalwart) -> publishing (DNS change applied) -> active | failed
    state TEXT NOT NULL CHECK (state IN ('pending', 'created', 'publishing', 'active', 'failed')),
    execution_id TEXT NOT NULL UNIQUE,
    stalwart_domain_id TEXT,
    admin_name TEXT,
    admin_account_id TEXT,
    admin_key_id TEXT,
    admin_nonce BLOB,
    admin_ciphertext BLOB,
    dkim TEXT,
    records TEXT,
    dns_change_id TEXT,
    dns_status TEXT,
    missing TEXT,
    error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
-- One mail domain per name and mode: Stalwart holds a domain once.
CREATE UNIQUE INDEX mail_domains_name ON mail_domains (livemode, name);
CREATE INDEX mail_domains_tenant ON mail_domains (tenant_id, livemode, id);

CREATE TABLE mailboxes (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    project_id TEXT,
    livemode INTEGER NOT NULL,
    domain_id TEXT NOT NULL REFERENCES mail_domains (id),
    address TEXT NOT NULL,
    display_name TEXT NOT NULL,
    quota_mb INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'deleted')),
    stalwart_account_id TEXT,
    execution_id TEXT NOT NULL UNIQUE,
    password_set_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    deleted_at INTEGER
);
-- An address is one live mailbox at a time (a deleted one frees it).
CREATE UNIQUE INDEX mailboxes_address ON mailboxes (livemode, address) WHERE state = 'active';
CREATE INDEX mailboxes_tenant ON mailboxes (tenant_id, livemode, id);

-- A mailbox's month, charged once: the first at creation (its quote), the next ones by the
-- monthly job.
CREATE TABLE mailbox_charges (
    mailbox_id TEXT NOT NULL REFERENCES mailboxes (id),
    period TEXT NOT NULL,
    receipt_id TEXT NOT NULL,
    amount_micros INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, period)
);
