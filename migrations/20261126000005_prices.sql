-- Marketplace price history and the cached discovery lists (PRODUCT.md section 3: `/v1/offers`,
-- `/v1/prices`, `/v1/catalog/*`).

-- One row per sampler run, even when the marketplace answered no offer at all: the latest
-- snapshot is the newest run, so an empty market is a snapshot too (and not "never sampled").
CREATE TABLE price_sample_runs (
    sampled_at  TEXT PRIMARY KEY NOT NULL,
    offers      INTEGER NOT NULL CHECK (offers >= 0)
) STRICT;

-- Append-only: every offer of `POST /marketplace/offers` at the time of the run that saw it.
-- Rows are never updated; the sampler deletes those older than the retention.
CREATE TABLE price_samples (
    id            INTEGER PRIMARY KEY,
    sampled_at    TEXT NOT NULL,                   -- the run's time, shared by its rows
    configuration TEXT NOT NULL,                   -- basic configuration slug
    -- A stable name of the offer's datacenter, `<country>-<city>-<index>` in lower case, as the
    -- datacenter list's `slug` writes it: offers embed no datacenter id.
    datacenter    TEXT NOT NULL,
    country       TEXT NOT NULL,                   -- ISO alpha-2, upper case
    city          TEXT NOT NULL,
    tier          INTEGER NOT NULL,
    price_micros  INTEGER NOT NULL CHECK (price_micros >= 0),  -- one VM per epoch
    capacity      INTEGER NOT NULL CHECK (capacity >= 0)       -- basic instances, all servers
) STRICT;
-- `/v1/prices` filters by configuration and country over a time range.
CREATE INDEX price_samples_series ON price_samples (configuration, country, sampled_at);
-- The latest snapshot, unfiltered price history, and the retention purge.
CREATE INDEX price_samples_time ON price_samples (sampled_at);

-- Fluence's discovery lists as the gateway last fetched them, so that the catalog survives a
-- restart and can still be served (marked stale) while Fluence is unreachable.
CREATE TABLE catalog_cache (
    name        TEXT PRIMARY KEY NOT NULL,         -- configurations, countries, hardware, ...
    body        TEXT NOT NULL,                     -- JSON, in the gateway's own types
    fetched_at  TEXT NOT NULL
) STRICT;
