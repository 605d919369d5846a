-- Issue 22: 'admin' is the operator's scope, held only by keys of an operator tenant. The
-- bootstrap tenant (the first one, made by the first start) is the operator's; the CLI marks
-- another only when told --operator.
ALTER TABLE tenants ADD COLUMN operator SMALLINT NOT NULL DEFAULT 0;
UPDATE tenants SET operator = 1 WHERE id = (SELECT id FROM tenants ORDER BY created_at, id LIMIT 1);
-- Other tenants' keys lose 'admin' (scopes are stored sorted, so it is the first one).
UPDATE api_keys SET scopes = REPLACE(REPLACE(scopes, '["admin",', '['), '["admin"]', '[]')
    WHERE tenant_id NOT IN (SELECT id FROM tenants WHERE operator = 1);
