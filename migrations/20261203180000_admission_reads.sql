-- What a budget status and every admission read, kept so that reading it costs little more than
-- the rows it must see. The admission reads it inside its write transaction, so its time is time
-- no other deployment can be admitted.

-- A live VM's billing times as integer microseconds since 1970, so that its commitment is
-- integer arithmetic instead of parsing two timestamps per VM per read. Kept by triggers, like
-- the inventory version, so that no writer can forget them. Every stored timestamp is written
-- by the gateway as `YYYY-MM-DDTHH:MM:SS.ffffffZ`; a write of anything else is refused, since
-- the arithmetic would misread it.
ALTER TABLE vms ADD COLUMN next_billing_us INTEGER;
ALTER TABLE vms ADD COLUMN expires_us INTEGER;

-- Rows already stored. The gateway has only ever written the one form; a row in any other would
-- be left without the integer (not billed) rather than stop every later start at this migration.
UPDATE vms SET
    next_billing_us = CASE WHEN next_billing_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'
        THEN unixepoch(substr(next_billing_at, 1, 19)) * 1000000 + CAST(substr(next_billing_at, 21, 6) AS INTEGER) END,
    expires_us = CASE WHEN expires_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'
        THEN unixepoch(substr(expires_at, 1, 19)) * 1000000 + CAST(substr(expires_at, 21, 6) AS INTEGER) END;

CREATE TRIGGER vms_billing_us_on_update AFTER UPDATE OF next_billing_at, expires_at ON vms
BEGIN
    SELECT RAISE(ABORT, 'vms: next_billing_at and expires_at must be stored timestamps')
    WHERE (NEW.next_billing_at IS NOT NULL AND (NEW.next_billing_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'
                OR unixepoch(substr(NEW.next_billing_at, 1, 19)) IS NULL))
       OR (NEW.expires_at IS NOT NULL AND (NEW.expires_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'
                OR unixepoch(substr(NEW.expires_at, 1, 19)) IS NULL));
    UPDATE vms SET
        next_billing_us = unixepoch(substr(NEW.next_billing_at, 1, 19)) * 1000000 + CAST(substr(NEW.next_billing_at, 21, 6) AS INTEGER),
        expires_us = unixepoch(substr(NEW.expires_at, 1, 19)) * 1000000 + CAST(substr(NEW.expires_at, 21, 6) AS INTEGER)
    WHERE id = NEW.id;
END;

-- SQLite has no trigger for INSERT and UPDATE at once: a new row's billing times are written
-- onto themselves, which runs the trigger above.
CREATE TRIGGER vms_billing_us_on_insert AFTER INSERT ON vms
BEGIN
    UPDATE vms SET next_billing_at = NEW.next_billing_at WHERE id = NEW.id;
END;

-- A team's live VMs with everything the commitment and the quota usage read, so that both are
-- answered from this index alone, without a table lookup per VM (`deleted_at` too: SQLite reads
-- a column the query names from the index only if the index holds it, even one its WHERE
-- fixes). It starts with `team_id`, so it also serves every query the index it replaces served.
DROP INDEX vms_live_by_team;
CREATE INDEX vms_live_by_team ON vms (team_id, deployment_id, price_per_epoch_micros,
    next_billing_us, expires_us, vcpus, ram_gib, storage_gib, deleted_at) WHERE deleted_at IS NULL;

-- The open holds by id: a live VM counts towards its team's commitment and usage only if its
-- deployment holds nothing, and the set of open holds, read once from here per query, answers
-- that for every VM (a lookup per VM in the table of all holds took four times as long).
CREATE INDEX holds_open ON holds (id, released_at) WHERE released_at IS NULL;

-- Each team's charges summed by UTC day. Budget periods start at midnight UTC, so a period's
-- charges are the sum of at most 31 of these rows instead of one ledger row per VM per day.
-- The ledger is append-only (its triggers refuse changes), so a trigger on insert keeps this
-- exact.
CREATE TABLE ledger_daily (
    team_id       TEXT NOT NULL,
    day           TEXT NOT NULL,                   -- YYYY-MM-DD, UTC
    amount_micros INTEGER NOT NULL,
    PRIMARY KEY (team_id, day)
) STRICT, WITHOUT ROWID;

INSERT INTO ledger_daily (team_id, day, amount_micros)
    SELECT team_id, substr(at, 1, 10), SUM(amount_micros) FROM ledger
    WHERE team_id IS NOT NULL GROUP BY team_id, substr(at, 1, 10);

CREATE TRIGGER ledger_daily_on_insert AFTER INSERT ON ledger WHEN NEW.team_id IS NOT NULL
BEGIN
    INSERT INTO ledger_daily (team_id, day, amount_micros)
        VALUES (NEW.team_id, substr(NEW.at, 1, 10), NEW.amount_micros)
        ON CONFLICT (team_id, day) DO UPDATE SET amount_micros = amount_micros + excluded.amount_micros;
END;

-- The charges of VMs whose deployment still holds its commitment are left out of a status's
-- spend; they are found from the open holds, by VM.
CREATE INDEX ledger_vm ON ledger (vm_id, at);
