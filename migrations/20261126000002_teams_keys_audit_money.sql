-- Teams, their API keys, the audit trail, and the tables budget status is computed from.

-- A team is never hard-deleted: its id stays taken so spend and audit history keep their owner.
CREATE TABLE teams (
    id                TEXT PRIMARY KEY NOT NULL,   -- a slug, e.g. "ml"
    name              TEXT NOT NULL,
    budget_cap_micros INTEGER NOT NULL CHECK (budget_cap_micros >= 0),
    period_start_day  INTEGER NOT NULL DEFAULT 1 CHECK (period_start_day BETWEEN 1 AND 28),
    alert_thresholds  TEXT NOT NULL,               -- JSON array of percents of the cap
    quotas            TEXT NOT NULL,               -- JSON object; a null quota is no limit
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    deleted_at        TEXT
) STRICT;

-- Keys are stored only as a SHA-256 digest of their secret part; `prefix` is the visible part
-- used to find the row, so a check costs one indexed lookup and one constant-time comparison.
-- Admin keys belong to no team; member and viewer keys to exactly one.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY NOT NULL,       -- key_<ulid>
    prefix        TEXT NOT NULL UNIQUE,
    secret_sha256 BLOB NOT NULL,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    team_id       TEXT REFERENCES teams (id),
    created_at    TEXT NOT NULL,
    expires_at    TEXT,
    revoked_at    TEXT,
    CHECK ((role = 'admin') = (team_id IS NULL))
) STRICT;
CREATE INDEX api_keys_team ON api_keys (team_id);

-- Append-only: who changed what, with a summary before and after. No foreign keys, so that
-- the trail outlives what it describes.
CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY NOT NULL,         -- aud_<ulid>, in time order
    at          TEXT NOT NULL,
    actor       TEXT NOT NULL,                     -- a key id, "bootstrap-admin", "cli" or "job:<name>"
    actor_role  TEXT NOT NULL,
    action      TEXT NOT NULL,                     -- e.g. team.create, key.revoke
    target_type TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    team_id     TEXT,
    before      TEXT,                              -- JSON, never a secret
    after       TEXT,
    request_id  TEXT
) STRICT;
CREATE INDEX audit_log_team ON audit_log (team_id, id);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE INDEX audit_log_target ON audit_log (target_type, target_id, id);

-- The VM inventory, as the inventory sync sees Fluence; `team_id` NULL marks a VM created
-- outside the gateway. Ids are Fluence's, lower-cased (Fluence mixes letter case).
CREATE TABLE vms (
    id                      TEXT PRIMARY KEY NOT NULL,
    fluence_id              TEXT NOT NULL,         -- as Fluence last wrote it
    team_id                 TEXT REFERENCES teams (id),
    deployment_id           TEXT,
    name                    TEXT NOT NULL,
    status                  TEXT NOT NULL,
    price_per_epoch_micros  INTEGER NOT NULL CHECK (price_per_epoch_micros >= 0),
    total_spent_micros      INTEGER NOT NULL DEFAULT 0 CHECK (total_spent_micros >= 0),
    reserved_balance_micros INTEGER NOT NULL DEFAULT 0 CHECK (reserved_balance_micros >= 0),
    next_billing_at         TEXT,
    expires_at              TEXT,
    created_at              TEXT NOT NULL,
    deleted_at              TEXT
) STRICT;
CREATE INDEX vms_live_by_team ON vms (team_id) WHERE deleted_at IS NULL;

-- Append-only: every observed rise of a VM's totalSpent is one charge.
CREATE TABLE ledger (
    id            INTEGER PRIMARY KEY,
    vm_id         TEXT NOT NULL REFERENCES vms (id),
    team_id       TEXT,                            -- the owner when charged; NULL if unowned
    amount_micros INTEGER NOT NULL CHECK (amount_micros > 0),
    at            TEXT NOT NULL
) STRICT;
CREATE INDEX ledger_team_at ON ledger (team_id, at);
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;

-- Money reserved for a deployment admitted but not yet settled into live VMs.
CREATE TABLE holds (
    id            TEXT PRIMARY KEY NOT NULL,       -- the deployment that holds it
    team_id       TEXT NOT NULL REFERENCES teams (id),
    amount_micros INTEGER NOT NULL CHECK (amount_micros >= 0),
    created_at    TEXT NOT NULL,
    released_at   TEXT
) STRICT;
CREATE INDEX holds_open_by_team ON holds (team_id) WHERE released_at IS NULL;

-- Budget alert thresholds crossed, once per team, period and threshold.
CREATE TABLE budget_alerts (
    team_id      TEXT NOT NULL REFERENCES teams (id),
    period_start TEXT NOT NULL,
    threshold    INTEGER NOT NULL,
    fired_at     TEXT NOT NULL,
    PRIMARY KEY (team_id, period_start, threshold)
) STRICT;
