-- Bring-your-own provider keys (DESIGN §7, BYOK): AES-256-GCM ciphertext under the master key
-- named by master_key_id, so the operator can rotate it; only last4 is ever shown. A replaced
-- or deleted key keeps its row (deleted_at set) but loses its nonce and ciphertext.

CREATE TABLE byok_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    provider TEXT NOT NULL,
    master_key_id TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    last4 TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    deleted_at INTEGER
);
-- At most one live key per (tenant, provider); also the index of a tenant's live keys, which
-- LLM calls read.
CREATE UNIQUE INDEX byok_keys_live ON byok_keys (tenant_id, provider) WHERE deleted_at IS NULL;
