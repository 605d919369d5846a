-- Issue 14: stored assets (media results). The object is written first, then its row; an asset
-- is served only through a signed expiring URL, or at /p/<id>/<public_token><ext> once published.
CREATE TABLE assets (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    livemode INTEGER NOT NULL,
    project_id TEXT,
    owner_kind TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    storage TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    public_token TEXT,
    published_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX assets_owner ON assets (owner_kind, owner_id);
-- Retention looks at the oldest unpublished assets first.
CREATE INDEX assets_unpublished ON assets (created_at) WHERE public_token IS NULL;

-- Secrets the instance makes for itself once and every process shares (the asset signing key
-- when neither TOOLCALLSTORE_ASSET_SIGNING_KEYS nor TOOLCALLSTORE_MASTER_KEY is set).
CREATE TABLE instance_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
