-- Issue 22 (defect 6): a key may carry its own token bucket (requests per second and burst);
-- NULL takes the server's default (TOOLCALLSTORE_RATE_LIMIT_KEY_PER_S / _BURST).
ALTER TABLE api_keys ADD COLUMN rate_limit_per_s REAL;
ALTER TABLE api_keys ADD COLUMN rate_limit_burst INTEGER;
-- Issue 22 (defect 4): a streaming chat call's coarse checkpoint of what it has delivered (the
-- settlement as if it ended then, JSON), written at its first token and every few seconds of
-- streaming; the sweep charges it if the process dies mid-stream.
ALTER TABLE executions ADD COLUMN delivered TEXT;
