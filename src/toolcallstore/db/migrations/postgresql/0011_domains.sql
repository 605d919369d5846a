-- Domains and DNS (issue 15): the domains a tenant holds (one live registration of a name per
-- mode), and every DNS change applied to one (its diff, what the provider did, and what
-- dns.verify still misses).
CREATE TABLE domains (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    project_id TEXT,
    livemode INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    registrar TEXT,
    years INTEGER NOT NULL,
    execution_id TEXT NOT NULL UNIQUE,
    attempts TEXT NOT NULL,
    nameservers TEXT NOT NULL,
    registrar_ref TEXT,
    expires_at TEXT,
    error TEXT,
    dns_status TEXT,
    dns_change_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX domains_live_name ON domains (livemode, name) WHERE status <> 'failed';
CREATE INDEX domains_tenant ON domains (tenant_id, livemode, id);

CREATE TABLE dns_changes (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    domain_id TEXT NOT NULL REFERENCES domains (id),
    livemode INTEGER NOT NULL,
    execution_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    diff TEXT NOT NULL,
    applied TEXT NOT NULL,
    not_applied TEXT NOT NULL,
    missing TEXT NOT NULL,
    error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX dns_changes_domain ON dns_changes (domain_id, created_at);
