-- Live prices of LLM targets, refreshed by the `prices.refresh` job from a provider's price list
-- (OpenRouter's GET /api/v1/models). Quotes use a row only while it is younger than
-- TOOLCALLSTORE_PRICE_MAX_AGE_SECONDS, else config/models.json.
-- Prices are USD per million tokens as decimal strings: exact, unlike REAL.
CREATE TABLE provider_prices (
    target_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    input_usd_per_mtok TEXT NOT NULL,
    output_usd_per_mtok TEXT NOT NULL,
    fetched_at BIGINT NOT NULL
);
