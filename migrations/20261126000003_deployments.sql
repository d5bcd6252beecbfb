-- Deployments and what the deploy pipeline needs to be exactly-once: the intent recorded before
-- the upstream call, the names Fluence will show the VMs under, and idempotency records.

-- One row per deploy request. `status` follows PRODUCT.md section 5; every transition is a
-- compare-and-set on the previous status, so two workers (or two processes on one file) can
-- never both forward the same deployment.
CREATE TABLE deployments (
    id                   TEXT PRIMARY KEY NOT NULL,   -- dep_<ulid>
    team_id              TEXT NOT NULL REFERENCES teams (id),
    name                 TEXT NOT NULL,
    -- `<name>-<short id>`: every VM of this deployment carries it upstream, which is how the
    -- reconciler recognises them after an ambiguous answer or a crash.
    upstream_name        TEXT NOT NULL UNIQUE,
    status               TEXT NOT NULL CHECK (status IN ('queued', 'estimating',
                             'waiting_for_price', 'admitted', 'deploying', 'deployed',
                             'rejected', 'failed', 'cancelled', 'expired', 'unknown')),
    spec                 TEXT NOT NULL,               -- JSON: the validated request
    instances            INTEGER NOT NULL CHECK (instances > 0),
    configuration        TEXT NOT NULL,
    vcpus                INTEGER NOT NULL,            -- per VM, for quotas
    ram_gib              INTEGER NOT NULL,
    storage_gib          INTEGER NOT NULL,
    estimate             TEXT,                        -- JSON: the estimate admission used
    max_price_micros     INTEGER,                     -- per VM per epoch, the ceiling sent upstream
    commitment_micros    INTEGER,
    epochs               INTEGER,
    reason_code          TEXT,
    reason               TEXT,                        -- JSON: why it was refused or failed
    idempotency_key      TEXT,                        -- `<scope>|<key>`, as the client sent it
    request_hash         TEXT,                        -- of the request that key was first used for
    created_by           TEXT NOT NULL,               -- the key id (or actor) that asked
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL,
    forwarded_at         TEXT,                        -- intent recorded: the POST may be out
    unknown_since        TEXT,
    settled_at           TEXT,                        -- the hold became VMs or was released
    next_check_at        TEXT                         -- when a waiting deployment looks again
) STRICT;
CREATE INDEX deployments_team ON deployments (team_id, id);
CREATE INDEX deployments_open ON deployments (status)
    WHERE status NOT IN ('rejected', 'failed', 'cancelled', 'expired');
CREATE INDEX deployments_idempotency ON deployments (team_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- What a VM uses, for quotas; known from its configuration at deploy, refreshed by the sync.
ALTER TABLE vms ADD COLUMN configuration TEXT;
ALTER TABLE vms ADD COLUMN vcpus INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vms ADD COLUMN ram_gib INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vms ADD COLUMN storage_gib INTEGER NOT NULL DEFAULT 0;
-- When the gateway last saw the VM in Fluence's list; NULL until the first sighting.
ALTER TABLE vms ADD COLUMN seen_at TEXT;
CREATE INDEX vms_deployment ON vms (deployment_id) WHERE deployment_id IS NOT NULL;

-- `Idempotency-Key` records (PRODUCT.md section 2), scoped per team (admin keys: per key).
-- A response that carried a one-time secret is recorded without its body.
CREATE TABLE idempotency_keys (
    scope         TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,                      -- SHA-256 of method, path and body
    state         TEXT NOT NULL CHECK (state IN ('in_flight', 'done')),
    status        INTEGER,
    content_type  TEXT,
    body          BLOB,
    created_at    TEXT NOT NULL,
    -- An in-flight record whose owner died is taken over after this instant.
    locked_until  TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    PRIMARY KEY (scope, key)
) STRICT;
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
